//! Where an `imap`'s chunks arrive: the backend's [`Sink`] for its tasks,
//! holding finished chunks until the iterator (or stream) takes them, and
//! timing each chunk for adaptive sizing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use super::chunking::Timings;
use crate::Error;
use crate::backend::{Part, Sink, TaskInfo};
use crate::job::Decode;
use crate::progress::Progress;

pub(super) struct State<R> {
    /// Finished chunks by number, until the iterator takes them.
    pub(super) finished: HashMap<usize, Vec<Result<R, Error>>>,
    /// Chunk numbers in the order they finished.
    pub(super) completion: VecDeque<usize>,
    pub(super) cancelled: bool,
    /// The task polling an [`ImapStream`](super::ImapStream), woken when a chunk arrives.
    pub(super) waker: Option<Waker>,
    /// When each chunk still out began to be filled (adaptive sizing only).
    pub(super) started: HashMap<usize, Instant>,
    /// The time per item of the chunks that came back.
    pub(super) timings: Timings,
}

/// Receives the chunks of one `imap` call.
pub(super) struct Stream<R> {
    pub(super) job: &'static str,
    pub(super) decode: Decode<R>,
    pub(super) progress: Progress,
    pub(super) state: Mutex<State<R>>,
    pub(super) arrived: Condvar,
}

impl<R> Stream<R> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn store(&self, chunk: usize, items: Vec<Result<R, Error>>) {
        self.store_timed(chunk, items, false);
    }

    /// Stores a chunk; `timed`: it came back from a worker, so its time
    /// per item is the latest measure (a lost chunk's is not).
    pub(super) fn store_timed(&self, chunk: usize, items: Vec<Result<R, Error>>, timed: bool) {
        let mut state = self.lock();
        if let Some(started) = state.started.remove(&chunk)
            && timed
            && !items.is_empty()
        {
            let per_item = started.elapsed() / items.len().try_into().unwrap_or(u32::MAX);
            state.timings.record(per_item);
        }
        state.finished.insert(chunk, items);
        state.completion.push_back(chunk);
        let waker = state.waker.take();
        drop(state);
        self.arrived.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R: Send + 'static> Stream<R> {
    /// Appends the outcomes of `count` items from `first` to `items`. A
    /// lost part fails each of its items, and the items after an
    /// undecodable one fail with it, so the output stays aligned with the
    /// input.
    pub(super) fn decode_part(
        &self,
        first: usize,
        count: usize,
        outcome: Result<&[u8], Error>,
        items: &mut Vec<Result<R, Error>>,
    ) {
        let start = items.len();
        let decoded =
            outcome.and_then(|bytes| self.decode.outcomes(self.job, first, count, bytes, items));
        if let Err(error) = decoded {
            items.resize_with(start + count, || Err(error.clone()));
        }
    }
}

impl<R: Send + 'static> Sink for Stream<R> {
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>) {
        let mut items = Vec::with_capacity(task.count);
        let replied = outcome.is_ok();
        self.decode_part(task.first, task.count, outcome, &mut items);
        self.progress
            .advance(task.count.saturating_sub(task.reported));
        self.store_timed(task.chunk, items, replied);
    }

    fn deliver_parts(&self, chunk: TaskInfo, parts: Vec<Part>) {
        let mut items = Vec::with_capacity(chunk.count);
        for part in parts {
            self.decode_part(
                part.first,
                part.count,
                part.outcome.as_deref().map_err(Clone::clone),
                &mut items,
            );
        }
        self.progress
            .advance(chunk.count.saturating_sub(chunk.reported));
        self.store(chunk.chunk, items);
    }

    fn progress(&self, items: usize) {
        self.progress.advance(items);
    }

    fn per_item(&self) -> bool {
        true
    }

    fn cancelled(&self) -> bool {
        self.lock().cancelled
    }
}
