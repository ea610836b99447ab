//! The cluster backend: the Pool API over Redis, with workers started from
//! this test binary. Every test starts its own redis-server.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procpool::cluster::Workers;
use procpool::{Error, Pool, pool_job};
use procpool_tests::{RedisServer, eventually, running};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Squares `x` after `millis` ms; reports the worker's pid.
#[pool_job]
fn slow_square(x: u64, millis: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(millis));
    (x * x, std::process::id())
}

/// Like `slow_square`, and leaves `started-<x>-<pid>` and
/// `finished-<x>-<pid>` files in `dir`, so a test sees which worker ran what.
#[pool_job]
fn traced_square(x: u64, millis: u64, dir: String) -> u64 {
    let pid = std::process::id();
    let dir = Path::new(&dir);
    let _ = std::fs::write(dir.join(format!("started-{x}-{pid}")), "");
    std::thread::sleep(Duration::from_millis(millis));
    let _ = std::fs::write(dir.join(format!("finished-{x}-{pid}")), "");
    x * x
}

/// Fails on item 0; otherwise `traced_square` with 200 ms of work.
#[pool_job]
fn traced_fails_first(x: u64, dir: String) -> u64 {
    assert_ne!(x, 0, "the first item fails");
    traced_square(x, 200, dir)
}

#[pool_job]
fn fails_on_three(x: u32) -> u32 {
    assert_ne!(x, 3, "three is not allowed");
    x
}

/// Takes its whole worker process down, every time.
#[pool_job]
fn crash(x: u32) -> u32 {
    if x < 1000 {
        std::process::abort();
    }
    x
}

#[pool_job]
fn length(bytes: Vec<u8>) -> usize {
    bytes.len()
}

#[pool_job]
fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

/// Also in tests/bin/other_worker.rs, with the same types.
#[pool_job]
fn tagged_add(a: i64, b: i64) -> (i64, u32) {
    std::thread::sleep(Duration::from_millis(20));
    (a + b, std::process::id())
}

/// Appends a line `<x>` to the file `path` (a side effect a test can
/// count), and returns `x * x`.
#[pool_job]
fn logged_square(x: u64, path: String) -> u64 {
    procpool_tests::append_line(&path, x);
    x * x
}

#[pool_job]
fn worker_name() -> String {
    procpool::current_process().name().to_owned()
}

/// A redis-server of the test's own, the URL of `params`' queue on it,
/// `workers` cluster workers serving it and a pool sending to it. Bind all
/// four: they are dropped in reverse order, the server last.
fn cluster(params: &str, workers: usize) -> (RedisServer, String, Workers, Pool) {
    let redis = RedisServer::start();
    let url = redis.url(params);
    let workers = Workers::start(&url, workers).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    (redis, url, workers, pool)
}

/// Fails unless `outcome` is an `Error::Cluster` whose message has every one of `needles`.
fn expect_cluster_error<T: std::fmt::Debug>(outcome: Result<T, Error>, needles: &[&str]) {
    match outcome {
        Err(Error::Cluster { message, .. }) => {
            for needle in needles {
                assert!(message.contains(needle), "no `{needle}` in: {message}");
            }
        }
        other => panic!("expected a cluster error, got {other:?}"),
    }
}

/// `err` and its causes, as anyhow's `{:#}` prints them.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text += &format!(": {inner}");
        cause = inner.source();
    }
    text
}

fn redis_conn(server: &RedisServer, password: &str) -> redis::Connection {
    redis::Client::open(server.url_with_password(password, ""))
        .and_then(|client| client.get_connection())
        .expect("a test connection to redis-server")
}

/// A fresh directory for a test's traces, removed when dropped (also when the test fails).
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("procpool-cluster-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// Files in `dir` named `<kind>-<item>-<pid>`: item → pids, in order of name.
fn traces(dir: &Path, kind: &str) -> BTreeMap<u64, Vec<u32>> {
    let mut map: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let mut parts = name.split('-');
        if parts.next() == Some(kind) {
            let item = parts.next().unwrap().parse().unwrap();
            let pid = parts.next().unwrap().parse().unwrap();
            map.entry(item).or_default().push(pid);
        }
    }
    map
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

#[test]
fn map_runs_on_two_worker_processes_with_the_whole_pool_api() {
    let redis = RedisServer::start();
    let url = redis.url("queue=two");
    let workers = Workers::start(&url, 2).unwrap();
    let worker_pids: HashSet<u32> = workers.pids().into_iter().collect();
    assert_eq!(worker_pids.len(), 2);
    let pool = Pool::builder().cluster(&url).build().unwrap();

    assert_eq!(
        pool.map(square, 0..100).unwrap(),
        (0..100).map(|x| x * x).collect::<Vec<u64>>()
    );
    // Slow one-item tasks: both workers take some.
    let out = pool
        .chunksize(1)
        .starmap(slow_square, (0..30).map(|x| (x, 40)))
        .unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..30).map(|x| x * x).collect::<Vec<u64>>()
    );
    let pids: HashSet<u32> = out.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(pids, worker_pids, "both workers, and only they, ran tasks");
    assert!(!pids.contains(&std::process::id()));

    assert_eq!(pool.apply(add, (20, 22)).unwrap(), 42);
    assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    let lazy: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(50)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lazy, (0..50).map(|x| x * x).collect::<Vec<u64>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..40u64)
        .collect::<Result<_, _>>()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..40).map(|x| x * x).collect::<Vec<u64>>());
    let pending = pool.map_async(square, 0..10).unwrap();
    let mut single = pool.apply_async(square, 12).unwrap();
    assert_eq!(single.get_timeout(Duration::from_secs(20)).unwrap(), 144);
    assert_eq!(pending.get().unwrap()[9], 81);
    assert!(
        pool.apply(worker_name, ())
            .unwrap()
            .starts_with("ClusterWorker-")
    );

    // A panic is the same error as in a local pool, with the item's index.
    match pool.map(fails_on_three, 0..6) {
        Err(Error::Panicked { index, message, .. }) => {
            assert_eq!(index, 3);
            assert!(message.contains("three is not allowed"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    pool.close();
    pool.join().unwrap();
    assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
    workers.stop().unwrap();
}

/// A `traced_square` map of `n` items of `millis` ms each, on 2 cluster
/// workers with a 1 s visibility timeout, caught while a worker is inside a task.
struct TracedMap {
    call: procpool::AsyncResult<Vec<u64>>,
    /// The pid of a worker that is running a task.
    busy: u32,
    dir: ScratchDir,
    // Dropped in this order: the server goes last, after its clients.
    _pool: Pool,
    workers: Workers,
    _redis: RedisServer,
}

fn traced_map(queue: &str, n: u64, millis: u64) -> TracedMap {
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue={queue}&visibility=1"));
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let dir = scratch_dir(queue);
    let dir_text = dir.to_str().unwrap().to_owned();
    let items: Vec<(u64, u64, String)> = (0..n).map(|x| (x, millis, dir_text.clone())).collect();
    let call = pool.chunksize(1).map_async(traced_square, items).unwrap();
    let mut busy = None;
    eventually("a worker to start a task", || {
        busy = traces(&dir, "started").values().flatten().next().copied();
        busy.is_some()
    });
    TracedMap {
        call,
        busy: busy.unwrap(),
        dir,
        _pool: pool,
        workers,
        _redis: redis,
    }
}

#[test]
fn a_worker_killed_mid_map_loses_nothing_and_each_result_arrives_once() {
    let mut run = traced_map("kill", 12, 300);
    let (victim, dir, workers) = (run.busy, &run.dir, &run.workers);
    kill(victim, libc::SIGKILL);

    let out = run.call.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(out, (0..12).map(|x| x * x).collect::<Vec<u64>>());
    // The task the victim held was run again by another worker.
    let started = traces(dir, "started");
    let finished = traces(dir, "finished");
    let redone: Vec<u64> = started
        .iter()
        .filter(|(item, pids)| pids.contains(&victim) && !finished[item].contains(&victim))
        .map(|(item, _)| *item)
        .collect();
    assert_eq!(
        redone.len(),
        1,
        "started {started:?}, finished {finished:?}"
    );
    assert!(finished[&redone[0]].iter().all(|pid| *pid != victim));
    // The supervisor replaced the dead worker.
    eventually("a replacement worker", || {
        workers.restarts() == 1 && workers.pids().len() == 2
    });
    assert!(!workers.pids().contains(&victim));
}

#[test]
fn a_task_that_ran_twice_is_received_once() {
    // A worker frozen past the visibility timeout (its heartbeat silent for
    // 1 s + 1 s, then the next scan) loses its task to another worker; when
    // it wakes it stores a second result, which is dropped. Without
    // deduplication the second result would count as another chunk's, and
    // the call would end early with an item missing.
    let mut run = traced_map("twice", 10, 400);
    let (frozen, dir) = (run.busy, &run.dir);
    kill(frozen, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    kill(frozen, libc::SIGCONT);

    let received = run.call.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(received, (0..10).map(|x| x * x).collect::<Vec<u64>>());
    // Some item was finished by two workers, yet received once.
    eventually("the frozen worker to finish its copy", || {
        traces(dir, "finished").values().any(|pids| pids.len() == 2)
    });
}

/// A process killed when the test ends, whether it passes or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker of the other build (tests/bin/other_worker.rs) serving `url`.
fn other_build_worker(url: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_procpool-other-worker"))
            .arg(url)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `n` workers have announced themselves on `queue`.
fn wait_for_workers(conn: &mut redis::Connection, queue: &str, n: u64) {
    eventually("the workers to announce themselves", || {
        redis::cmd("ZCARD")
            .arg(format!("procpool:{{{queue}}}:workers"))
            .query::<u64>(conn)
            .unwrap()
            == n
    });
}

#[test]
fn a_rolling_deploy_fails_no_call() {
    // Two workers of the old build, where `cluster::square` takes a u32, and
    // two of the new one; `cluster::tagged_add` is the same in both.
    let redis = RedisServer::start();
    let url = redis.url("queue=deploy");
    let old = [other_build_worker(&url), other_build_worker(&url)];
    let old_pids: HashSet<u32> = old.iter().map(|w| w.0.id()).collect();
    let new = Workers::start(&url, 2).unwrap();
    let new_pids: HashSet<u32> = new.pids().into_iter().collect();
    let mut conn = redis_conn(&redis, "");
    wait_for_workers(&mut conn, "deploy", 4);
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let squares: Vec<_> = (0..5)
        .map(|_| pool.chunksize(1).map_async(square, 0..8u64).unwrap())
        .collect();
    let adds: Vec<_> = (0..5)
        .map(|_| {
            pool.chunksize(1)
                .map_async(tagged_add, (0..8).map(|i| (i, 1)))
                .unwrap()
        })
        .collect();
    for mut call in squares {
        let out = call.get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(out, (0..8u64).map(|x| x * x).collect::<Vec<_>>());
    }
    let mut ran_on = HashSet::new();
    for mut call in adds {
        let out = call.get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            (1..9).collect::<Vec<i64>>()
        );
        ran_on.extend(out.into_iter().map(|(_, pid)| pid));
    }
    assert!(
        ran_on.iter().any(|pid| old_pids.contains(pid)),
        "old build ran none"
    );
    assert!(
        ran_on.iter().any(|pid| new_pids.contains(pid)),
        "new build ran none"
    );
    assert_eq!(queued(&mut conn, "deploy"), 0);
}

#[test]
fn a_job_no_live_worker_can_run_fails_with_a_registry_error_naming_it() {
    let redis = RedisServer::start();
    let url = redis.url("queue=mismatch&unserved=2");
    let _old = other_build_worker(&url);
    let mut conn = redis_conn(&redis, "");
    wait_for_workers(&mut conn, "mismatch", 1);
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let started = Instant::now();
    let mut call = pool.chunksize(1).map_async(square, 0..3u64).unwrap();
    // The job both builds have still runs meanwhile.
    assert_eq!(pool.apply(tagged_add, (1, 2)).unwrap().0, 3);
    match call.get_timeout(Duration::from_secs(60)) {
        Err(Error::Registry(message)) => {
            for needle in [
                "`cluster::square: fn(u64) -> u64`",
                "1 workers are alive",
                "live workers have `cluster::square: fn(u32) -> u32`",
                "unserved",
            ] {
                assert!(message.contains(needle), "no {needle} in: {message}");
            }
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
    // `unserved` (2 s) after the check that first found no worker for it.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Its tasks were taken off the queue.
    assert_eq!(queued(&mut conn, "mismatch"), 0);
}

#[test]
fn a_call_with_no_worker_at_all_is_reported_and_fails_only_with_no_workers_set() {
    let redis = RedisServer::start();
    // Opted in: no worker alive for 2 s fails the call.
    let url = redis.url("queue=nobody&no_workers=2&unserved=1");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let started = Instant::now();
    let mut call = pool.apply_async(square, 3).unwrap();
    // Meanwhile `inspect` shows the job waiting with no worker for it.
    eventually("inspect to show the job no worker can run", || {
        let report = procpool::cluster::inspect(&url).unwrap();
        report.jobs.iter().any(|job| {
            job.job == "cluster::square: fn(u64) -> u64" && job.waiting == 1 && job.workers == 0
        }) && report.to_string().contains("no live worker can run it")
    });
    match call.get_timeout(Duration::from_secs(60)) {
        Err(Error::Cluster { message, .. }) => {
            for needle in [
                "`cluster::square: fn(u64) -> u64`",
                "no worker",
                "`no_workers`",
            ] {
                assert!(message.contains(needle), "no {needle} in: {message}");
            }
        }
        other => panic!("expected a cluster error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let mut conn = redis_conn(&redis, "");
    assert_eq!(queued(&mut conn, "nobody"), 0, "its task was withdrawn");
    // By default a call waits for workers (autoscaling may start them).
    let patient = redis.url("queue=patient&unserved=1");
    let pool = Pool::builder().cluster(&patient).build().unwrap();
    let mut call = pool.apply_async(square, 4).unwrap();
    assert!(matches!(
        call.get_timeout(Duration::from_secs(4)),
        Err(Error::Timeout(_))
    ));
    let _workers = Workers::start(&patient, 1).unwrap();
    assert_eq!(call.get_timeout(Duration::from_secs(60)).unwrap(), 16);
}

/// The ids of the connections whose name starts with `prefix`.
fn client_ids(server: &RedisServer, prefix: &str) -> Vec<String> {
    let mut conn = redis_conn(server, "");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name).map(str::to_owned))
                    .unwrap_or_default()
            };
            field("name=").starts_with(prefix).then(|| field("id="))
        })
        .collect()
}

/// Kills every connection whose name starts with `prefix`; returns how many.
fn kill_clients(server: &RedisServer, prefix: &str) -> usize {
    let mut conn = redis_conn(server, "");
    let ids = client_ids(server, prefix);
    for id in &ids {
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut conn);
    }
    ids.len()
}

#[test]
fn a_call_completes_after_the_callers_connections_are_killed() {
    let (redis, _url, _workers, pool) = cluster("queue=drop", 2);
    let mut call = pool
        .chunksize(1)
        .map_async(slow_square, (0..10).map(|x| (x, 150)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !call.ready(),
        "the call must still be pending when its connection drops"
    );
    assert!(kill_clients(&redis, "procpool-caller-") >= 2);
    let out = call.get_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..10).map(|x| x * x).collect::<Vec<u64>>()
    );
    // The pool goes on working over new connections.
    assert_eq!(pool.map(square, 0..5).unwrap(), vec![0, 1, 4, 9, 16]);
}

#[test]
fn a_call_completes_after_every_connection_is_killed() {
    let (redis, _url, _workers, pool) = cluster("queue=dropall", 2);
    let mut call = pool
        .chunksize(1)
        .map_async(slow_square, (0..10).map(|x| (x, 150)))
        .unwrap();
    // Workers::start returned once the workers were connected: two
    // connections each, for tasks and for the heartbeat.
    assert_eq!(client_ids(&redis, "procpool-worker-").len(), 4);
    std::thread::sleep(Duration::from_millis(300));
    assert!(kill_clients(&redis, "procpool-worker-") >= 4);
    assert!(kill_clients(&redis, "procpool-caller-") >= 2);
    let out = call.get_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(out.len(), 10);
}

#[test]
fn passwords_are_required_and_checked() {
    let redis = RedisServer::with_args(&["--requirepass", "s3cret"], false);
    let wrong = redis.url_with_password("wrong", "queue=auth");
    let err = Pool::builder().cluster(&wrong).build().unwrap_err();
    assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("password"), "{text}");
    // Redis' refusal is the source, said once, without the password either.
    let text = chain(&err);
    assert!(
        !text.contains("wrong"),
        "the password must not appear in errors: {text}"
    );
    assert_eq!(text.matches("authentication failed").count(), 1, "{text}");
    let none = redis.url("queue=auth");
    assert!(matches!(
        Pool::builder().cluster(&none).build(),
        Err(Error::Cluster { .. })
    ));
    assert!(matches!(
        Workers::start(&wrong, 1),
        Err(Error::Cluster { .. })
    ));

    let right = redis.url_with_password("s3cret", "queue=auth");
    let _workers = Workers::start(&right, 1).unwrap();
    let pool = Pool::builder().cluster(&right).build().unwrap();
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
}

#[test]
fn tls_urls_work_end_to_end() {
    let redis = RedisServer::with_args(&[], true);
    let ca = redis.tls_dir().join("ca.crt");
    let url = redis.url(&format!("queue=tls&tls_ca={}", ca.display()));
    assert!(url.starts_with("rediss://"));
    let _workers = Workers::start(&url, 1).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
    // Without the CA the server's certificate is not trusted.
    let untrusted = redis.url("queue=tls");
    let err = Pool::builder().cluster(&untrusted).build().unwrap_err();
    assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
}

#[test]
fn payload_limits_are_enforced_on_both_sides() {
    let (redis, _url, _workers, pool) = cluster("queue=limits&max_payload=1000", 1);
    // Too large to send: refused by the caller, at once.
    match pool.apply(length, vec![7; 5000]) {
        Err(Error::PayloadTooLarge { bytes, limit, .. }) => {
            assert!(bytes > 5000);
            assert_eq!(limit, 1000);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(pool.apply(length, vec![7; 100]).unwrap(), 100);
    // Too large a result: refused by the worker.
    match pool.apply(zeros, 5000) {
        Err(Error::PayloadTooLarge { what, .. }) => assert!(what.contains("result"), "{what}"),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // A caller with a larger limit than its workers: the worker refuses.
    let generous = redis.url("queue=limits&max_payload=100000");
    let pool = Pool::builder().cluster(&generous).build().unwrap();
    match pool.apply(length, vec![7; 5000]) {
        Err(Error::PayloadTooLarge { what, limit, .. }) => {
            assert!(what.contains("task"), "{what}");
            assert_eq!(limit, 1000);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

/// How many tasks wait in `queue`'s streams.
fn queued(conn: &mut redis::Connection, queue: &str) -> u64 {
    keys(conn, &format!("procpool:{{{queue}}}:tasks:*"))
        .iter()
        .map(|stream| queued_in(conn, stream))
        .sum()
}

/// The tasks stream of job `name` (with its types, as in the registry) on `queue`.
fn stream_of(conn: &mut redis::Connection, queue: &str, job: &str) -> String {
    let jobs: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("procpool:{{{queue}}}:jobs"))
        .query(conn)
        .unwrap();
    let id = jobs
        .iter()
        .find(|(_, text)| *text == job)
        .unwrap_or_else(|| panic!("no `{job}` among {jobs:?}"))
        .0;
    format!("procpool:{{{queue}}}:tasks:{id}")
}

fn keys(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query(conn).unwrap()
}

#[test]
fn caller_keys_expire_and_are_removed_with_the_pool() {
    let (redis, _url, _workers, pool) = cluster("queue=ttl&ttl=120&reconnect=5", 1);
    let call = pool.apply_async(slow_square, (3, 500)).unwrap();
    let mut conn = redis_conn(&redis, "");
    eventually("the result to be stored", || {
        !keys(&mut conn, "procpool:{ttl}:results:*").is_empty() || call.ready()
    });
    // Presence, results and the job list all live `ttl` past their last refresh.
    for pattern in ["procpool:{ttl}:caller:*", "procpool:{ttl}:results:*"] {
        for key in keys(&mut conn, pattern) {
            let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
            assert!((1..=120).contains(&ttl), "{key} has TTL {ttl}");
        }
    }
    assert_eq!(call.get().unwrap().0, 9);
    drop(pool);
    assert!(keys(&mut conn, "procpool:{ttl}:caller:*").is_empty());
    assert!(keys(&mut conn, "procpool:{ttl}:results:*").is_empty());
    assert_eq!(queued(&mut conn, "ttl"), 0);
}

#[test]
fn tasks_of_a_terminated_caller_are_withdrawn_or_skipped() {
    let redis = RedisServer::start();
    let url = redis.url("queue=gone");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let dir = scratch_dir("gone");
    let dir_text = dir.to_str().unwrap().to_owned();
    let items: Vec<(u64, u64, String)> = (0..5).map(|x| (x, 10, dir_text.clone())).collect();
    // No worker yet: the tasks wait in the queue.
    let call = pool.chunksize(1).map_async(traced_square, items).unwrap();
    let mut conn = redis_conn(&redis, "");
    assert_eq!(queued(&mut conn, "gone"), 5);
    pool.terminate();
    assert!(matches!(call.get(), Err(Error::Terminated { .. })));
    assert_eq!(queued(&mut conn, "gone"), 0);
    // A worker started now runs nothing of it.
    let workers = Workers::start(&url, 1).unwrap();
    let other = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(other.apply(square, 5).unwrap(), 25);
    assert!(traces(&dir, "started").is_empty());
    drop(workers);
}

/// Run as a child process by `a_stalled_caller_learns_that_its_tasks_were_dropped`:
/// submits 4 tasks, then reports how the call ended.
#[test]
#[ignore = "helper: started by another test, then stopped"]
fn helper_caller_that_stalls() {
    let url = std::env::var("PROCPOOL_TEST_URL").unwrap();
    let dir = std::env::var("PROCPOOL_TEST_DIR").unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool
        .chunksize(1)
        .map_async(traced_square, (0..4).map(|x| (x, 10, dir.clone())))
        .unwrap();
    println!("SUBMITTED");
    println!("OUTCOME {:?}", call.get_timeout(Duration::from_secs(60)));
}

/// Starts `helper_caller_that_stalls` on `url`; returns it, once it has
/// sent its tasks, with the lines of its stdout still to come.
fn start_stalling_caller(
    url: &str,
    dir: &Path,
) -> (KillOnDrop, impl Iterator<Item = String> + use<>) {
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_caller_that_stalls",
            "--ignored",
            "--nocapture",
        ])
        .env("PROCPOOL_TEST_URL", url)
        .env("PROCPOOL_TEST_DIR", dir.to_str().unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = caller.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout)).map(Result::unwrap);
    assert!(lines.any(|line| line.contains("SUBMITTED")));
    (KillOnDrop(caller), lines)
}

#[test]
fn a_caller_paused_past_its_presence_sends_the_dropped_tasks_again() {
    // A caller stopped longer than `presence` (SIGSTOP: it cannot refresh
    // its presence key) looks dead: workers drop its tasks unrun. Those
    // provably never ran, so when it goes on it sends them again, and its
    // call succeeds, each task run once.
    let redis = RedisServer::start();
    let url = redis.url("queue=vanished&presence=1");
    let dir = scratch_dir("vanished");
    let (caller, mut lines) = start_stalling_caller(&url, &dir);
    kill(caller.0.id(), libc::SIGSTOP);
    let mut conn = redis_conn(&redis, "");
    eventually("the stopped caller's presence to expire", || {
        keys(&mut conn, "procpool:{vanished}:caller:*").is_empty()
    });
    let _workers = Workers::start(&url, 1).unwrap();
    eventually("the worker to drop the tasks", || {
        queued(&mut conn, "vanished") == 0
    });
    assert!(traces(&dir, "started").is_empty(), "the dropped tasks ran");
    kill(caller.0.id(), libc::SIGCONT);
    let outcome = lines.find(|line| line.starts_with("OUTCOME")).unwrap();
    assert_eq!(outcome, "OUTCOME Ok([0, 1, 4, 9])");
    let started = traces(&dir, "started");
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(started.values().all(|pids| pids.len() == 1), "{started:?}");
}

#[test]
fn a_caller_paused_past_ttl_fails_the_tasks_that_may_have_run_naming_them() {
    // Stopped longer than `ttl`, a caller finds neither its tasks (a worker
    // ran them) nor their results (expired unread): those tasks may have
    // run, so their calls fail, naming the items and the pause.
    let redis = RedisServer::start();
    let url = redis.url("queue=paused&presence=1&ttl=3&reconnect=1");
    let dir = scratch_dir("paused");
    let _workers = Workers::start(&url, 1).unwrap();
    let (caller, mut lines) = start_stalling_caller(&url, &dir);
    kill(caller.0.id(), libc::SIGSTOP);
    eventually("the worker to run a task", || {
        !traces(&dir, "finished").is_empty()
    });
    let mut conn = redis_conn(&redis, "");
    eventually("the results to expire", || {
        keys(&mut conn, "procpool:{paused}:results:*").is_empty()
    });
    kill(caller.0.id(), libc::SIGCONT);
    let outcome = lines.find(|line| line.starts_with("OUTCOME")).unwrap();
    assert!(
        outcome.contains("Err(Cluster {")
            && outcome.contains("may have run")
            && outcome.contains("for items ")
            && outcome.contains("without refreshing its presence"),
        "{outcome}"
    );
}

#[test]
fn unsupported_options_and_bad_servers_are_clear_errors() {
    let redis = RedisServer::start();
    let url = redis.url("queue=opts");
    for builder in [
        Pool::builder().cluster(&url).max_tasks_per_child(3),
        Pool::builder().cluster(&url).retries(2),
        Pool::builder().cluster(&url).initializer(square, 1),
    ] {
        match builder.build() {
            Err(Error::Config(message)) => assert!(message.contains("cluster"), "{message}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
    assert!(matches!(
        Pool::builder()
            .cluster("redis://127.0.0.1:6379/0?queue=a b")
            .build(),
        Err(Error::Config(_))
    ));
    // Nothing listens on this port: an error within seconds, not a hang.
    let closed = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = Pool::builder()
        .cluster(format!("redis://127.0.0.1:{closed}/0"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("redis-server"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The OS error is the source, said once in the printed chain.
    let printed = chain(&err);
    let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
    assert_eq!(printed.matches(&refused).count(), 1, "{printed}");
    assert!(!err.to_string().contains(&refused), "{err}");
    match &err {
        Error::Cluster {
            source: Some(cause),
            ..
        } => assert_eq!(
            cause.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{printed}"
        ),
        other => panic!("expected a cluster error with its cause, got {other:?}"),
    }
}

#[test]
fn a_worker_runs_only_registered_jobs_and_survives_forged_tasks() {
    let (redis, _url, workers, pool) = cluster("queue=forged", 1);
    let mut conn = redis_conn(&redis, "");
    let stream = stream_of(&mut conn, "forged", "cluster::square: fn(u64) -> u64");
    let _: () = redis::cmd("SET")
        .arg("procpool:{forged}:caller:abcd")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let forge = |conn: &mut redis::Connection, fields: &[(&str, &[u8])]| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (key, value) in fields {
            cmd.arg(*key).arg(*value);
        }
        let _: String = cmd.query(conn).unwrap();
    };
    // Malformed; a caller id that would name another key; an unknown job.
    forge(&mut conn, &[("garbage", b"yes")]);
    forge(
        &mut conn,
        &[
            ("caller", b"../x"),
            ("seq", b"1"),
            ("job", b"cluster::square"),
            ("count", b"1"),
            ("items", &[3]),
        ],
    );
    forge(
        &mut conn,
        &[
            ("caller", b"abcd"),
            ("seq", b"7"),
            ("job", b"no::such::job"),
            ("count", b"1"),
            ("items", &[3]),
        ],
    );
    let results = "procpool:{forged}:results:abcd";
    eventually("the refusal of the unknown job", || {
        redis::cmd("XLEN")
            .arg(results)
            .query::<u64>(&mut conn)
            .unwrap()
            == 1
    });
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(results)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let text = format!("{reply:?}");
    assert!(text.contains("seq") && text.contains("err"), "{text}");
    let bytes: Vec<u8> = match reply {
        redis::Value::Array(entries) => match &entries[0] {
            redis::Value::Array(entry) => match &entry[1] {
                redis::Value::Array(fields) => match &fields[3] {
                    redis::Value::BulkString(bytes) => bytes.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert!(
        bytes.windows(13).any(|w| w == b"no::such::job"),
        "the refusal names the job"
    );
    assert!(
        keys(&mut conn, "procpool:{forged}:results:*")
            .iter()
            .all(|key| !key.contains(".."))
    );
    // The worker survived all three and still serves.
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    assert_eq!(queued(&mut conn, "forged"), 0);
    assert_eq!(workers.restarts(), 0);
}

#[test]
fn a_stopped_worker_leaves_the_group_and_the_worker_set() {
    let (redis, url, workers, pool) = cluster("queue=leave", 2);
    assert_eq!(pool.map(square, 0..10).unwrap()[3], 9);
    let mut conn = redis_conn(&redis, "");
    // Workers::start returned once both announced themselves.
    let announced: u64 = redis::cmd("ZCARD")
        .arg("procpool:{leave}:workers")
        .query(&mut conn)
        .unwrap();
    assert_eq!(announced, 2);
    // The pool sizes its chunks for the workers it saw.
    assert_eq!(
        Pool::builder().cluster(&url).build().unwrap().processes(),
        2
    );
    workers.stop().unwrap();
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream_of(
            &mut conn,
            "leave",
            "cluster::square: fn(u64) -> u64",
        ))
        .arg("workers")
        .query(&mut conn)
        .unwrap();
    assert!(consumers.is_empty(), "{consumers:?}");
    let left: u64 = redis::cmd("ZCARD")
        .arg("procpool:{leave}:workers")
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn a_live_worker_keeps_a_task_longer_than_the_visibility_timeout() {
    // The heartbeat renews the claim: nobody else runs the task meanwhile.
    let (_redis, _url, _workers, pool) = cluster("queue=long&visibility=1", 2);
    let dir = scratch_dir("long");
    let dir_text = dir.to_str().unwrap().to_owned();
    assert_eq!(pool.apply(traced_square, (7, 3000, dir_text)).unwrap(), 49);
    let started = traces(&dir, "started");
    assert_eq!(
        started[&7].len(),
        1,
        "the task ran more than once: {started:?}"
    );
}

#[test]
fn the_tasks_of_a_failed_call_are_taken_off_the_queue() {
    let (redis, _url, _workers, pool) = cluster("queue=withdraw", 1);
    let dir = scratch_dir("withdraw");
    let dir_text = dir.to_str().unwrap().to_owned();
    let call = pool
        .chunksize(1)
        .map_async(traced_fails_first, (0..30).map(|x| (x, dir_text.clone())))
        .unwrap();
    match call.get() {
        Err(Error::Panicked { index: 0, .. }) => {}
        other => panic!("expected the first item's panic, got {other:?}"),
    }
    let mut conn = redis_conn(&redis, "");
    eventually("the call's other tasks to leave the queue", || {
        queued(&mut conn, "withdraw") == 0
    });
    // 29 tasks of 200 ms on one worker would take 5.8 s; most never ran.
    std::thread::sleep(Duration::from_millis(500));
    let ran = traces(&dir, "started").len();
    assert!(
        ran < 29,
        "{ran} of 29 tasks ran after their call had failed"
    );
}

#[test]
fn a_task_that_kills_every_worker_fails_after_max_deliveries() {
    let (_redis, url, workers, pool) = cluster("queue=poison&visibility=0.5&max_deliveries=2", 2);
    match pool
        .apply_async(crash, 7)
        .unwrap()
        .get_timeout(Duration::from_secs(60))
    {
        Err(Error::TaskLost {
            job,
            first,
            count,
            deliveries,
        }) => {
            assert_eq!(
                (job.as_str(), first, count, deliveries),
                ("cluster::crash", 0, 1, 2)
            );
        }
        other => panic!("expected TaskLost, got {other:?}"),
    }
    // Counted for inspection (and the fleet page) by the worker that gave
    // the task up, before it stored the failure the caller read.
    let report = procpool::cluster::inspect(&url).unwrap();
    assert_eq!((report.lost_tasks, report.timed_out_tasks), (1, 0));
    assert!(report.to_string().contains("1 tasks lost"), "{report}");
    // The two crashed workers were replaced, and the queue still serves.
    assert!(workers.restarts() >= 2);
    assert_eq!(pool.apply(crash, 1234).unwrap(), 1234);
}

#[test]
fn a_redis_restart_that_lost_the_tasks_fails_pending_calls_instead_of_hanging() {
    let (mut redis, _url, workers, pool) = cluster("queue=restart", 1);
    // One task runs, three wait in Redis; then Redis loses them all.
    let mut call = pool
        .chunksize(1)
        .map_async(slow_square, (0..4).map(|x| (x, 500)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    redis.restart();
    expect_cluster_error(
        call.get_timeout(Duration::from_secs(30)),
        &["no longer in Redis", "persistence"],
    );
    // The same pool and the same workers go on with the new server.
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
    assert_eq!(workers.restarts(), 0);
}

#[test]
fn imap_goes_on_after_an_item_too_large_to_send() {
    let (_redis, _url, _workers, pool) = cluster("queue=imaplimit&max_payload=1000", 1);
    let items = (0..10usize).map(|i| vec![1u8; if i == 3 { 5000 } else { i }]);
    let out: Vec<Result<usize, Error>> = pool.imap(length, items).collect();
    assert_eq!(out.len(), 10);
    for (i, item) in out.iter().enumerate() {
        match (i, item) {
            (3, Err(Error::PayloadTooLarge { .. })) => {}
            (i, Ok(len)) if i != 3 => assert_eq!(*len, i),
            (i, other) => panic!("item {i}: {other:?}"),
        }
    }
}

#[test]
fn a_panicking_callback_does_not_stop_the_pool() {
    let (_redis, _url, _workers, pool) = cluster("queue=callback", 1);
    let mut call = pool
        .apply_async(slow_square, (3, 300))
        .unwrap()
        .on_success(|_| panic!("a callback that panics"));
    assert_eq!(call.get_timeout(Duration::from_secs(20)).unwrap().0, 9);
    // The thread that delivers results survived it.
    let mut next = pool.apply_async(square, 5).unwrap();
    assert_eq!(next.get_timeout(Duration::from_secs(20)).unwrap(), 25);
}

#[test]
fn tasks_flushed_from_redis_fail_their_call_without_a_lost_connection() {
    flushed_tasks_fail_their_call(false);
}

#[test]
fn tasks_flushed_from_redis_fail_their_call_also_where_scripts_are_denied() {
    // The check asks a script whether the entries exist; an ACL user
    // without scripts gets the entries read instead.
    flushed_tasks_fail_their_call(true);
}

fn flushed_tasks_fail_their_call(without_scripts: bool) {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis, "");
    let mut url = redis.url("queue=flush");
    if without_scripts {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("noscripts")
            .arg("on")
            .arg(">pw")
            .arg("~procpool:*")
            .arg("+@all")
            .arg("-@scripting")
            .query(&mut conn)
            .unwrap();
        url = url.replace("redis://", "redis://noscripts:pw@");
    }
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool.chunksize(1).map_async(square, 0..4).unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    // The caller checks its pending tasks every 10 seconds.
    expect_cluster_error(
        call.get_timeout(Duration::from_secs(40)),
        &["no longer in Redis"],
    );
}

#[test]
fn a_redis_restart_while_results_are_being_handled_is_noticed() {
    // The restart drops the connection while the results thread runs a
    // callback, so a command other than the blocking read meets it first.
    let (mut redis, _url, workers, pool) = cluster("queue=busyrestart", 1);
    let (in_callback, entered) = std::sync::mpsc::channel();
    let first = pool.apply_async(square, 2).unwrap().on_success(move |_| {
        let _ = in_callback.send(());
        std::thread::sleep(Duration::from_secs(2));
    });
    entered.recv_timeout(Duration::from_secs(20)).unwrap();
    let mut second = pool
        .chunksize(1)
        .map_async(slow_square, (0..4).map(|x| (x, 2000)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    redis.restart();
    expect_cluster_error(
        second.get_timeout(Duration::from_secs(40)),
        &["no longer in Redis"],
    );
    assert_eq!(first.get().unwrap(), 4);
    drop(workers);
}

#[test]
fn an_acl_user_without_client_setname_may_connect() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis, "");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("limited")
        .arg("on")
        .arg(">pw")
        .arg("~procpool:*")
        .arg("+@all")
        .arg("-client")
        .query(&mut conn)
        .unwrap();
    let url = redis
        .url("queue=acl")
        .replace("redis://", "redis://limited:pw@");
    let _workers = Workers::start(&url, 1).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(pool.map(square, 0..3).unwrap(), vec![0, 1, 4]);
}

#[test]
fn tls_client_certificates_are_presented() {
    // The server asks every client for a certificate signed by its CA.
    let redis = RedisServer::with_args(&["--tls-auth-clients", "yes"], true);
    let dir = redis.tls_dir();
    let ca = format!("tls_ca={}", dir.join("ca.crt").display());
    let without = redis.url(&format!("queue=mtls&{ca}"));
    assert!(matches!(
        Pool::builder().cluster(&without).build(),
        Err(Error::Cluster { .. })
    ));
    let with = redis.url(&format!(
        "queue=mtls&{ca}&tls_cert={}&tls_key={}",
        dir.join("client.crt").display(),
        dir.join("client.key").display()
    ));
    let _workers = Workers::start(&with, 1).unwrap();
    let pool = Pool::builder().cluster(&with).build().unwrap();
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
}

/// Run as a child process by the tests of a killed caller: submits
/// `PROCPOOL_TEST_ITEMS` (4 by default) one-item tasks of `traced_square`
/// of `PROCPOOL_TEST_MILLIS` ms each (10), then waits to be killed.
#[test]
#[ignore = "helper: started by another test, then killed"]
fn helper_caller_that_gets_killed() {
    let url = std::env::var("PROCPOOL_TEST_URL").unwrap();
    let dir = std::env::var("PROCPOOL_TEST_DIR").unwrap();
    let number = |name: &str, default: u64| {
        std::env::var(name).map_or(default, |value| value.parse().unwrap())
    };
    let (items, millis) = (
        number("PROCPOOL_TEST_ITEMS", 4),
        number("PROCPOOL_TEST_MILLIS", 10),
    );
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let _call = pool
        .chunksize(1)
        .map_async(traced_square, (0..items).map(|x| (x, millis, dir.clone())))
        .unwrap();
    println!("SUBMITTED");
    std::thread::sleep(Duration::from_secs(120));
}

/// Starts `helper_caller_that_gets_killed` on `url` with `env`, and returns
/// it once its tasks are queued.
fn start_doomed_caller(url: &str, dir: &Path, env: &[(&str, &str)]) -> KillOnDrop {
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_caller_that_gets_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("PROCPOOL_TEST_URL", url)
        .env("PROCPOOL_TEST_DIR", dir.to_str().unwrap())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = caller.stdout.take().unwrap();
    let caller = KillOnDrop(caller);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(lines.any(|line| line.unwrap().contains("SUBMITTED")));
    caller
}

#[test]
fn a_killed_caller_leaves_nothing_in_redis_even_with_no_worker() {
    let redis = RedisServer::start();
    let url = redis.url("queue=killed&reconnect=1&ttl=3&presence=1");
    let dir = scratch_dir("killed");
    let mut caller = start_doomed_caller(&url, &dir, &[]);
    kill(caller.0.id(), libc::SIGKILL);
    caller.0.wait().unwrap();
    let mut conn = redis_conn(&redis, "");
    assert_eq!(queued(&mut conn, "killed"), 4);
    assert!(!keys(&mut conn, "procpool:{killed}:caller:*").is_empty());
    // Its presence goes after 1 s, its tasks and results `ttl` (3 s) after
    // its last refresh: no worker needed.
    eventually("every key of the killed caller to expire", || {
        keys(&mut conn, "procpool:{killed}:*").is_empty()
    });
    let _workers = Workers::start(&url, 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(traces(&dir, "started").is_empty());
}

#[test]
fn workers_stop_starting_a_killed_callers_tasks_within_15_seconds() {
    // Default settings: 1000 tasks of 50 ms on 2 workers take 25 s.
    let redis = RedisServer::start();
    let url = redis.url("queue=killedmidmap");
    let dir = scratch_dir("killedmidmap");
    let _workers = Workers::start(&url, 2).unwrap();
    let mut caller = start_doomed_caller(
        &url,
        &dir,
        &[
            ("PROCPOOL_TEST_ITEMS", "1000"),
            ("PROCPOOL_TEST_MILLIS", "50"),
        ],
    );
    eventually("the workers to start its tasks", || {
        traces(&dir, "started").len() >= 4
    });
    kill(caller.0.id(), libc::SIGKILL);
    let killed = Instant::now();
    caller.0.wait().unwrap();
    std::thread::sleep(Duration::from_secs(15).saturating_sub(killed.elapsed()));
    let at_15s = traces(&dir, "started").len();
    std::thread::sleep(Duration::from_secs(3));
    let at_18s = traces(&dir, "started").len();
    assert_eq!(
        at_15s, at_18s,
        "tasks still started 15 s after the caller died"
    );
    assert!(at_15s < 1000, "the map finished before the test could tell");
    // The rest were dropped unrun.
    let mut conn = redis_conn(&redis, "");
    eventually("the workers to drop the rest", || {
        queued(&mut conn, "killedmidmap") == 0
    });
    eprintln!("killed caller: {at_15s} of 1000 tasks started");
}

#[test]
fn a_caller_cut_off_longer_than_reconnect_fails_its_pending_calls() {
    let mut redis = RedisServer::start();
    let url = redis.url("queue=cutoff&reconnect=1&ttl=5");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool.chunksize(1).map_async(square, 0..4).unwrap();
    redis.stop();
    expect_cluster_error(
        call.get_timeout(Duration::from_secs(30)),
        &["lost the connection", "reconnect"],
    );
}

/// A key for authenticated queues (at least 16 characters).
const KEY: &str = "procpool-test-key-0123456789";

/// A stream entry's fields, as name and value pairs.
type Fields = Vec<(String, Vec<u8>)>;

/// The entries of stream `key`: id, then field and value pairs.
fn stream_entries(conn: &mut redis::Connection, key: &str) -> Vec<(String, Fields)> {
    let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    raw.into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), pair[1].clone()))
                .collect();
            (id, fields)
        })
        .collect()
}

/// Adds an entry with `fields` to stream `key`.
fn xadd(conn: &mut redis::Connection, key: &str, fields: &[(String, Vec<u8>)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (name, value) in fields {
        cmd.arg(name).arg(value);
    }
    let _: String = cmd.query(conn).unwrap();
}

/// `fields` with `name` set to `value` (or removed, with `None`).
fn with_field(
    fields: &[(String, Vec<u8>)],
    name: &str,
    value: Option<&[u8]>,
) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> =
        fields.iter().filter(|(n, _)| n != name).cloned().collect();
    if let Some(value) = value {
        out.push((name.to_owned(), value.to_vec()));
    }
    out
}

fn stat(conn: &mut redis::Connection, queue: &str, counter: &str) -> u64 {
    redis::cmd("HGET")
        .arg(format!("procpool:{{{queue}}}:stats"))
        .arg(counter)
        .query::<Option<u64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

/// The one stream of `queue` that holds tasks.
fn task_stream(conn: &mut redis::Connection, queue: &str) -> String {
    let streams = keys(conn, &format!("procpool:{{{queue}}}:tasks*"));
    assert_eq!(streams.len(), 1, "{streams:?}");
    streams[0].clone()
}

#[test]
fn with_a_key_tasks_without_a_valid_tag_never_run() {
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue=keyed&key={KEY}"));
    let dir = scratch_dir("keyed");
    let dir_text = dir.to_str().unwrap().to_owned();
    let mut conn = redis_conn(&redis, "");
    // Two genuine tasks, copied from the stream before any worker runs.
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let call = pool
        .chunksize(1)
        .map_async(traced_square, (1..3).map(|x| (x, 10, dir_text.clone())))
        .unwrap();
    let stream = task_stream(&mut conn, "keyed");
    let genuine = stream_entries(&mut conn, &stream);
    assert_eq!(genuine.len(), 2);
    let field = |fields: &[(String, Vec<u8>)], name: &str| {
        fields.iter().find(|(n, _)| n == name).unwrap().1.clone()
    };
    let (first, second) = (&genuine[0].1, &genuine[1].1);
    assert_eq!(field(first, "tag").len(), 32, "HMAC-SHA256 tags");
    let caller = String::from_utf8(field(first, "caller")).unwrap();
    pool.terminate();
    assert!(matches!(call.get(), Err(Error::Terminated { .. })));
    // The caller counts as present, so only the tags decide.
    let _: () = redis::cmd("SET")
        .arg(format!("procpool:{{keyed}}:caller:{caller}"))
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let forged = [
        with_field(first, "tag", None),
        with_field(first, "tag", Some(&[0u8; 32])),
        with_field(first, "items", Some(&field(second, "items"))),
        with_field(first, "seq", Some(b"9")),
        with_field(first, "count", Some(b"2")),
        with_field(first, "job", Some(b"cluster::traced_fails_first")),
    ];
    for fields in &forged {
        xadd(&mut conn, &stream, fields);
    }
    let workers = Workers::start(&url, 1).unwrap();
    eventually("the worker to drop the forged tasks", || {
        stat(&mut conn, "keyed", "forged_tasks") == forged.len() as u64
    });
    assert_eq!(queued_in(&mut conn, &stream), 0, "acknowledged and deleted");
    assert!(traces(&dir, "started").is_empty(), "none of them ran");
    // The same task with its own tag, but its caller is gone: a presence
    // key set without the key does not revive it, so it does not run.
    xadd(&mut conn, &stream, first);
    eventually("the worker to take the task", || {
        queued_in(&mut conn, &stream) == 0
    });
    assert!(traces(&dir, "started").is_empty(), "it did not run");

    assert_eq!(
        stat(&mut conn, "keyed", "forged_tasks"),
        forged.len() as u64
    );
    assert_eq!(workers.restarts(), 0);
}

#[test]
fn with_a_key_a_replayed_task_never_runs_again() {
    // Someone without the key copies a live caller's genuine task entries
    // (XRANGE) and adds them again (XADD of the same fields), before and
    // after they ran: each task's side effect happens once, and every copy
    // is dropped unrun and counted.
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue=replay&key={KEY}"));
    let dir = scratch_dir("replay");
    let log = dir.join("side-effects");
    let log_text = log.to_str().unwrap().to_owned();
    let mut conn = redis_conn(&redis, "");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool
        .chunksize(1)
        .map_async(logged_square, (1..4).map(|x| (x, log_text.clone())))
        .unwrap();
    let stream = task_stream(&mut conn, "replay");
    let captured = stream_entries(&mut conn, &stream);
    assert_eq!(captured.len(), 3);
    // Two copies of each before any worker runs: they race the originals.
    for _ in 0..2 {
        for (_, fields) in &captured {
            xadd(&mut conn, &stream, fields);
        }
    }
    let workers = Workers::start(&url, 2).unwrap();
    assert_eq!(
        call.get_timeout(Duration::from_secs(60)).unwrap(),
        vec![1, 4, 9]
    );
    // Three more of each once they ran, while the caller lives, and one
    // of each in another job's stream.
    for _ in 0..3 {
        for (_, fields) in &captured {
            xadd(&mut conn, &stream, fields);
        }
    }
    let elsewhere = stream_of(&mut conn, "replay", "cluster::square: fn(u64) -> u64");
    for (_, fields) in &captured {
        xadd(&mut conn, &elsewhere, fields);
    }
    eventually("the workers to take every copy off the queue", || {
        queued_in(&mut conn, &stream) == 0 && queued_in(&mut conn, &elsewhere) == 0
    });
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["1", "2", "3"], "each task ran once");
    eventually("every copy to be counted", || {
        stat(&mut conn, "replay", "replayed_tasks") == 18
    });
    assert_eq!(stat(&mut conn, "replay", "forged_tasks"), 0);
    let report = procpool::cluster::inspect(&url).unwrap();
    assert_eq!(report.replayed_tasks, 18);
    assert!(report.to_string().contains("18 replayed tasks"), "{report}");
    // The pool still works, and nothing ran again meanwhile.
    assert_eq!(
        pool.apply(logged_square, (4, log_text.clone())).unwrap(),
        16
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4);
    assert_eq!(workers.restarts(), 0);
}

fn queued_in(conn: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(conn).unwrap()
}

#[test]
fn with_a_key_a_forged_result_is_never_delivered() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis, "");
    // A genuine result of square(5), made by a worker of an unkeyed queue
    // for a made-up caller.
    let open = redis.url("queue=open");
    {
        let warm = Pool::builder().cluster(&open).build().unwrap();
        let call = warm.apply_async(square, 5).unwrap();
        let stream = task_stream(&mut conn, "open");
        let task = stream_entries(&mut conn, &stream).remove(0).1;
        drop(call);
        drop(warm);
        let fake = with_field(&task, "caller", Some(b"ffff"));
        let _: () = redis::cmd("SET")
            .arg("procpool:{open}:caller:ffff")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        xadd(&mut conn, &stream, &fake);
    }
    let _open_workers = Workers::start(&open, 1).unwrap();
    eventually("the made-up caller's result", || {
        queued_in(&mut conn, "procpool:{open}:results:ffff") == 1
    });
    let result = stream_entries(&mut conn, "procpool:{open}:results:ffff")
        .remove(0)
        .1;
    let value = result.iter().find(|(n, _)| n == "ok").unwrap().1.clone();

    for (queue, key) in [("unkeyed", None), ("keyed", Some(KEY))] {
        let params = match key {
            Some(key) => format!("queue={queue}&key={key}"),
            None => format!("queue={queue}"),
        };
        let url = redis.url(&params);
        let pool = Pool::builder().cluster(&url).build().unwrap();
        // No worker yet: the call waits, and a forged result comes first.
        let mut call = pool.apply_async(square, 3).unwrap();
        let caller = keys(&mut conn, &format!("procpool:{{{queue}}}:caller:*"))[0]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let forged = vec![
            ("seq".to_owned(), b"0".to_vec()),
            ("ok".to_owned(), value.clone()),
            ("tag".to_owned(), vec![7u8; 32]),
        ];
        xadd(
            &mut conn,
            &format!("procpool:{{{queue}}}:results:{caller}"),
            &forged,
        );
        if key.is_none() {
            // Without a key, anyone who can write to Redis makes the value.
            assert_eq!(call.get_timeout(Duration::from_secs(30)).unwrap(), 25);
            continue;
        }
        eventually("the caller to drop the forged result", || {
            stat(&mut conn, queue, "forged_results") == 1
        });
        assert!(!call.ready(), "not delivered, not even as an error");
        let _workers = Workers::start(&url, 1).unwrap();
        assert_eq!(call.get_timeout(Duration::from_secs(30)).unwrap(), 9);
    }
}

#[test]
fn a_worker_with_another_key_never_runs_the_callers_tasks() {
    let redis = RedisServer::start();
    let dir = scratch_dir("otherkey");
    let dir_text = dir.to_str().unwrap().to_owned();
    let url = redis.url(&format!("queue=otherkey&key={KEY}"));
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let wrong = Workers::start(
        &redis.url("queue=otherkey&key=another-key-of-enough-length"),
        1,
    )
    .unwrap();
    let unkeyed = Workers::start(&redis.url("queue=otherkey"), 1).unwrap();
    let mut call = pool.apply_async(traced_square, (4, 10, dir_text)).unwrap();
    assert!(
        call.get_timeout(Duration::from_secs(3)).is_err(),
        "still waiting"
    );
    assert!(traces(&dir, "started").is_empty());
    let _right = Workers::start(&url, 1).unwrap();
    assert_eq!(call.get_timeout(Duration::from_secs(30)).unwrap(), 16);
    assert_eq!(traces(&dir, "started").len(), 1);
    let mut conn = redis_conn(&redis, "");
    assert_eq!(
        stat(&mut conn, "otherkey", "forged_tasks"),
        0,
        "never even read"
    );
    drop((wrong, unkeyed));
}

#[test]
fn a_copy_that_won_the_claim_runs_the_task_and_the_call_gets_its_result() {
    // Two workers race for a task and its copy, and the copy's worker
    // claims it first (simulated: its claim is written before any worker
    // starts). The caller's own entry is then dropped as the copy, while
    // the copy runs for longer than the caller's check for lost tasks
    // (every 10 s): the call must get the result, not "lost".
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue=copywins&key={KEY}"));
    let mut conn = redis_conn(&redis, "");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool.apply_async(slow_square, (7, 12_000)).unwrap();
    let stream = task_stream(&mut conn, "copywins");
    let (_, fields) = stream_entries(&mut conn, &stream).remove(0);
    let mut again = redis::cmd("XADD");
    again.arg(&stream).arg("*");
    for (name, value) in &fields {
        again.arg(name).arg(value);
    }
    let copy: String = again.query(&mut conn).unwrap();
    let caller = fields
        .iter()
        .find(|(n, _)| n == "caller")
        .unwrap()
        .1
        .clone();
    let caller = String::from_utf8(caller).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("procpool:{{copywins}}:claims:{caller}"))
        .arg(0)
        .arg(&copy)
        .query(&mut conn)
        .unwrap();
    let _workers = Workers::start(&url, 1).unwrap();
    let (squared, _) = call.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(squared, 49);
    assert_eq!(stat(&mut conn, "copywins", "replayed_tasks"), 1);
}

#[test]
fn a_call_only_workers_with_another_key_could_run_names_the_key_mismatch() {
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue=keymismatch&unserved=1&key={KEY}"));
    let _wrong = Workers::start(
        &redis.url("queue=keymismatch&key=another-key-of-enough-length"),
        1,
    )
    .unwrap();
    let mut conn = redis_conn(&redis, "");
    wait_for_workers(&mut conn, "keymismatch", 1);
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool.apply_async(square, 3).unwrap();
    match call.get_timeout(Duration::from_secs(60)) {
        Err(Error::Registry(message)) => {
            for needle in [
                "`cluster::square: fn(u64) -> u64`",
                "this very job",
                "`key` differs",
            ] {
                assert!(message.contains(needle), "no {needle} in: {message}");
            }
            // Not "live workers have" the signature it says none has.
            assert!(!message.contains("live workers have"), "{message}");
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

/// Run as a child process by
/// `a_worker_without_a_logger_reports_dropped_tasks_on_stderr`: one cluster
/// worker, with no logger installed, until SIGTERM.
#[test]
#[ignore = "helper: started by another test, then stopped"]
fn helper_worker_without_a_logger() {
    let url = std::env::var("PROCPOOL_TEST_URL").unwrap();
    procpool::cluster::serve(&url).unwrap();
}

#[test]
fn a_worker_without_a_logger_reports_dropped_tasks_on_stderr() {
    let redis = RedisServer::start();
    let url = redis.url(&format!("queue=nologger&key={KEY}"));
    let worker = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_worker_without_a_logger",
            "--ignored",
            "--nocapture",
        ])
        .env("PROCPOOL_TEST_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = KillOnDrop(worker);
    let mut conn = redis_conn(&redis, "");
    wait_for_workers(&mut conn, "nologger", 1);
    // A task without a tag, in the stream the worker reads.
    let stream = keys(&mut conn, "procpool:{nologger}:tasks:*")
        .into_iter()
        .find(|s| {
            let described: Option<String> = redis::cmd("HGET")
                .arg("procpool:{nologger}:jobs")
                .arg(s.rsplit(':').next().unwrap())
                .query(&mut conn)
                .unwrap();
            described.is_some_and(|d| d.starts_with("cluster::square: "))
        })
        .unwrap();
    let forged: Vec<(String, Vec<u8>)> = [
        ("caller", &b"abcd"[..]),
        ("seq", b"0"),
        ("job", b"cluster::square"),
        ("count", b"1"),
        ("items", &[3]),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
    .collect();
    xadd(&mut conn, &stream, &forged);
    eventually("the worker to drop the forged task", || {
        stat(&mut conn, "nologger", "forged_tasks") == 1
    });
    let mut pipe = worker.0.stderr.take().unwrap();
    kill(worker.0.id(), libc::SIGTERM);
    // To the end: the worker finishes and exits on SIGTERM.
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    assert!(
        stderr.contains("dropped task") && stderr.contains("does not match this queue's key"),
        "{stderr}"
    );
}

#[test]
fn tls_certificate_checks_are_off_only_with_tls_insecure() {
    let redis = RedisServer::with_args(&[], true);
    // The server's certificate is from the test's own CA, which nothing
    // trusts unless told: `#insecure` is refused, tls_insecure=true works.
    let fragment = format!("{}#insecure", redis.url("queue=insecure"));
    match Pool::builder().cluster(&fragment).build() {
        Err(Error::Config(message)) => assert!(message.contains("tls_insecure=true"), "{message}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    let url = redis.url("queue=insecure&tls_insecure=true");
    let _workers = Workers::start(&url, 1).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(pool.map(square, 0..3).unwrap(), vec![0, 1, 4]);
}

/// `n` items of 1 MiB each.
fn mebibytes(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 1 << 20]).collect()
}

#[test]
fn a_caller_built_before_its_workers_sizes_chunks_for_them_within_max_payload() {
    let redis = RedisServer::start();
    // 4 MB per task: the default chunk of 5 items of 1 MiB would not fit.
    let url = redis.url("queue=early&max_payload=4000000");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(pool.processes(), 1, "no worker yet");
    let _workers = Workers::start(&url, 2).unwrap();
    eventually("the pool to see both workers", || pool.processes() == 2);
    let lengths = pool.map(length, mebibytes(40)).unwrap();
    assert_eq!(lengths, vec![1 << 20; 40]);
    // An explicit chunk size is cut to fit too.
    let lengths = pool.chunksize(10).map(length, mebibytes(12)).unwrap();
    assert_eq!(lengths, vec![1 << 20; 12]);
    // A single item over the limit is still an error.
    assert!(matches!(
        pool.apply(length, vec![0; 5_000_000]),
        Err(Error::PayloadTooLarge { .. })
    ));
}

fn used_memory_peak(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory_peak:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_large_map_keeps_a_bounded_window_of_tasks_in_redis() {
    // PROCPOOL_TEST_MIB=300 reproduces the map; 96 MiB by default.
    let mib: usize = std::env::var("PROCPOOL_TEST_MIB").map_or(96, |v| v.parse().unwrap());
    let (redis, _url, _workers, pool) = cluster("queue=window", 2);
    let mut conn = redis_conn(&redis, "");
    let before = used_memory_peak(&mut conn);
    let started = Instant::now();
    let lengths = pool.map(length, mebibytes(mib)).unwrap();
    assert_eq!(lengths, vec![1 << 20; mib]);
    let peak = used_memory_peak(&mut conn);
    eprintln!(
        "map of {mib} MiB in {:?}: Redis used_memory_peak {:.1} MiB (before: {:.1} MiB)",
        started.elapsed(),
        peak as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    // The default window is 32 MiB of tasks per caller.
    assert!(peak < 64 << 20, "peak {peak} bytes");
}

/// Run as a child process by `an_evicting_redis_is_reported`: builds a
/// cluster pool, which reports on stderr what it finds.
#[test]
#[ignore = "helper: started by another test"]
fn helper_caller_that_builds_a_pool() {
    let url = std::env::var("PROCPOOL_TEST_URL").unwrap();
    Pool::builder().cluster(&url).build().unwrap();
}

#[test]
fn an_evicting_redis_is_reported() {
    for (args, warned) in [
        (
            &["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"][..],
            true,
        ),
        (
            &["--maxmemory", "100mb", "--maxmemory-policy", "volatile-ttl"][..],
            true,
        ),
        (
            &["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"][..],
            false,
        ),
        (&[][..], false),
    ] {
        let redis = RedisServer::with_args(args, false);
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_caller_that_builds_a_pool",
                "--ignored",
                "--nocapture",
            ])
            .env("PROCPOOL_TEST_URL", redis.url("queue=evict"))
            .output()
            .unwrap();
        assert!(output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.contains("may evict procpool's keys") && stderr.contains("noeviction"),
            warned,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn task_timeout_fails_the_task_and_replaces_its_worker() {
    let redis = RedisServer::start();
    let url = redis.url("queue=timeout");
    let workers = Workers::start(&url, 1).unwrap();
    let first = workers.pids()[0];
    let pool = Pool::builder()
        .cluster(&url)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // In time: as usual.
    assert_eq!(pool.apply(slow_square, (3, 10)).unwrap().0, 9);
    let started = Instant::now();
    let mut call = pool.apply_async(slow_square, (4, 600_000)).unwrap();
    match call.get_timeout(Duration::from_secs(30)) {
        Err(Error::TaskTimedOut {
            job,
            first,
            count,
            timeout,
        }) => {
            assert_eq!((job.as_str(), first, count), ("cluster::slow_square", 0, 1));
            assert_eq!(timeout, Duration::from_secs(1));
        }
        other => panic!("expected a task timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually("the worker to be replaced", || workers.restarts() == 1);
    assert!(!running(first), "the worker that ran it is gone");
    assert!(!workers.pids().contains(&first));
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let mut conn = redis_conn(&redis, "");
    assert_eq!(queued(&mut conn, "timeout"), 0, "not run again");
}

/// The consumers of every tasks stream of `queue`, and the members of its worker set.
fn consumers_and_members(conn: &mut redis::Connection, queue: &str) -> (Vec<String>, Vec<String>) {
    let mut consumers = Vec::new();
    for stream in keys(conn, &format!("procpool:{{{queue}}}:tasks:*")) {
        let infos: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("workers")
            .query(conn)
            .unwrap();
        for info in infos {
            if let Some(redis::Value::BulkString(name)) = info.get("name") {
                consumers.push(String::from_utf8(name.clone()).unwrap());
            }
        }
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("procpool:{{{queue}}}:workers"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap();
    (consumers, members)
}

#[test]
fn dead_workers_are_forgotten_after_their_tasks_are_recovered() {
    let redis = RedisServer::start();
    let url = redis.url("queue=forget&visibility=1");
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let dir = scratch_dir("forget");
    let dir_text = dir.to_str().unwrap().to_owned();
    let mut call = pool
        .chunksize(1)
        .map_async(traced_square, (0..12).map(|x| (x, 300, dir_text.clone())))
        .unwrap();
    let mut victim = None;
    eventually("a worker to start a task", || {
        victim = traces(&dir, "started").values().flatten().next().copied();
        victim.is_some()
    });
    let victim = victim.unwrap();
    let mut conn = redis_conn(&redis, "");
    let marker = format!("-{victim}-");
    let (consumers, members) = consumers_and_members(&mut conn, "forget");
    assert!(
        consumers.iter().any(|c| c.contains(&marker)),
        "{consumers:?}"
    );
    assert!(members.iter().any(|m| m.contains(&marker)), "{members:?}");
    kill(victim, libc::SIGKILL);
    let out = call.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(out, (0..12).map(|x| x * x).collect::<Vec<u64>>());
    // Dead after 1 s + 1 s without a heartbeat, then forgotten by the next scan.
    eventually("the dead worker to be forgotten", || {
        let (consumers, members) = consumers_and_members(&mut conn, "forget");
        !consumers
            .iter()
            .chain(&members)
            .any(|name| name.contains(&marker))
    });
    // The live ones stay, in the groups and the worker set.
    let (consumers, members) = consumers_and_members(&mut conn, "forget");
    for pid in workers.pids() {
        let marker = format!("-{pid}-");
        assert!(
            members.iter().any(|m| m.contains(&marker)),
            "{pid}: {members:?}"
        );
        assert!(
            consumers.iter().any(|c| c.contains(&marker)),
            "{pid}: {consumers:?}"
        );
    }
}

#[test]
fn inspect_reports_workers_jobs_dead_consumers_and_callers() {
    let redis = RedisServer::start();
    let url = redis.url("queue=inspect&visibility=1");
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    // Both workers busy for 8 s (longer than the wait below can take), 3
    // more tasks waiting.
    let _call = pool
        .chunksize(1)
        .map_async(slow_square, (0..5).map(|x| (x, 8000)))
        .unwrap();
    let mut conn = redis_conn(&redis, "");
    let stream = keys(&mut conn, "procpool:{inspect}:tasks:*")
        .into_iter()
        .find(|s| queued_in(&mut conn, s) > 0)
        .unwrap();
    // A consumer that no live worker stands for.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("workers")
        .arg("ghost-1-deadbeef")
        .query(&mut conn)
        .unwrap();
    let mut report = None;
    eventually("both workers to report their running task", || {
        let found = procpool::cluster::inspect(&url).unwrap();
        let busy = found.workers.iter().filter(|w| w.running.is_some()).count();
        report = Some(found);
        busy == 2
    });
    let report = report.unwrap();
    assert_eq!(report.queue, "inspect");
    let pids: HashSet<u32> = report.workers.iter().map(|w| w.pid).collect();
    assert_eq!(pids, workers.pids().into_iter().collect());
    for worker in &report.workers {
        assert!(!worker.host.is_empty() && worker.name.starts_with(&worker.host));
        let (job, _) = worker.running.as_ref().unwrap();
        assert_eq!(job, "cluster::slow_square");
    }
    let job = report
        .jobs
        .iter()
        .find(|j| j.job.starts_with("cluster::slow_square: fn("))
        .unwrap();
    assert_eq!((job.waiting, job.taken, job.workers), (3, 2, 2), "{report}");
    let dead: Vec<&str> = report
        .dead_consumers
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(dead, ["ghost-1-deadbeef"]);
    assert_eq!(report.callers.len(), 1);
    let text = report.to_string();
    for needle in [
        "queue `inspect`",
        "workers alive: 2",
        "running cluster::slow_square for",
        "3 waiting, 2 taken, 2 workers",
        "ghost-1-deadbeef: 0 pending",
        "callers connected: 1",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}

#[test]
fn a_redis_cluster_serves_a_queue_through_one_seed_node() {
    let cluster = procpool_tests::RedisCluster::start();
    // Without cluster=true, only the node that owns the queue's slot works:
    // the others refuse its commands (MOVED), with a hint.
    let refuses: Vec<bool> = cluster
        .nodes
        .iter()
        .map(|node| {
            let built = Pool::builder().cluster(node.url("queue=clustered")).build();
            match built {
                Err(err) => {
                    assert!(err.to_string().contains("cluster=true"), "{err}");
                    true
                }
                Ok(_) => false,
            }
        })
        .collect();
    assert_eq!(refuses.iter().filter(|r| **r).count(), 2, "{refuses:?}");
    // The seed is a node that does not own the slot.
    let seed = &cluster.nodes[refuses.iter().position(|r| *r).unwrap()];
    let url = seed.url("queue=clustered&cluster=true&visibility=2");
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(
        pool.map(square, 0..100).unwrap(),
        (0..100).map(|x| x * x).collect::<Vec<u64>>()
    );
    assert_eq!(pool.apply(add, (20, 22)).unwrap(), 42);
    let lazy: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(20)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lazy, (0..20).map(|x| x * x).collect::<Vec<u64>>());
    let report = procpool::cluster::inspect(&url).unwrap();
    assert_eq!(report.workers.len(), 2);
    // Every key of the queue is on the node that owns its hash tag's slot.
    let owners: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|node| {
            let mut conn = redis_conn(node, "");
            keys(&mut conn, "procpool:{clustered}:*").len() as u64
        })
        .collect();
    assert_eq!(owners.iter().filter(|n| **n > 0).count(), 1, "{owners:?}");
    let owner = owners.iter().position(|n| *n > 0).unwrap();
    assert!(
        !refuses[owner],
        "the keys are on the node that owns the slot"
    );
    drop(pool);
    workers.stop().unwrap();
}

/// `redis-cli -p <port> args...`, its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_queue_follows_its_slot_to_another_node_of_a_redis_cluster() {
    let cluster = procpool_tests::RedisCluster::start();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    let slot = redis_cli(ports[0], &["CLUSTER", "KEYSLOT", "procpool:{moving}:x"]);
    let ids: Vec<String> = ports
        .iter()
        .map(|port| redis_cli(*port, &["CLUSTER", "MYID"]))
        .collect();
    // The owner answers a read of the slot (nil: empty output); the others
    // answer MOVED.
    let owner = (0..3)
        .find(|i| redis_cli(ports[*i], &["GET", "procpool:{moving}:x"]).is_empty())
        .unwrap();
    let target = (owner + 1) % 3;
    let url = cluster.nodes[target].url("queue=moving&cluster=true&visibility=2");
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let mut call = pool
        .chunksize(1)
        .map_async(slow_square, (0..150).map(|x| (x, 20)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Move the slot from its owner to the target, keys and all, mid-call.
    let (from, to) = (ports[owner], ports[target]);
    assert_eq!(
        redis_cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &ids[owner]]),
        "OK"
    );
    assert_eq!(
        redis_cli(
            from,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &ids[target]]
        ),
        "OK"
    );
    loop {
        let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1"];
        let to_text = to.to_string();
        args.extend([to_text.as_str(), "", "0", "5000", "KEYS"]);
        args.extend(keys.lines());
        redis_cli(from, &args);
    }
    for port in &ports {
        redis_cli(*port, &["CLUSTER", "SETSLOT", &slot, "NODE", &ids[target]]);
    }
    let out = call.get_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..150).map(|x| x * x).collect::<Vec<u64>>()
    );
    // New calls go to the new owner.
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    let mut conn = redis_conn(&cluster.nodes[target], "");
    assert!(!keys(&mut conn, "procpool:{moving}:*").is_empty());
    drop(pool);
    workers.stop().unwrap();
}

/// A Redis Cluster of three masters, each with a replica: six
/// `redis-server --cluster-enabled yes` made into one with `redis-cli
/// --cluster create ... --cluster-replicas 1`. A master's replica takes
/// over 2 s after the master stops answering (`cluster-node-timeout`).
fn replicated_cluster() -> Vec<RedisServer> {
    procpool_tests::RedisCluster::with_replicas(1, 2000).nodes
}

#[test]
fn a_pool_and_its_workers_carry_on_when_the_node_in_their_url_dies() {
    let mut nodes = replicated_cluster();
    let ports: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
    // The master that owns the queue's slot answers a read of it (nil:
    // empty output); the other masters and the replicas answer MOVED.
    let owner = (0..6)
        .find(|i| redis_cli(ports[*i], &["GET", "procpool:{failover}:x"]).is_empty())
        .unwrap();
    let seeds: Vec<String> = (0..6)
        .filter(|i| *i != owner)
        .map(|i| format!("127.0.0.1:{}", ports[i]))
        .collect();
    // The URL names the owner first: the node that dies. The workers' URL
    // names it alone: they carry on with the nodes the cluster named.
    let lone = format!(
        "redis://127.0.0.1:{}/0?queue=failover&cluster=true&visibility=2",
        ports[owner]
    );
    let url = format!("{lone}&seeds={}", seeds.join(","));
    let workers = Workers::start(&lone, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let mut call = pool
        .chunksize(1)
        .map_async(slow_square, (0..80).map(|x| (x, 50)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nodes[owner].stop();
    let killed = Instant::now();
    let out = call.get_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..80).map(|x| x * x).collect::<Vec<u64>>()
    );
    eprintln!(
        "the map finished {:?} after its node died",
        killed.elapsed()
    );
    // The slot's new owner: a replica that took over.
    let survivors: Vec<usize> = (0..6).filter(|i| *i != owner).collect();
    let new_owner = *survivors
        .iter()
        .find(|i| redis_cli(ports[**i], &["GET", "procpool:{failover}:x"]).is_empty())
        .unwrap_or_else(|| panic!("no node owns the slot"));
    // A pool built now with the same URL finds the cluster through a seed.
    let again = Pool::builder().cluster(&url).build().unwrap();
    assert_eq!(again.map(square, 0..10).unwrap()[9], 81);
    assert_eq!(pool.apply(add, (20, 22)).unwrap(), 42);
    // Both workers beat on the new owner, connected there.
    eventually("both workers to be alive on the new owner", || {
        procpool::cluster::inspect(&url)
            .map(|report| report.workers.len() == 2)
            .unwrap_or(false)
    });
    let clients = redis_cli(ports[new_owner], &["CLIENT", "LIST"]);
    assert!(
        clients.matches("name=procpool-worker-").count() >= 2,
        "{clients}"
    );
    drop((again, pool));
    workers.stop().unwrap();
}

#[test]
fn the_tasks_of_many_killed_workers_are_recovered_in_parallel() {
    // 12 workers each run one 3 s task; 8 of them are killed mid-task.
    // Their 8 tasks go back where every live worker (the 4 left and the
    // supervisor's replacements) can take them, so they finish in about
    // one task's time after the visibility timeout, not one after another
    // as each scanner (a lock of half a visibility timeout, 3 s) took one:
    // 33 s that way.
    const TASK_MS: u64 = 3000;
    let redis = RedisServer::start();
    let url = redis.url("queue=parallel&visibility=6");
    let workers = Workers::start(&url, 12).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let dir = scratch_dir("parallel");
    let dir_text = dir.to_str().unwrap().to_owned();
    let items: Vec<(u64, u64, String)> = (0..12).map(|x| (x, TASK_MS, dir_text.clone())).collect();
    let started_at = Instant::now();
    let mut call = pool.chunksize(1).map_async(traced_square, items).unwrap();
    eventually("each of the 12 workers to start a task", || {
        let pids: HashSet<u32> = traces(&dir, "started")
            .values()
            .flatten()
            .copied()
            .collect();
        pids.len() == 12
    });
    let victims: Vec<u32> = traces(&dir, "started")
        .values()
        .flatten()
        .copied()
        .take(8)
        .collect();
    for victim in &victims {
        kill(*victim, libc::SIGKILL);
    }
    let killed = Instant::now();
    let out = call.get_timeout(Duration::from_secs(120)).unwrap();
    let recovery = killed.elapsed();
    assert_eq!(out, (0..12).map(|x| x * x).collect::<Vec<u64>>());
    eprintln!(
        "8 killed workers' tasks finished {recovery:?} after the kill ({:?} after the map began)",
        started_at.elapsed()
    );
    // Each lost task ran again on a live worker.
    let finished = traces(&dir, "finished");
    assert_eq!(finished.len(), 12, "{finished:?}");
    for pids in finished.values() {
        assert!(
            pids.iter().all(|pid| !victims.contains(pid)),
            "{finished:?}"
        );
    }
    // One task (3 s) after the dead workers' silence (visibility + 1 s:
    // 7 s), a scan (every 3 s) and a heartbeat of the takers (every 2 s):
    // 10 to 15 s. Bounded generously for a busy machine, and still far
    // below 8 tasks in turn.
    assert!(
        recovery < Duration::from_secs(22),
        "the lost tasks took {recovery:?}"
    );
    drop(pool);
    workers.stop().unwrap();
}

/// The pids `inspect` lists alive, and those it shows running a task.
fn inspected_pids(url: &str) -> (HashSet<u32>, HashSet<u32>) {
    let report = procpool::cluster::inspect(url).unwrap();
    let alive = report.workers.iter().map(|w| w.pid).collect();
    let busy = report
        .workers
        .iter()
        .filter(|w| w.running.is_some())
        .map(|w| w.pid)
        .collect();
    (alive, busy)
}

#[test]
fn inspect_is_current_about_busy_timed_out_and_killed_workers() {
    // Heartbeats every 10 s (a third of the visibility timeout): what
    // inspect shows must not wait for them.
    let redis = RedisServer::start();
    let url = redis.url("queue=current&visibility=30");
    let workers = Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    // A worker busy with a 3 s task shows as busy while it runs, and idle
    // once its result is in.
    let started = Instant::now();
    let mut call = pool.apply_async(slow_square, (1, 3000)).unwrap();
    let mut busy = HashSet::new();
    eventually("inspect to show the worker running the task", || {
        busy = inspected_pids(&url).1;
        !busy.is_empty()
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "seen only after the task"
    );
    let (_, pid) = call.get_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(busy, HashSet::from([pid]));
    assert!(inspected_pids(&url).1.is_empty(), "still shown running");
    // A worker that exited on `task_timeout` is neither alive nor running.
    let timed = Pool::builder()
        .cluster(&url)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut call = timed.apply_async(slow_square, (2, 8000)).unwrap();
    let mut busy = HashSet::new();
    eventually("the task to run", || {
        busy = inspected_pids(&url).1;
        !busy.is_empty()
    });
    assert!(matches!(
        call.get_timeout(Duration::from_secs(30)),
        Err(Error::TaskTimedOut { .. })
    ));
    let timed_out = busy.into_iter().next().unwrap();
    eventually("the timed-out worker to leave the report", || {
        let (alive, busy) = inspected_pids(&url);
        !alive.contains(&timed_out) && busy.is_empty()
    });
    // A worker killed with SIGKILL leaves it within seconds (its
    // supervisor says so), not after the visibility timeout (31 s).
    eventually("the replacement to be listed", || {
        inspected_pids(&url).0.len() == 2
    });
    let victim = workers.pids()[0];
    kill(victim, libc::SIGKILL);
    let killed = Instant::now();
    eventually("the killed worker to leave the report", || {
        !inspected_pids(&url).0.contains(&victim)
    });
    eprintln!(
        "a killed worker left the report {:?} after SIGKILL",
        killed.elapsed()
    );
    drop((timed, pool));
    workers.stop().unwrap();
}

#[test]
fn inspect_shows_the_oldest_waiting_task_each_callers_backlog_and_redis_memory() {
    // No worker; a window of 1000 bytes: one task of 600 bytes in Redis,
    // the other 19 waiting in the caller.
    let redis = RedisServer::start();
    let url = redis.url("queue=backlog&window=1000");
    let pool = Pool::builder().cluster(&url).build().unwrap();
    let _call = pool
        .chunksize(1)
        .map_async(length, (0..20).map(|_| vec![7u8; 600]))
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut report = None;
    eventually("the job and the caller's backlog to be reported", || {
        let found = procpool::cluster::inspect(&url).unwrap();
        let ready = found.jobs.iter().any(|job| {
            job.oldest_waiting
                .is_some_and(|age| age >= Duration::from_secs(1))
        }) && found.callers.iter().any(|c| c.backlog == 19);
        report = Some(found);
        ready
    });
    let report = report.unwrap();
    let job = &report.jobs[0];
    assert_eq!((job.waiting, job.taken, job.workers), (1, 0, 0), "{report}");
    assert!(job.oldest_waiting.unwrap() < Duration::from_secs(60));
    let caller = &report.callers[0];
    assert_eq!(caller.host.as_deref(), Some(host.trim()));
    assert_eq!((caller.pid, caller.in_redis), (std::process::id(), 1));
    assert!(
        report.used_memory.is_some_and(|bytes| bytes > 100_000),
        "{report}"
    );
    let text = report.to_string();
    for needle in [
        "1 waiting, 0 taken, 0 workers, oldest waiting ",
        &format!("{} pid {}", host.trim(), std::process::id()),
        "1 tasks in Redis, 19 waiting in the caller",
        "redis memory: ",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}
