//! A worker's reply to a chunk ([`ReplyWriter`], [`ReplyReader`]): the
//! values that succeeded, in order, then the failures by item index, so a
//! chunk with no failure carries no per-item result tag.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::chunk::TAGGED;
use super::chunk::{ChunkReader, ChunkWriter};
use super::problem::Problem;
use super::{de, format, ser};
use crate::failure::Failure;

/// A worker's reply to a chunk: each item's result or failure.
pub(crate) struct ReplyWriter<R> {
    values: ChunkWriter,
    failures: Vec<(usize, Failure)>,
    index: usize,
    result: PhantomData<fn(&R)>,
}

impl<R: Serialize + 'static> Default for ReplyWriter<R> {
    fn default() -> Self {
        ReplyWriter {
            // A result cannot carry a handle: nothing sends its descriptors.
            values: ChunkWriter::refusing_handles(),
            failures: Vec::new(),
            index: 0,
            result: PhantomData,
        }
    }
}

impl<R: Serialize + 'static> ReplyWriter<R> {
    /// The next item's value; if it cannot be encoded, the item fails with
    /// the returned problem instead (already recorded).
    #[inline(always)]
    pub(crate) fn value(&mut self, value: &R) -> Result<(), Problem> {
        let pushed = self.values.push(value);
        match &pushed {
            Ok(()) => self.index += 1,
            Err(problem) => self.unencodable(problem),
        }
        pushed
    }

    #[cold]
    pub(super) fn unencodable(&mut self, problem: &Problem) {
        let kind = if problem.panicked() {
            crate::failure::FailureKind::Panicked
        } else {
            crate::failure::FailureKind::EncodeResult
        };
        self.failure(Failure::new(kind, problem.message.clone()));
    }

    /// The next item failed.
    pub(crate) fn failure(&mut self, failure: Failure) {
        self.failures.push((self.index, failure));
        self.index += 1;
    }

    /// The first failure, if any item failed.
    pub(crate) fn first_failure(&self) -> Option<&Failure> {
        self.failures.first().map(|(_, failure)| failure)
    }

    /// The values written so far (see [`ChunkWriter::written`]).
    pub(crate) fn values_written(&self) -> (&[u8], u64) {
        self.values.written()
    }

    /// The failure of the last item recorded, if it failed.
    pub(crate) fn last_failure(&self) -> Option<(usize, &Failure)> {
        match self.failures.last() {
            Some((index, failure)) if index + 1 == self.index => Some((*index, failure)),
            _ => None,
        }
    }

    /// Values chunk, then the failures, then the values chunk's length
    /// (8 bytes), so the reader finds both without a copy.
    pub(crate) fn finish(self) -> Vec<u8> {
        let values = self.values.finish();
        let mut log = Vec::new();
        for (index, failure) in &self.failures {
            push_failure(&mut log, *index, failure);
        }
        assemble_reply(values, self.failures.len(), &log)
    }
}

/// Appends item `index`'s failure as a reply lists it.
pub(crate) fn push_failure(out: &mut Vec<u8>, index: usize, failure: &Failure) {
    format::push_varint(out, index as u64);
    // A Failure holds a kind and a String: encoding cannot fail.
    if ser::encode_into(failure, out).is_err() {
        out.push(format::UNIT);
    }
}

/// A reply from its values chunk (bytes of a [`ChunkWriter`], possibly with
/// no item yet), and `failures` entries written by [`push_failure`].
pub(crate) fn assemble_reply(mut values: Vec<u8>, failures: usize, log: &[u8]) -> Vec<u8> {
    if values.is_empty() {
        values.push(TAGGED);
    }
    let values_len = values.len() as u64;
    format::push_varint(&mut values, failures as u64);
    values.extend_from_slice(log);
    values.extend_from_slice(&values_len.to_le_bytes());
    values
}

/// What follows a reply's values chunk of `values_len` bytes when the
/// values were written elsewhere (straight into a worker's reply region):
/// the failures, by item index, then the values' length, as
/// [`ReplyWriter::finish`] writes them.
pub(crate) fn reply_tail(values_len: usize, failures: &[(usize, Failure)]) -> Vec<u8> {
    let mut tail = Vec::new();
    format::push_varint(&mut tail, failures.len() as u64);
    for (index, failure) in failures {
        push_failure(&mut tail, *index, failure);
    }
    tail.extend_from_slice(&(values_len as u64).to_le_bytes());
    tail
}

/// Reads a reply written by [`ReplyWriter`].
pub(crate) struct ReplyReader<'a> {
    values: ChunkReader<'a>,
    /// Failures by item index, in order.
    failures: std::vec::IntoIter<(usize, Failure)>,
    next_failure: Option<(usize, Failure)>,
    index: usize,
}

impl<'a> ReplyReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, Problem> {
        let cut = || Problem::corrupt("a worker's reply is cut short: the data is corrupt");
        let split = bytes.len().checked_sub(8).ok_or_else(cut)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[split..]);
        let values_len = usize::try_from(u64::from_le_bytes(word))
            .ok()
            .filter(|&len| len <= split)
            .ok_or_else(cut)?;
        let mut de = de::Decoder::new(&bytes[values_len..split]);
        let count = de.varint().map_err(|_| cut())?;
        let mut failures = Vec::new();
        for _ in 0..count {
            let index = de.varint().map_err(|_| cut())?;
            let failure = <Failure as serde::Deserialize>::deserialize(&mut de).map_err(|e| {
                Problem::corrupt(format!("a worker's reply holds a bad failure: {e}"))
            })?;
            failures.push((usize::try_from(index).map_err(|_| cut())?, failure));
        }
        if !de.rest().is_empty() {
            return Err(cut());
        }
        let mut failures = failures.into_iter();
        Ok(ReplyReader {
            values: ChunkReader::new(&bytes[..values_len])?,
            next_failure: failures.next(),
            failures,
            index: 0,
        })
    }

    /// The next item's outcome.
    pub(crate) fn next<R: DeserializeOwned + 'static>(
        &mut self,
    ) -> Result<Result<R, Failure>, Problem> {
        let index = self.index;
        self.index += 1;
        if self
            .next_failure
            .as_ref()
            .is_some_and(|(at, _)| *at == index)
            && let Some((_, failure)) =
                std::mem::replace(&mut self.next_failure, self.failures.next())
        {
            return Ok(Err(failure));
        }
        self.values.next().map(Ok)
    }

    /// Whether no item of this reply failed.
    pub(crate) fn all_succeeded(&self) -> bool {
        self.next_failure.is_none()
    }

    /// Appends the next `count` values to `out` when none of them failed
    /// (the bulk path); `false` if some did (read them one by one).
    pub(crate) fn values_into<R: DeserializeOwned + 'static>(
        &mut self,
        count: usize,
        out: &mut Vec<R>,
    ) -> Result<bool, Problem> {
        if !self.all_succeeded() {
            return Ok(false);
        }
        self.values.read_into(count, out)?;
        self.index += count;
        Ok(true)
    }

    /// Fails if anything is left after the last item.
    pub(crate) fn finish(self) -> Result<(), Problem> {
        if self.next_failure.is_some() {
            return Err(Problem::corrupt(
                "a worker's reply names a failure past its last item",
            ));
        }
        self.values.finish()
    }
}
