//! How a blocking or `_async` call's items become tasks: encoded into
//! chunks as they are read, each chunk queued as it fills, within a window
//! of unanswered tasks for a blocking `map`; and the chunk size the pool
//! chooses when the caller does not.

use std::sync::Arc;

use super::Pool;
use crate::Error;
use crate::backend::{Tail, Task};
use crate::call::{Call, Finish, One};
use crate::codec::{self, ChunkWriter};
use crate::job::{Decode, Encode, OwnedChunk};
use crate::progress::Progress;

impl Pool {
    /// Encodes `items` into chunks and queues them as they fill, so workers
    /// start while later items are still being encoded.
    pub(super) fn submit<X, R, M, E>(
        &self,
        job: &'static str,
        expected: usize,
        items: impl IntoIterator<Item = X>,
        chunksize: Option<usize>,
        (encode, owned, decode): (E, OwnedChunk<X>, Decode<R>),
        waiting: Waiting,
    ) -> Result<Arc<Call<R, M>>, Error>
    where
        R: Send + 'static,
        M: Finish<R>,
        E: Encode<X>,
    {
        if self.workers.backend.is_closed() {
            return Err(Error::Closed);
        }
        // A chunk size the caller chose is kept as is (Python's meaning).
        let max_bytes = if chunksize.is_some() {
            usize::MAX
        } else {
            MAX_AUTO_CHUNK_BYTES
        };
        let chunksize = chunksize
            .unwrap_or_else(|| default_chunksize(expected, self.processes()))
            .max(1);
        // An item that makes a chunk of its own, given up by the caller and
        // a large byte string, goes with its own buffer (moved, not copied
        // into the chunk): from this size.
        let owned = owned.filter(|_| self.workers.backend.takes_tails());
        let alone_from = if chunksize == 1 {
            BORROW_MIN
        } else {
            max_bytes.max(BORROW_MIN)
        };
        // A bar for a single `apply` would only flicker.
        let progress = Progress::new(
            self.workers.progress && expected > 1,
            job,
            Some(expected),
            self.call_board(),
        );
        let call = Call::<R, M>::new(job, decode, progress, expected);
        let (window, drive_here) = match waiting {
            Waiting::Window(window) => (Some(window), false),
            Waiting::Here(drive_here) => (None, drive_here),
        };
        let mut chunk = ChunkBuilder {
            drive_here,
            ..ChunkBuilder::default()
        };
        // A backend's hard limit (a cluster's `max_payload`): a chunk that
        // an item would take over it goes without that item.
        let byte_limit = self.workers.backend.max_chunk_bytes();
        let serialization = |index: usize, problem: crate::codec::Problem| {
            let error =
                crate::codec::error_for(job, format!("serialize argument {index}"), problem);
            call.abandon(error.clone());
            error
        };
        // Fused: a run of plain numbers that met the input's end leaves the
        // next read at the end too, as one read per item did.
        let mut items = items.into_iter().fuse();
        let mut index = 0;
        while let Some(item) = items.next() {
            let item = match owned {
                Some(owned) if chunk.items.len() == 0 && alone_from != usize::MAX => {
                    match owned(item, alone_from) {
                        Ok(whole) => {
                            index += 1;
                            chunk.owned = Some(whole);
                            if !self.send_in_window(job, &call, &mut chunk, window)? {
                                break;
                            }
                            continue;
                        }
                        Err(item) => item,
                    }
                }
                _ => item,
            };
            if let Err(problem) = encode.encode(&item, &mut chunk.items) {
                return Err(serialization(index, problem));
            }
            index += 1;
            if byte_limit.is_some_and(|limit| chunk.items.byte_len() > limit)
                && chunk.items.len() > 1
            {
                chunk.items.undo_last();
                if !self.send_in_window(job, &call, &mut chunk, window)? {
                    break;
                }
                // A single item over the limit is the backend's to refuse.
                if let Err(problem) = encode.encode(&item, &mut chunk.items) {
                    return Err(serialization(index - 1, problem));
                }
            } else if byte_limit.is_none() {
                // Plain numbers: the rest of the chunk in one tight loop.
                index += encode.extend_raw(&mut items, &mut chunk.items, chunksize, max_bytes);
            }
            if (chunk.items.len() == chunksize || chunk.items.byte_len() >= max_bytes)
                && !self.send_in_window(job, &call, &mut chunk, window)?
            {
                break;
            }
        }
        if chunk.items.len() > 0 {
            self.send_chunk(job, &call, &mut chunk)?;
        }
        call.seal();
        Ok(call)
    }

    /// A blocking `apply` whose item is one byte string (see
    /// [`codec::borrowed_chunk`]): `head`, the chunk's first bytes, then
    /// `tail`, the value's own bytes. Run on an idle worker from this
    /// thread, the value is copied once, from the caller's item straight
    /// into the worker's request region; otherwise it is copied into the
    /// task, which goes the usual way.
    pub(super) fn apply_borrowed<R: Send + 'static>(
        &self,
        job: &'static str,
        head: Vec<u8>,
        tail: &[u8],
        decode: Decode<R>,
    ) -> Result<Arc<Call<R, One>>, Error> {
        if self.workers.backend.is_closed() {
            return Err(Error::Closed);
        }
        let progress = Progress::new(false, job, Some(1), self.call_board());
        let call = Call::<R, One>::new(job, decode, progress, 1);
        let task = Task {
            job,
            chunk: 0,
            first: 0,
            count: 1,
            items: head,
            tail: Default::default(),
            sink: Arc::clone(&call) as Arc<dyn crate::backend::Sink>,
            retried: 0,
            before: Vec::new(),
            attached: Default::default(),
        };
        call.expect_chunk();
        if let Err(mut task) = self.workers.backend.drive_with_tail(task, tail) {
            let sent = codec::try_append(&mut task.items, tail)
                .map_err(|problem| codec::error_for(job, "serialize argument 0".into(), problem))
                .and_then(|()| self.workers.backend.submit_and_drive(task));
            if let Err(error) = sent {
                call.abandon(error.clone());
                return Err(error);
            }
        }
        call.seal();
        Ok(call)
    }

    /// Sends `chunk` once fewer than `window` of the call's tasks await
    /// their outcome. `Ok(false)`, with the chunk dropped, once the call has
    /// failed: its error is what `get` returns, and nothing more is sent.
    fn send_in_window<R, M>(
        &self,
        job: &'static str,
        call: &Arc<Call<R, M>>,
        chunk: &mut ChunkBuilder,
        window: Option<usize>,
    ) -> Result<bool, Error>
    where
        R: Send + 'static,
        M: Finish<R>,
    {
        if window.is_some_and(|window| !call.wait_in_flight_below(window)) {
            chunk.items = ChunkWriter::default();
            chunk.owned = None;
            return Ok(false);
        }
        self.send_chunk(job, call, chunk)?;
        Ok(true)
    }

    fn send_chunk<R, M>(
        &self,
        job: &'static str,
        call: &Arc<Call<R, M>>,
        chunk: &mut ChunkBuilder,
    ) -> Result<(), Error>
    where
        R: Send + 'static,
        M: Finish<R>,
    {
        let mut items = std::mem::take(&mut chunk.items);
        let (count, attached, items, tail) = match chunk.owned.take() {
            Some((head, tail)) => (1, Vec::new(), head, Tail::new(tail)),
            None => {
                let attached = items.take_attached();
                (items.len(), attached, items.finish(), Tail::default())
            }
        };
        let task = Task {
            job,
            chunk: chunk.number,
            first: chunk.first,
            count,
            items,
            tail,
            sink: Arc::clone(call) as Arc<dyn crate::backend::Sink>,
            retried: 0,
            before: Vec::new(),
            attached: attached.into(),
        };
        chunk.number += 1;
        chunk.first += count;
        call.expect_chunk();
        let submitted = if chunk.drive_here {
            self.workers.backend.submit_and_drive(task)
        } else {
            self.workers.backend.submit(task)
        };
        if let Err(error) = submitted {
            call.abandon(error.clone());
            return Err(error);
        }
        Ok(())
    }
}

/// A chunk being filled.
#[derive(Default)]
pub(super) struct ChunkBuilder {
    number: usize,
    first: usize,
    items: ChunkWriter,
    /// In place of `items`: a chunk of one large byte string, as its first
    /// bytes and the value's own buffer (see [`crate::codec::owned_chunk`]).
    owned: Option<(Vec<u8>, Vec<u8>)>,
    /// The caller waits for this (single-chunk) call at once: the backend
    /// may run it on the caller's thread.
    drive_here: bool,
}

/// The smallest byte string a blocking `apply` sends from the caller's
/// own value ([`Pool::apply_borrowed`]): below it, a copy costs less than
/// the path's bookkeeping saves.
pub(super) const BORROW_MIN: usize = 64 << 10;

/// How a caller waits for the call it submits.
#[derive(Clone, Copy)]
pub(super) enum Waiting {
    /// Blocked until fewer than this many of its tasks are unanswered
    /// while submitting (a blocking `map` that bounds its memory).
    Window(usize),
    /// Not while submitting; with `true`, it waits for its single task
    /// right after (a blocking `apply`).
    Here(bool),
}

/// About 16 chunks per worker: `ceil(n / (16 × processes))`, but never
/// smaller than Python's `ceil(n / (4 × processes))` capped at 256 items.
///
/// Python's 4 chunks per worker leave the pipeline idle while the first
/// chunk is encoded and the last one decoded: measured here, `map` of a
/// trivial job over 10⁶ integers took 19 ms with Python's rule and 12 ms
/// with 16 chunks per worker. Small calls keep Python's coarser chunks,
/// where the cost of a message dominates. (Chunks are also cut at
/// [`MAX_AUTO_CHUNK_BYTES`], see there.)
pub(super) fn default_chunksize(items: usize, processes: usize) -> usize {
    let processes = processes.max(1);
    let fine = items.div_ceil(16 * processes);
    let python = items.div_ceil(4 * processes);
    fine.max(python.min(256)).max(1)
}

/// Where a chunk whose size the pool chose is cut, whatever its count.
///
/// It keeps the few chunks in flight small beside a large map's result:
/// the caller's peak memory over a map of 10⁷ `u64` is 1.02 times the
/// result with this cut, 1.11 to 1.14 times with chunks of 16 per worker
/// (312 500 items). Smaller cuts cost speed (more messages and replies):
/// a map of 10⁶ `u64` took 17 ms (median of 30) cut at 128 KiB against 9
/// to 12 ms at 512 KiB or more, measured when each reply still came back
/// in a memfd of its own.
pub(crate) const MAX_AUTO_CHUNK_BYTES: usize = 512 << 10;

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn chunksize_is_python_for_small_calls_and_finer_for_large_ones() {
        assert_eq!(default_chunksize(0, 2), 1);
        // Small calls: Python's rule.
        assert_eq!(default_chunksize(10, 2), 2);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(2_000, 2), 250);
        // Large calls: 16 chunks per worker.
        assert_eq!(default_chunksize(10_000, 2), 313);
        assert_eq!(default_chunksize(1_000_000, 2), 31_250);
    }
}
