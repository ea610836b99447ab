//! How often a large payload is copied between the caller, its worker and
//! their shared memory, pinned with the runtime's test counters: a byte
//! string crosses each way with one copy on each side, and stays whole
//! through queues and retries.

// linkme's registry entry of a #[pool_job] (see the crate's top).
#![allow(unsafe_code)]

use crate::{Pool, pool_job};

#[pool_job]
fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[pool_job]
fn echo_pair(pair: (u8, Vec<u8>)) -> (u8, Vec<u8>) {
    pair
}

/// Runs `call` until it ran on this thread (an `apply` on an idle
/// worker does; one that met its worker busy ran on the slot's thread),
/// and returns how many bytes it copied out of replies in place and how
/// many replies it copied out whole, on this thread.
fn copies_here(mut call: impl FnMut()) -> (usize, usize) {
    for _ in 0..50 {
        let (bytes, whole) = (
            crate::sys::bytes_copied_out_here(),
            crate::sys::whole_replies_copied_here(),
        );
        call();
        let counted = (
            crate::sys::bytes_copied_out_here() - bytes,
            crate::sys::whole_replies_copied_here() - whole,
        );
        if counted != (0, 0) {
            return counted;
        }
    }
    panic!("no apply ran on the caller's thread in 50 tries");
}

/// A reply of bytes goes from the worker's region straight into the
/// caller's value, one copy; a reply of another type is copied out
/// whole first (to be decoded while the worker runs its next task).
#[test]
fn a_pools_reply_of_bytes_is_copied_once_into_the_value() {
    const SIZE: usize = 4 << 20;
    let pool = Pool::with_processes(1).unwrap();
    let payload = vec![5u8; SIZE];
    let (bytes, whole) = copies_here(|| {
        assert!(pool.apply(echo_bytes, payload.clone()).unwrap() == payload);
    });
    assert_eq!((bytes, whole), (SIZE, 0));
    let (_, whole) = copies_here(|| {
        let pair = pool.apply(echo_pair, (1, payload.clone())).unwrap();
        assert!(pair.1 == payload);
    });
    assert_eq!(whole, 1);
}

/// A blocking `apply` of a large byte string writes the value's bytes
/// once, from the caller's own value into the worker's request region:
/// no encoded copy of the item is made first. (On the caller's thread:
/// the bytes written into regions are the chunk's, and the only large
/// allocation is the reply's value.)
#[test]
fn a_large_apply_argument_is_written_once_into_the_region() {
    const SIZE: usize = 4 << 20;
    let pool = Pool::with_processes(1).unwrap();
    let payload = vec![3u8; SIZE];
    for _ in 0..50 {
        let written = crate::sys::bytes_written_here();
        let mut reply = Vec::new();
        let allocated = crate::test_alloc::allocated_during(|| {
            reply = pool.apply(echo_bytes, &payload).unwrap();
        });
        let written = crate::sys::bytes_written_here() - written;
        assert!(reply == payload);
        if written == 0 {
            // The slot's thread ran it (its worker was not idle yet).
            continue;
        }
        assert!(
            (SIZE..SIZE + 16).contains(&written),
            "{written} bytes written for {SIZE}"
        );
        assert!(
            allocated < SIZE + (64 << 10),
            "{allocated} bytes allocated for a reply of {SIZE}"
        );
        return;
    }
    panic!("no apply ran on the caller's thread in 50 tries");
}

#[pool_job]
fn echo_floats(floats: Vec<f64>) -> Vec<f64> {
    floats
}

#[pool_job]
fn ramp(n: u32) -> Vec<i32> {
    (0..n as i32).map(|i| i * -3).collect()
}

/// A vector of numbers crosses like a byte string: its memory is written
/// once into the request region from the caller's value, and the reply is
/// copied once out of the reply region into the result's own buffer, with
/// no private copy of the whole reply. (Before, each `f64` was tagged: 9
/// bytes written and read number by number, into a private copy first.)
#[test]
fn a_vector_of_numbers_crosses_with_one_copy_each_way() {
    const LEN: usize = 512 << 10;
    let pool = Pool::with_processes(1).unwrap();
    let payload: Vec<f64> = (0..LEN).map(|i| i as f64 / 7.0).collect();
    for _ in 0..50 {
        let written = crate::sys::bytes_written_here();
        let (copied, whole) = (
            crate::sys::bytes_copied_out_here(),
            crate::sys::whole_replies_copied_here(),
        );
        let reply = pool.apply(echo_floats, &payload).unwrap();
        let written = crate::sys::bytes_written_here() - written;
        let copied = crate::sys::bytes_copied_out_here() - copied;
        let whole = crate::sys::whole_replies_copied_here() - whole;
        assert!(reply == payload);
        if written == 0 {
            // The slot's thread ran it (its worker was not idle yet).
            continue;
        }
        assert!(
            (8 * LEN..8 * LEN + 16).contains(&written),
            "{written} bytes written for {}",
            8 * LEN
        );
        assert_eq!((copied, whole), (8 * LEN, 0));
        // A map of vectors, some empty: every value exact.
        let got = pool.map(ramp, [0, 3, 100_000, 0, 7]).unwrap();
        let expected: Vec<Vec<i32>> = [0, 3, 100_000, 0, 7]
            .map(|n: i32| (0..n).map(|i| i * -3).collect())
            .to_vec();
        assert!(got == expected);
        return;
    }
    panic!("no apply ran on the caller's thread in 50 tries");
}

/// The bytes' length and sum, after the worker died on the first try
/// of each payload (named by its first 8 bytes).
#[pool_job]
fn sum_after_a_crash(bytes: Vec<u8>) -> (usize, u64) {
    let id = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let mark = std::env::temp_dir().join(format!("procpool-crash-once-{id:x}"));
    if std::fs::File::create_new(&mark).is_ok() {
        std::process::abort();
    }
    let _ = std::fs::remove_file(&mark);
    (bytes.len(), bytes.iter().map(|&b| u64::from(b)).sum())
}

/// A large argument sent from the caller's value and not kept by the
/// task (which has no retries left) is still whole where the task goes
/// back to the queue or runs again: from many threads at once, with a
/// worker that dies on each payload's first try.
#[test]
fn large_applies_keep_their_whole_argument_through_queues_and_retries() {
    let pool = Pool::builder().processes(2).retries(1).build().unwrap();
    let seed = u64::from(std::process::id()) << 32;
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let pool = pool.clone();
            scope.spawn(move || {
                for round in 0..3u64 {
                    let id = seed | (thread << 8) | round;
                    let mut payload = id.to_le_bytes().to_vec();
                    payload.extend((0..300_000u32).map(|i| (i % 251) as u8));
                    let sum = payload.iter().map(|&b| u64::from(b)).sum();
                    let got = pool.apply(sum_after_a_crash, &payload).unwrap();
                    assert_eq!(got, (payload.len(), sum));
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.workers_died, stats.tasks_retried),
        (12, 12),
        "{stats:?}"
    );
    let pool = Pool::with_processes(1).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4u8 {
            let pool = pool.clone();
            scope.spawn(move || {
                for round in 0..5u8 {
                    let payload = vec![thread ^ round; 200_000 + usize::from(round)];
                    assert!(pool.apply(echo_bytes, &payload).unwrap() == payload);
                }
            });
        }
    });
}

#[pool_job]
fn blob_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// A map's large byte strings, given up by the caller, travel with
/// their own buffers: the caller's thread makes no encoded copy of them
/// (the only copy is the driver's, into the worker's region), with a
/// chunk size of 1 and with the pool's own chunks; borrowed items are
/// encoded as before.
#[test]
fn a_maps_owned_byte_strings_are_not_copied_by_the_caller() {
    const SIZE: usize = 2 << 20;
    let pool = Pool::with_processes(2).unwrap();
    let blobs = || (0..6).map(|i| vec![i as u8; SIZE + i]).collect::<Vec<_>>();
    let lens: Vec<usize> = (0..6).map(|i| SIZE + i).collect();
    for chunked in [pool.chunksize(1), pool.chunksize(None)] {
        let input = blobs();
        let mut got = Vec::new();
        let allocated = crate::test_alloc::allocated_during(|| {
            got = chunked.map(blob_len, input).unwrap();
        });
        assert_eq!(got, lens);
        assert!(allocated < SIZE / 2, "{allocated} bytes allocated");
    }
    let input = blobs();
    let allocated = crate::test_alloc::allocated_during(|| {
        assert_eq!(pool.chunksize(1).map(blob_len, &input).unwrap(), lens);
    });
    assert!(allocated > 6 * SIZE, "{allocated} bytes allocated");
    let texts: Vec<String> = (0..3).map(|i| "t".repeat(SIZE + i)).collect();
    let got = pool.map(echo_text, texts.clone()).unwrap();
    assert!(got == texts);
}

#[pool_job]
fn echo_text(text: String) -> String {
    text
}

/// A task that carries its value's buffer apart keeps it whole when its
/// worker dies and it runs again.
#[test]
fn an_owned_byte_string_is_whole_when_its_task_runs_again() {
    let pool = Pool::builder().processes(2).retries(1).build().unwrap();
    let seed = (u64::from(std::process::id()) << 32) | 0xbeef_0000;
    let payloads: Vec<Vec<u8>> = (0..5u64)
        .map(|i| {
            let mut payload = (seed | i).to_le_bytes().to_vec();
            payload.extend((0..200_000u32).map(|j| (j % 253) as u8));
            payload
        })
        .collect();
    let expected: Vec<(usize, u64)> = payloads
        .iter()
        .map(|p| (p.len(), p.iter().map(|&b| u64::from(b)).sum()))
        .collect();
    let got = pool.chunksize(1).map(sum_after_a_crash, payloads).unwrap();
    assert_eq!(got, expected);
    let stats = pool.stats();
    assert_eq!(
        (stats.workers_died, stats.tasks_retried),
        (5, 5),
        "{stats:?}"
    );
}

/// A `Process`'s result of bytes goes from its region straight into the
/// value too; a result of another type is copied out whole first.
#[test]
fn a_process_result_of_bytes_is_copied_once_into_the_value() {
    const SIZE: usize = 3 << 20;
    let payload = vec![7u8; SIZE];
    let (bytes, whole) = (
        crate::sys::bytes_copied_out_here(),
        crate::sys::whole_replies_copied_here(),
    );
    let mut process = crate::Process::spawn(echo_bytes, payload.clone()).unwrap();
    assert!(process.join().unwrap() == payload);
    assert_eq!(
        (
            crate::sys::bytes_copied_out_here() - bytes,
            crate::sys::whole_replies_copied_here() - whole
        ),
        (SIZE, 0)
    );
    let mut process = crate::Process::spawn(echo_pair, (2, payload.clone())).unwrap();
    assert!(process.join().unwrap() == (2, payload));
    assert_eq!(crate::sys::whole_replies_copied_here() - whole, 1);
}
