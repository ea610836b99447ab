//! Long runs leak nothing: file descriptors, threads, child processes,
//! zombies, temporary directories; with local and cluster pools.
//!
//! One test in its own binary, so no other pool in the process disturbs the counts.

use procpool::{Pool, pool_job};

#[pool_job]
fn double(x: u64) -> u64 {
    x * 2
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Processes whose parent is this one, zombies included.
fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            after_comm.split_whitespace().nth(1) == Some(me.as_str())
        })
        .count()
}

#[derive(Debug, PartialEq)]
struct Usage {
    fds: usize,
    threads: usize,
    children: usize,
    temp_entries: usize,
}

fn usage(temp: &std::path::Path) -> Usage {
    Usage {
        fds: open_fds(),
        threads: threads(),
        children: children(),
        temp_entries: std::fs::read_dir(temp).unwrap().count(),
    }
}

#[test]
fn nothing_grows_over_many_calls_and_pools() {
    // procpool must leave nothing under TMPDIR (it uses none today); give
    // this process a TMPDIR of its own to count what appears there.
    let temp = std::env::temp_dir().join(format!("pph-{}", std::process::id()));
    std::fs::create_dir_all(&temp).unwrap();
    // SAFETY: set before any pool or thread of this test binary starts.
    unsafe { std::env::set_var("TMPDIR", &temp) };

    // Warm-up: the spawner thread, the worker template (one child process
    // per program, which forks the workers) with the thread that reaps it
    // when it dies, and lazily built statics exist from now on.
    drop(Pool::with_processes(2).unwrap());
    let idle = usage(&temp);
    assert_eq!(idle.children, 1, "only the worker template");
    assert_eq!(idle.temp_entries, 0);

    let pool = Pool::with_processes(2).unwrap();
    pool.apply(double, 1).unwrap();
    let busy = usage(&temp);
    for i in 0..5_000u64 {
        assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
    }
    assert_eq!(usage(&temp), busy, "5 000 calls on one pool");
    drop(pool);

    for cycle in 0..300u64 {
        let pool = Pool::with_processes(2).unwrap();
        assert_eq!(pool.map(double, [cycle, 1]).unwrap(), vec![2 * cycle, 2]);
        if cycle % 2 == 0 {
            pool.close();
            pool.join().unwrap();
        }
    }
    assert_eq!(usage(&temp), idle, "300 pools created, used and dropped");

    // Cluster pools and workers: connections and threads go with them.
    let redis = procpool_tests::RedisServer::start();
    let url = redis.url("queue=hygiene");
    let workers = procpool::cluster::Workers::start(&url, 2).unwrap();
    drop(Pool::builder().cluster(&url).build().unwrap());
    let cluster_idle = usage(&temp);
    for cycle in 0..100u64 {
        let pool = Pool::builder().cluster(&url).build().unwrap();
        assert_eq!(pool.map(double, [cycle, 1]).unwrap(), vec![2 * cycle, 2]);
        if cycle % 2 == 0 {
            pool.close();
            pool.join().unwrap();
        }
    }
    assert_eq!(usage(&temp), cluster_idle, "100 cluster pools");
    workers.stop().unwrap();
    for _ in 0..5 {
        procpool::cluster::Workers::start(&url, 2)
            .unwrap()
            .stop()
            .unwrap();
    }
    drop(redis);
    assert_eq!(usage(&temp), idle, "cluster workers started and stopped");
    std::fs::remove_dir(&temp).unwrap();
}
