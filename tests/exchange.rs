//! The exchange half of multiprocessing: Queue, Pipe, Event and Shared
//! between real processes, including the hostile cases (a producer killed
//! mid-put, waits nobody can end, a cluster pool).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procpool::{Connection, Error, Event, Pipe, Pool, Process, Queue, Shared, pool_job};
use procpool_tests::RedisServer;
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(30);

#[pool_job]
fn produce(queue: Queue<u64>, n: u64) {
    for i in 0..n {
        queue.put(i).unwrap();
    }
}

#[pool_job]
fn produce_tagged(queue: Queue<(u32, u64)>, producer: u32, n: u64) {
    for i in 0..n {
        queue.put((producer, i)).unwrap();
    }
}

/// Puts 0, 1, 2, ... until killed, each value `pad` bytes long.
#[pool_job]
fn put_for_ever(queue: Queue<(u64, Vec<u8>)>, pad: usize) {
    let mut i = 0u64;
    loop {
        queue.put((i, vec![(i % 251) as u8; pad])).unwrap();
        i += 1;
    }
}

#[test]
fn a_process_streams_through_a_queue() {
    let queue = Queue::new().unwrap();
    let mut process = Process::spawn(produce, (queue.clone(), 1000)).unwrap();
    let got: Vec<u64> = (0..1000)
        .map(|_| queue.get_timeout(LONG).unwrap())
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    process.join().unwrap();
}

#[test]
fn pool_jobs_put_into_one_queue_in_order_per_producer() {
    let queue = Queue::new().unwrap();
    let pool = Pool::with_processes(2).unwrap();
    let args: Vec<_> = (0..6).map(|p| (queue.clone(), p, 200u64)).collect();
    let done = pool.starmap_async(produce_tagged, args).unwrap();
    let mut per_producer: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for _ in 0..6 * 200 {
        let (producer, i) = queue.get_timeout(LONG).unwrap();
        per_producer.entry(producer).or_default().push(i);
    }
    done.get().unwrap();
    assert_eq!(per_producer.len(), 6);
    for values in per_producer.values() {
        assert_eq!(values, &(0..200).collect::<Vec<_>>());
    }
}

/// Kills a producer in a tight put loop once `seen` values arrived; the
/// values are a clean prefix, and the queue goes on working.
fn killed_producer(pad: usize, seen: u64) {
    let queue = Queue::new().unwrap();
    let mut process = Process::spawn(put_for_ever, (queue.clone(), pad)).unwrap();
    let mut next = 0u64;
    let check = |(i, bytes): (u64, Vec<u8>), next: &mut u64| {
        assert_eq!(i, *next, "a gap or a repeat in the values");
        assert_eq!(bytes, vec![(i % 251) as u8; pad], "a damaged value {i}");
        *next += 1;
    };
    while next < seen {
        check(queue.get_timeout(LONG).unwrap(), &mut next);
    }
    process.kill();
    assert!(process.join().is_err());
    // Whatever it had put before it died, whole, then nothing: the get
    // that finds the queue empty fails, as no other process holds it.
    let started = Instant::now();
    loop {
        match queue.get() {
            Ok(value) => check(value, &mut next),
            Err(Error::Disconnected(why)) => {
                assert!(why.contains("no other live process"), "{why}");
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(started.elapsed() < LONG);
    // The queue still works, for this process and for a new producer.
    queue.put((7, vec![])).unwrap();
    assert_eq!(queue.get().unwrap(), (7, vec![]));
    let again = Process::spawn(put_for_ever, (queue.clone(), pad)).unwrap();
    let mut next = 0;
    while next < 10 {
        check(queue.get_timeout(LONG).unwrap(), &mut next);
    }
    again.kill();
}

#[test]
fn a_producer_killed_mid_put_leaves_a_clean_prefix_and_a_working_queue() {
    killed_producer(0, 20_000);
}

#[test]
fn a_producer_of_large_values_killed_mid_put_leaves_a_clean_prefix() {
    // 100 KiB each: every value rides in a memfd beside its datagram.
    killed_producer(100 << 10, 50);
}

#[pool_job]
fn produce_and_report(queue: Queue<u64>, progress: Queue<u64>, n: u64) {
    for i in 0..n {
        queue.put(i).unwrap();
        progress.put(i).unwrap();
    }
}

#[test]
fn a_bounded_queue_holds_its_producer_back() {
    let queue = Queue::bounded(4).unwrap();
    let progress = Queue::new().unwrap();
    let mut process =
        Process::spawn(produce_and_report, (queue.clone(), progress.clone(), 100)).unwrap();
    // However long we wait, the producer cannot get more than the bound
    // (and the one put that waits for room) ahead of us.
    std::thread::sleep(Duration::from_millis(500));
    let mut returned = 0;
    while progress.get_timeout(Duration::from_millis(100)).is_ok() {
        returned += 1;
    }
    assert!((1..=5).contains(&returned), "{returned} puts returned");
    let got: Vec<u64> = (0..100).map(|_| queue.get_timeout(LONG).unwrap()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    process.join().unwrap();
}

#[pool_job]
fn put_into_a_full_queue(queue: Queue<u64>) -> String {
    queue.put(1).unwrap();
    match queue.put(2) {
        Err(Error::Disconnected(why)) => why,
        other => format!("unexpected: {other:?}"),
    }
}

#[test]
fn a_put_nobody_can_make_room_for_is_an_error_not_a_hang() {
    let queue = Queue::bounded(1).unwrap();
    let mut process = Process::spawn(put_into_a_full_queue, queue).unwrap();
    // This process dropped its handle: no other process can get.
    let why = process.join().unwrap();
    assert!(
        why.contains("full") && why.contains("no other live process"),
        "{why}"
    );
}

#[test]
fn a_get_after_the_producers_are_gone_is_an_error_not_a_hang() {
    let queue = Queue::new().unwrap();
    let pool = Pool::with_processes(2).unwrap();
    pool.starmap(produce, [(queue.clone(), 3), (queue.clone(), 3)])
        .unwrap();
    for _ in 0..6 {
        queue.get().unwrap();
    }
    let started = Instant::now();
    assert!(matches!(queue.get(), Err(Error::Disconnected(_))));
    assert!(started.elapsed() < LONG);
    // While a producer runs, the get waits for it.
    let mut process = Process::spawn(produce, (queue.clone(), 1)).unwrap();
    assert_eq!(queue.get().unwrap(), 0);
    process.join().unwrap();
}

#[test]
fn timeouts_end_waits_with_nothing_taken() {
    let queue = Queue::<u8>::new().unwrap();
    let _other = queue.clone();
    assert!(matches!(
        queue.get_timeout(Duration::from_millis(50)),
        Err(Error::Timeout(d)) if d == Duration::from_millis(50)
    ));
    let (a, _b) = Pipe::new::<u8>().unwrap();
    assert!(matches!(
        a.recv_timeout(Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
    let event = Event::new().unwrap();
    assert!(!event.wait_timeout(Duration::from_millis(50)));
}

#[pool_job]
fn echo_doubled(end: Connection<Vec<u64>>) -> usize {
    let mut echoed = 0;
    while let Ok(values) = end.recv() {
        end.send(values.iter().map(|v| v * 2).collect()).unwrap();
        echoed += 1;
    }
    echoed
}

#[pool_job]
fn die_with(end: Connection<Vec<u64>>) {
    let _end = end;
    std::process::abort();
}

#[test]
fn a_pipe_talks_both_ways_and_its_close_ends_the_other_side() {
    let (here, there) = Pipe::new().unwrap();
    let mut process = Process::spawn(echo_doubled, there).unwrap();
    for n in 0..20u64 {
        here.send((0..n).collect()).unwrap();
        assert_eq!(
            here.recv_timeout(LONG).unwrap(),
            (0..n).map(|v| v * 2).collect::<Vec<_>>()
        );
    }
    drop(here);
    assert_eq!(process.join().unwrap(), 20);
    // The other end's process dies: recv fails instead of waiting for ever.
    let (here, there) = Pipe::new().unwrap();
    let mut process = Process::spawn(die_with, there).unwrap();
    let started = Instant::now();
    assert!(matches!(here.recv(), Err(Error::Disconnected(_))));
    assert!(started.elapsed() < LONG);
    assert!(matches!(here.send(vec![1]), Err(Error::Disconnected(_))));
    assert!(process.join().is_err());
}

#[pool_job]
fn spin_until(stop: Event, started: Queue<u32>) -> u64 {
    started.put(std::process::id()).unwrap();
    let mut rounds = 0;
    while !stop.wait_timeout(Duration::from_millis(1)) {
        rounds += 1;
    }
    rounds
}

#[test]
fn an_event_stops_jobs_in_other_processes() {
    let stop = Event::new().unwrap();
    let started = Queue::new().unwrap();
    let pool = Pool::with_processes(2).unwrap();
    let mut running = pool
        .starmap_async(
            spin_until,
            [
                (stop.clone(), started.clone()),
                (stop.clone(), started.clone()),
            ],
        )
        .unwrap();
    for _ in 0..2 {
        started.get_timeout(LONG).unwrap();
    }
    assert!(!stop.is_set());
    stop.set();
    assert_eq!(running.get_timeout(LONG).unwrap().len(), 2);
    stop.clear();
    assert!(!stop.is_set());
}

#[pool_job]
fn sum_range(table: Shared<[u64]>, from: usize, to: usize) -> u64 {
    table[from..to].iter().sum()
}

/// Counts the decodes of a `Lookup` in this process.
static DECODES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, PartialEq)]
struct Lookup(BTreeMap<String, u64>);

impl Serialize for Lookup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Lookup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        BTreeMap::deserialize(d).map(Lookup)
    }
}

#[pool_job]
fn look_up(table: Shared<Lookup>, key: String) -> (u32, usize, Option<u64>) {
    (
        std::process::id(),
        DECODES.load(Ordering::SeqCst),
        table.0.get(&key).copied(),
    )
}

#[test]
fn shared_data_reaches_pool_and_process_jobs() {
    let numbers: Vec<u64> = (0..100_000).collect();
    let table = Shared::from_slice(&numbers).unwrap();
    let pool = Pool::with_processes(2).unwrap();
    let sums = pool
        .starmap(
            sum_range,
            (0..10).map(|i| (table.clone(), i * 10_000, (i + 1) * 10_000)),
        )
        .unwrap();
    assert_eq!(sums.iter().sum::<u64>(), numbers.iter().sum::<u64>());
    let mut alone = Process::spawn(sum_range, (table.clone(), 0, 3)).unwrap();
    assert_eq!(alone.join().unwrap(), 3);
    assert_eq!(table.len(), 100_000);
}

#[test]
fn a_shared_value_is_decoded_once_per_worker() {
    let map: BTreeMap<String, u64> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
    let table = Shared::new(Lookup(map)).unwrap();
    let pool = Pool::with_processes(2).unwrap();
    let found = pool
        .chunksize(1)
        .starmap(look_up, (0..40).map(|i| (table.clone(), format!("k{i}"))))
        .unwrap();
    for (i, (_, decodes, value)) in found.iter().enumerate() {
        assert_eq!(*value, Some(i as u64));
        assert_eq!(*decodes, 1, "decoded more than once in one worker");
    }
    assert_eq!(
        DECODES.load(Ordering::SeqCst),
        0,
        "the caller keeps its own value"
    );
    assert_eq!(table.0.len(), 1000);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    depth: u32,
    tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Awkward {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    skipped: Option<u32>,
    #[serde(flatten)]
    inner: Inner,
    maybe: Option<Option<u8>>,
    json: serde_json::Value,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
}

fn awkward_values() -> Vec<Awkward> {
    let base = Awkward {
        skipped: None,
        inner: Inner {
            depth: 3,
            tag: Some("x".into()),
        },
        maybe: Some(None),
        json: serde_json::json!({"a": [1, 2.5, null, {"b": "c"}], "n": -7}),
        blob: vec![],
    };
    vec![
        base.clone(),
        Awkward {
            skipped: Some(9),
            maybe: None,
            ..base.clone()
        },
        Awkward {
            maybe: Some(Some(1)),
            // 10 MiB: through a sealed memfd beside the datagram.
            blob: (0..10 << 20).map(|i| (i % 253) as u8).collect(),
            ..base
        },
    ]
}

#[pool_job]
fn send_awkward(queue: Queue<Awkward>, end: Connection<Awkward>) {
    for value in awkward_values() {
        queue.put(value.clone()).unwrap();
        end.send(value).unwrap();
    }
}

#[test]
fn values_cross_exactly_through_queues_and_pipes() {
    let queue = Queue::new().unwrap();
    let (here, there) = Pipe::new().unwrap();
    let mut process = Process::spawn(send_awkward, (queue.clone(), there)).unwrap();
    for expected in awkward_values() {
        assert_eq!(queue.get_timeout(LONG).unwrap(), expected);
        assert_eq!(here.recv_timeout(LONG).unwrap(), expected);
    }
    process.join().unwrap();
}

#[pool_job]
fn takes_a_queue(queue: Queue<u8>) -> u8 {
    queue.get().unwrap_or(0)
}

#[pool_job]
fn takes_an_event(event: Event) -> bool {
    event.is_set()
}

#[pool_job]
fn takes_shared(table: Shared<[u8]>) -> usize {
    table.len()
}

#[pool_job]
fn takes_a_connection(end: Connection<u8>) -> u8 {
    end.recv().unwrap_or(0)
}

#[test]
fn a_cluster_pool_refuses_handles_at_submit() {
    let redis = RedisServer::start();
    let pool = Pool::builder().cluster(redis.url("")).build().unwrap();
    fn refused<T: std::fmt::Debug>(outcome: Result<T, Error>) {
        match outcome {
            Err(Error::Misuse(why)) => assert!(why.contains("cluster pool"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    refused(pool.apply(takes_a_queue, Queue::new().unwrap()));
    refused(pool.apply(takes_an_event, Event::new().unwrap()));
    refused(pool.apply(takes_shared, Shared::from_slice(&[1u8]).unwrap()));
    let (end, _other) = Pipe::new().unwrap();
    refused(pool.map(takes_a_connection, [end]));
    let queue = Queue::<u8>::new().unwrap();
    let mut refused_in_imap = pool.imap(takes_a_queue, [queue]);
    assert!(matches!(
        refused_in_imap.next(),
        Some(Err(Error::Misuse(_)))
    ));
}

#[test]
fn handles_do_not_go_where_their_descriptors_cannot() {
    let queue = Queue::<u8>::new().unwrap();
    let err = serde_json::to_string(&queue).unwrap_err();
    assert!(err.to_string().contains("crosses only"), "{err}");
    let built = Pool::builder()
        .processes(1)
        .initializer(takes_a_queue, queue.clone())
        .build();
    match built {
        Err(Error::Serialization { message, .. }) => assert!(message.contains("crosses only")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[pool_job]
fn returns_a_queue(_: u8) -> Queue<u8> {
    Queue::new().unwrap()
}

#[test]
fn a_job_cannot_return_a_handle() {
    let pool = Pool::with_processes(1).unwrap();
    match pool.apply(returns_a_queue, 0) {
        Err(Error::Serialization { message, .. }) => {
            assert!(message.contains("crosses only"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The worker goes on.
    assert!(!pool.apply(takes_an_event, Event::new().unwrap()).unwrap());
}

/// `(anonymous KiB, PSS KiB)` of this process after reading every item.
#[pool_job]
fn read_all_and_measure(table: Shared<[u64]>) -> (u64, u64, u64) {
    let sum = table.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (sum, field("Anonymous:"), field("Pss:"))
}

#[pool_job]
fn hold_on(_: u8) -> u8 {
    std::thread::sleep(Duration::from_millis(300));
    0
}

#[test]
fn four_workers_read_256_mib_without_copies_of_their_own() {
    let items: Vec<u64> = (0..(256u64 << 20) / 8).collect();
    let expected = items.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    let table = Shared::from_slice(&items).unwrap();
    drop(items);
    let pool = Pool::with_processes(4).unwrap();
    // One task per worker: keep all four busy while they measure.
    let _ = pool.map(hold_on, [0, 0, 0, 0]);
    let measured = pool
        .chunksize(1)
        .map(read_all_and_measure, vec![table.clone(); 4])
        .unwrap();
    for (sum, anonymous_kib, pss_kib) in measured {
        assert_eq!(sum, expected);
        eprintln!("worker: anonymous {anonymous_kib} KiB, PSS {pss_kib} KiB");
        assert!(
            anonymous_kib < 64 << 10,
            "a worker holds {anonymous_kib} KiB of its own"
        );
    }
}

/// How many of procpool's shared values process `pid` has mapped or open.
fn shared_values_held_by(pid: u32) -> usize {
    let is_value = |name: &str| {
        name.contains("memfd:procpool-shared") || name.contains("memfd:procpool-value")
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mapped = maps.lines().filter(|line| is_value(line)).count();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| is_value(&target.to_string_lossy()))
                .count()
        })
        .unwrap_or(0);
    mapped + open
}

#[pool_job]
fn table_len(table: Shared<[u64]>) -> usize {
    table.len()
}

/// A worker keeps a shared value it was given for its next tasks, but
/// lets go of it once the caller dropped its last handle, while it waits,
/// without another task.
#[test]
fn an_idle_worker_lets_go_of_a_shared_value_its_creator_dropped() {
    let pool = Pool::with_processes(1).unwrap();
    let table = Shared::from_slice(&[3u64; 100_000]).unwrap();
    assert_eq!(pool.apply(table_len, table.clone()).unwrap(), 100_000);
    assert_eq!(pool.apply(table_len, table.clone()).unwrap(), 100_000);
    let pid = pool.stats().workers[0].pid.unwrap();
    assert!(shared_values_held_by(pid) > 0, "the worker keeps the table");
    drop(table);
    let start = Instant::now();
    while shared_values_held_by(pid) > 0 {
        assert!(
            start.elapsed() < LONG,
            "the idle worker {pid} still holds the dropped table"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It still works, and the pid is the same worker's.
    assert_eq!(pool.stats().workers[0].pid, Some(pid));
    let again = Shared::from_slice(&[1u64; 10]).unwrap();
    assert_eq!(pool.apply(table_len, again).unwrap(), 10);
}
