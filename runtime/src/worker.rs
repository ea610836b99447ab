//! Running jobs inside a worker, for both worker loops (local and cluster):
//! look a job up in the registry, decode its chunk, run each item with
//! panics caught, encode each outcome.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::failure::{Failure, FailureKind};
use crate::reply_log::{Output, ReplyStream, Streaming};
use crate::sys::Region;

static PROCESS_NAME: OnceLock<String> = OnceLock::new();

/// The name given to this process by its parent, if it is a worker.
pub(crate) fn process_name() -> Option<&'static str> {
    PROCESS_NAME.get().map(String::as_str)
}

/// Prepares this process to run jobs for a parent or a broker: panics are
/// kept for replies instead of printed, freed memory is kept, and
/// `current_process().name()` says `name`.
pub(crate) fn become_worker(name: String) {
    let _ = PROCESS_NAME.set(name);
    install_panic_hook();
    crate::sys::keep_freed_memory();
}

/// Runs `job` over a chunk of `count` encoded items, looked up in the
/// registry only: whatever a message names, nothing else can run. `Ok` holds
/// one encoded outcome per item and the first item's failure; `Err` means
/// no item ran (unknown job, undecodable chunk).
pub(crate) fn run_chunk(
    job: &str,
    count: u64,
    items: &[u8],
) -> Result<(Vec<u8>, Option<Failure>), Failure> {
    let mut output = Output::Collect(Vec::new());
    let failed = run_into(job, count, items, &mut output)?;
    match output {
        Output::Collect(bytes) => Ok((bytes, failed)),
        _ => Err(Failure::new(
            FailureKind::EncodeResult,
            "internal error: the reply was not collected",
        )),
    }
}

/// Like [`run_chunk`], but writes the outcomes into `region` as each item
/// finishes (see [`crate::reply_log`]), as the reply to task number `task`.
/// `Ok` holds the reply's length.
pub(crate) fn run_chunk_streaming(
    job: &str,
    count: u64,
    items: &[u8],
    region: &mut Region,
    task: u64,
) -> Result<(u64, Option<Failure>), Failure> {
    let mut output = Output::Stream(Streaming::new(region, task));
    let failed = run_into(job, count, items, &mut output)?;
    let written = match output {
        Output::Stream(streaming) => streaming.written(),
        Output::Collect(_) => Ok(0),
    };
    written.map(|len| (len, failed)).map_err(|err| {
        Failure::new(
            FailureKind::System(err.raw_os_error()),
            match err.raw_os_error() {
                Some(_) => "could not place the chunk's results in shared memory".to_owned(),
                None => format!("could not place the chunk's results in shared memory: {err}"),
            },
        )
    })
}

fn run_into(
    job: &str,
    count: u64,
    items: &[u8],
    output: &mut Output<'_>,
) -> Result<Option<Failure>, Failure> {
    let registry = crate::job::registry()
        .map_err(|err| Failure::new(FailureKind::UnknownJob, err.to_string()))?;
    let entry = registry
        .get(job)
        .copied()
        .ok_or_else(|| Failure::new(FailureKind::UnknownJob, job))?;
    let count = usize::try_from(count)
        .map_err(|_| Failure::new(FailureKind::DecodeArguments, "item count too large"))?;
    (entry.invoke)(count, items, output)
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the panic message and location for the reply instead of printing
/// it: the caller gets it in `Error::Panicked`, and stderr is not flooded.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
        let text = match info.location() {
            Some(at) => format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column()),
            None => message.to_owned(),
        };
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
    }));
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .unwrap_or_else(|| crate::error::panic_message(payload))
}

/// Runs `f` over a chunk. Called by the code `#[pool_job]` generates.
///
/// All items are decoded before any runs, so a chunk with an undecodable
/// item has no side effects. Each item's outcome is recorded separately: a
/// panic or an unserializable result fails that item only. A panic in the
/// items' `Deserialize` or the result's `Serialize` is caught by the codec
/// and reported like a panic in the job: it never unwinds into the worker
/// loop, which would abort the worker.
#[doc(hidden)]
pub(crate) fn invoke<T, R>(
    count: usize,
    input: &[u8],
    output: &mut Output<'_>,
    f: impl Fn(T) -> R,
) -> Result<Option<Failure>, Failure>
where
    T: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let bad_input = |problem: codec::Problem, at: String| {
        let kind = if problem.panicked() {
            FailureKind::Panicked
        } else {
            FailureKind::DecodeArguments
        };
        Failure::new(kind, format!("{at}: {}", problem.message))
    };
    let mut reader =
        codec::ChunkReader::new(input).map_err(|p| bad_input(p, "the chunk".into()))?;
    let mut items = Vec::with_capacity(count.min(input.len()));
    reader
        .read_into::<T>(count, &mut items)
        .map_err(|p| bad_input(p, format!("item {} of the chunk", items.len())))?;
    reader
        .finish()
        .map_err(|p| bad_input(p, "the chunk".into()))?;
    output.begin();
    if let Some(header) = codec::direct_header::<R>()
        && let Some(stream) = output.stream()
    {
        let (tail, first_failure) = run_raw(items, stream, &header, f);
        output.end_raw(&tail);
        return Ok(first_failure);
    }
    let mut reply = codec::ReplyWriter::<R>::default();
    for (index, item) in items.into_iter().enumerate() {
        output.running(index);
        match catch_unwind(AssertUnwindSafe(|| f(item))) {
            // An unencodable value fails its item; the writer recorded why.
            Ok(value) => drop(reply.value(&value)),
            Err(payload) => {
                reply.failure(Failure::new(FailureKind::Panicked, panic_text(&*payload)))
            }
        }
        output.finished(index, &reply);
    }
    let first_failure = reply.first_failure().cloned();
    output.end(reply.finish());
    Ok(first_failure)
}

/// [`invoke`]'s loop, in a local worker, for results that are plain
/// numbers, byte vectors or strings: each value goes straight into the
/// reply region as its item finishes, from its own storage.
///
/// The general loop encodes each value into a private buffer and then
/// copies what is new into the region; for a trivial job over numbers that
/// bookkeeping was the largest share of a worker's time (perf, map of 10⁶
/// `u64`), and a large byte vector was copied twice (echo of 16 MiB). The
/// bytes in the region are the same: the values chunk's header, the
/// values, then the failures and the values' length.
fn run_raw<T, R>(
    items: Vec<T>,
    stream: &mut ReplyStream<'_>,
    header: &[u8],
    f: impl Fn(T) -> R,
) -> (Vec<u8>, Option<Failure>)
where
    R: 'static,
{
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    stream.begin_raw(header);
    let mut items = items.into_iter().enumerate();
    if let Some(width) = codec::raw_width::<R>() {
        // Plain numbers: room for the rest of the chunk at once, then one
        // checked write per value. A failed item ends the run (its log may
        // move the values), and the next run starts after it.
        'runs: loop {
            let mut words = stream.words(items.len(), width);
            for (index, item) in items.by_ref() {
                words.running(index);
                let failure = match catch_unwind(AssertUnwindSafe(|| f(item))) {
                    Ok(value) => match codec::direct_value(&value) {
                        Some(codec::Direct::Word(word, width)) => {
                            words.push(index, &word[..width]);
                            continue;
                        }
                        // Not reached: `R` is a plain number.
                        _ => {
                            Failure::new(FailureKind::EncodeResult, "internal error: not a number")
                        }
                    },
                    Err(payload) => Failure::new(FailureKind::Panicked, panic_text(&*payload)),
                };
                let written = words.finish();
                stream.words_written(written);
                stream.failed_raw(index, &failure);
                failures.push((index, failure));
                continue 'runs;
            }
            let written = words.finish();
            stream.words_written(written);
            break;
        }
    }
    for (index, item) in items {
        stream.running(index);
        match catch_unwind(AssertUnwindSafe(|| f(item))) {
            Ok(value) => match codec::direct_value(&value) {
                Some(codec::Direct::Word(word, width)) => {
                    stream.push_raw(index, &word[..width], &[])
                }
                Some(codec::Direct::Bytes { length, len, bytes }) => {
                    stream.push_raw(index, &length[..len], bytes)
                }
                // Not reached: `R` has a direct form (checked by the caller).
                None => {
                    let failure =
                        Failure::new(FailureKind::EncodeResult, "internal error: not a raw value");
                    stream.failed_raw(index, &failure);
                    failures.push((index, failure));
                }
            },
            Err(payload) => {
                let failure = Failure::new(FailureKind::Panicked, panic_text(&*payload));
                stream.failed_raw(index, &failure);
                failures.push((index, failure));
            }
        }
    }
    let tail = codec::reply_tail(stream.values_len(), &failures);
    (
        tail,
        failures.into_iter().next().map(|(_, failure)| failure),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_alloc::allocated_during;

    const SIZE: usize = 8 << 20;

    /// Runs an echo job over one `payload` in a worker's way, streaming
    /// into a fresh reply region: the reply's length, the bytes written
    /// into the region and the bytes allocated meanwhile.
    fn echo_into_region<T>(payload: &T) -> (u64, usize, usize)
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let chunk = codec::encode(payload).unwrap();
        let mut region = Region::create().unwrap();
        let mut output = Output::Stream(Streaming::new(&mut region, 1));
        let written_before = crate::sys::bytes_written_here();
        let allocated = allocated_during(|| {
            assert!(invoke(1, &chunk, &mut output, |v: T| v).unwrap().is_none());
        });
        let written = crate::sys::bytes_written_here() - written_before;
        let Output::Stream(streaming) = output else {
            unreachable!()
        };
        (streaming.written().unwrap(), written, allocated)
    }

    /// A large result goes into the reply region once, from the value's
    /// own storage: the only copy the worker makes is the job's argument,
    /// decoded out of the request. A staging buffer for the result (as
    /// before issue 20) would allocate and copy the payload a second time.
    #[test]
    fn a_large_result_is_written_once_into_the_reply_region() {
        let (len, written, allocated) = echo_into_region(&vec![5u8; SIZE]);
        assert_eq!(written, len as usize, "the reply is written once, whole");
        assert!(written < SIZE + 64, "{written} bytes written for {SIZE}");
        assert!(
            allocated < SIZE + (64 << 10),
            "{allocated} bytes allocated for {SIZE}"
        );
        let (_, written, allocated) = echo_into_region(&"x".repeat(SIZE));
        assert!(written < SIZE + 64, "{written} bytes written for {SIZE}");
        assert!(
            allocated < SIZE + (64 << 10),
            "{allocated} bytes allocated for {SIZE}"
        );
        // Numbers too: one write of each into the region, no buffer.
        let (_, written, _) = echo_into_region(&u64::MAX);
        assert!(written < 64, "{written}");
    }

    /// On the caller's side, a large reply of bytes is copied once, from
    /// the region straight into the value's own storage: no private copy
    /// of the whole reply first, and the payload allocated once.
    #[test]
    fn a_large_reply_is_decoded_with_one_copy_into_the_value() {
        let payload = vec![9u8; SIZE];
        let chunk = codec::encode(&payload).unwrap();
        let mut region = Region::create().unwrap();
        let mut output = Output::Stream(Streaming::new(&mut region, 4));
        invoke(1, &chunk, &mut output, |v: Vec<u8>| v).unwrap();
        let Output::Stream(streaming) = output else {
            unreachable!()
        };
        let len = streaming.written().unwrap();
        let mut values: Vec<Vec<u8>> = Vec::new();
        let copied = crate::sys::bytes_copied_out_here();
        let whole = crate::sys::whole_replies_copied_here();
        let allocated = allocated_during(|| {
            let reply = crate::reply_log::reply_in_place(&mut region, 4, len).unwrap();
            assert!(codec::values_in_place(&reply, 1, &mut values).unwrap());
        });
        assert!(values[0] == payload);
        let copied = crate::sys::bytes_copied_out_here() - copied;
        assert_eq!(copied, SIZE, "bytes copied out of the region");
        assert_eq!(crate::sys::whole_replies_copied_here(), whole);
        assert!(
            allocated < SIZE + (64 << 10),
            "{allocated} bytes allocated for {SIZE}"
        );
    }

    /// The outcomes in a reply, in order (a failure as its message).
    fn outcomes(reply: &[u8], count: usize) -> Vec<Result<u64, String>> {
        let mut reader = codec::ReplyReader::new(reply).unwrap();
        (0..count)
            .map(|_| reader.next::<u64>().unwrap().map_err(|f| f.message))
            .collect()
    }

    /// Numbers written a run at a time (`ReplyStream::words`) make the
    /// reply the general path makes, whichever items fail: a failed item
    /// ends a run and the next starts after it, and a failure log that
    /// outgrows its room moves the values written so far.
    #[test]
    fn a_run_of_numbers_makes_the_reply_the_general_path_makes() {
        let long = "x".repeat(300);
        let patterns: [Vec<u64>; 6] = [
            vec![],
            vec![0],
            vec![499],
            vec![3, 4, 5],
            (0..500).step_by(3).collect(),
            (0..500).collect(),
        ];
        let items: Vec<u64> = (0..500).collect();
        let mut chunk = codec::ChunkWriter::default();
        for item in &items {
            chunk.push(item).unwrap();
        }
        let chunk = chunk.finish();
        for failing in patterns {
            let job = |n: u64| {
                if failing.contains(&n) {
                    std::panic::resume_unwind(Box::new(format!("{long} {n}")));
                }
                n * 3
            };
            let mut collect = Output::Collect(Vec::new());
            let first = invoke(500, &chunk, &mut collect, job).unwrap();
            let Output::Collect(general) = collect else {
                unreachable!()
            };
            let mut region = Region::create().unwrap();
            let mut output = Output::Stream(Streaming::new(&mut region, 9));
            let first_here = invoke(500, &chunk, &mut output, job).unwrap();
            let Output::Stream(streaming) = output else {
                unreachable!()
            };
            let len = streaming.written().unwrap();
            assert_eq!(crate::reply_log::items_done(&region, 9), Some(500));
            let mut copy = crate::sys::ReplyCopy::default();
            crate::reply_log::reply(&mut region, 9, len, &mut copy).unwrap();
            let expected = outcomes(&general, 500);
            assert_eq!(outcomes(copy.bytes(), 500), expected, "{failing:?}");
            assert_eq!(
                first_here.map(|f| f.message),
                first.map(|f| f.message),
                "{failing:?}"
            );
            let values = expected.iter().filter(|o| o.is_ok()).count();
            assert_eq!(values, 500 - failing.len());
        }
    }
}
