//! Queue, Pipe, Event and Shared leave nothing behind: no descriptor, no
//! memfd, no mapping, no `/dev/shm` entry, in the caller or in a worker,
//! once the last handle is dropped.
//!
//! One test in its own binary, so no other test disturbs the counts.

use std::time::Duration;

use procpool::{Connection, Event, Pipe, Pool, Process, Queue, Shared, pool_job};

fn fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some(format!("{:?} -> {}", entry.file_name(), target.display()))
        })
        .collect();
    fds.sort();
    fds
}

/// procpool's memfds mapped or open in this process.
fn procpool_memory() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mapped = maps
        .lines()
        .filter(|l| l.contains("memfd:procpool-shared") || l.contains("memfd:procpool-value"))
        .count();
    let open = fds()
        .iter()
        .filter(|fd| {
            fd.contains("memfd:procpool-shared")
                || fd.contains("memfd:procpool-queue")
                || fd.contains("memfd:procpool-event")
                || fd.contains("memfd:procpool-value")
        })
        .count();
    mapped + open
}

fn dev_shm() -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[pool_job]
fn use_all(
    queue: Queue<Vec<u8>>,
    end: Connection<u8>,
    event: Event,
    table: Shared<[u32]>,
    value: Shared<String>,
) -> usize {
    queue.put(vec![7; 100 << 10]).unwrap();
    end.send(1).unwrap();
    event.set();
    table.len() + value.len()
}

/// What this worker still holds of procpool's memory.
#[pool_job]
fn worker_memory(_: u8) -> usize {
    procpool_memory()
}

#[test]
fn the_last_handle_frees_everything_everywhere() {
    let pool = Pool::with_processes(1).unwrap();
    // Warm up: the pool's own descriptors, the worker template.
    pool.apply(worker_memory, 0).unwrap();
    Process::spawn(worker_memory, 0).unwrap().join().unwrap();
    let before = fds();
    let shm_before = dev_shm();
    for round in 0..3 {
        let queue = Queue::new().unwrap();
        let (here, there) = Pipe::new().unwrap();
        let event = Event::new().unwrap();
        let table = Shared::from_slice(&[1u32; 10_000]).unwrap();
        let value = Shared::new("shared text".to_string()).unwrap();
        let args = (
            queue.clone(),
            there,
            event.clone(),
            table.clone(),
            value.clone(),
        );
        let got = if round % 2 == 0 {
            pool.apply(use_all, args).unwrap()
        } else {
            Process::spawn(use_all, args).unwrap().join().unwrap()
        };
        assert_eq!(got, 10_000 + 11);
        assert_eq!(queue.get().unwrap().len(), 100 << 10);
        assert_eq!(here.recv().unwrap(), 1);
        assert!(event.is_set());
        // A value left in the queue goes with it.
        queue.put(vec![1; 1 << 20]).unwrap();
    }
    assert_eq!(procpool_memory(), 0, "{:#?}", fds());
    assert_eq!(fds(), before);
    assert_eq!(dev_shm(), shm_before);
    // The worker let go of its cached Shared values at its next task.
    assert_eq!(pool.apply(worker_memory, 0).unwrap(), 0);
    pool.close();
    pool.join().unwrap();
    std::thread::sleep(Duration::from_millis(10));
}
