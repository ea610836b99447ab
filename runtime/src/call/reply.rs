//! A task's reply, decoded into its items' outcomes as the caller sees
//! them: values, or each failed item's error, with the item's index in the
//! call's input.

use serde::de::DeserializeOwned;

use crate::backend::TaskInfo;
use crate::job::Decode;
use crate::{Error, codec};

/// Decodes a task's reply (one outcome per item) and hands each item's
/// outcome, as the caller sees it, to `each`. Stops at the first `Err` that
/// `each` returns, or when the reply cannot be decoded.
fn decode_items<R: DeserializeOwned + 'static>(
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
    mut each: impl FnMut(Result<R, Error>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut reader = codec::ReplyReader::new(bytes).map_err(|p| undecodable(job, task.first, p))?;
    for offset in 0..task.count {
        let index = task.first + offset;
        let item = reader.next::<R>().map_err(|p| undecodable(job, index, p))?;
        each(item.map_err(|failure| failure.into_error(job, index)))?;
    }
    reader
        .finish()
        .map_err(|p| undecodable(job, task.first + task.count, p))
}

/// Decodes every value of a task's reply into `out`, or fails with the
/// first item's error. Replies without failures take the bulk path.
fn decode_values<R: DeserializeOwned + 'static>(
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
    out: &mut Vec<R>,
) -> Result<(), Error> {
    let mut reader = codec::ReplyReader::new(bytes).map_err(|p| undecodable(job, task.first, p))?;
    let start = out.len();
    if !reader
        .values_into(task.count, out)
        .map_err(|p| undecodable(job, task.first + out.len() - start, p))?
    {
        return decode_items(job, task, bytes, |item| {
            out.push(item?);
            Ok(())
        });
    }
    reader
        .finish()
        .map_err(|p| undecodable(job, task.first + task.count, p))
}

/// Items `first..first + count` of a call, as the decoders see them.
fn part(first: usize, count: usize) -> TaskInfo {
    TaskInfo {
        chunk: 0,
        first,
        count,
        reported: 0,
    }
}

/// [`decode_values`] for items `first..first + count`: a job's values
/// decoder (see `job::Decoders`), picked by `#[pool_job]` where `R` is
/// known to be deserializable.
pub(crate) fn decode_values_of<R: DeserializeOwned + 'static>(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: &mut Vec<R>,
) -> Result<(), Error> {
    decode_values(job, part(first, count), bytes, out)
}

/// [`decode_items`] for items `first..first + count`, collecting every
/// item's outcome: a job's outcomes decoder (see `job::Decoders`).
pub(crate) fn decode_outcomes_of<R: DeserializeOwned + 'static>(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: &mut Vec<Result<R, Error>>,
) -> Result<(), Error> {
    // A reply without failures takes the bulk path (one copy of raw
    // numbers rather than a serde call per item: perf put that call at
    // about a fifth of an `imap_unordered` of 10⁵ numbers). Anything else,
    // a corrupt reply too, is read item by item, so the items before a bad
    // one are kept as before.
    if let Ok(mut reader) = codec::ReplyReader::new(bytes)
        && reader.all_succeeded()
    {
        let mut values = Vec::new();
        if matches!(reader.values_into(count, &mut values), Ok(true)) && reader.finish().is_ok() {
            out.extend(values.into_iter().map(Ok));
            return Ok(());
        }
    }
    decode_items(job, part(first, count), bytes, |item| {
        out.push(item);
        Ok(())
    })
}

/// The error of the first item that failed in a reply (or of the reply
/// itself, if it cannot be read); a reply without failures is not decoded.
pub(super) fn failed_item<R>(
    decode: &Decode<R>,
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
) -> Option<Error> {
    match codec::ReplyReader::new(bytes) {
        Err(problem) => Some(undecodable(job, task.first, problem)),
        Ok(reader) if reader.all_succeeded() => None,
        Ok(_) => {
            let mut outcomes = Vec::new();
            match decode.outcomes(job, task.first, task.count, bytes, &mut outcomes) {
                Err(error) => Some(error),
                Ok(()) => outcomes.into_iter().find_map(Result::err),
            }
        }
    }
}

pub(super) fn undecodable(job: &str, index: usize, problem: codec::Problem) -> Error {
    codec::error_for(job, format!("decode the result of item {index}"), problem)
}
