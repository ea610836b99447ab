//! The seam between the pool's logic and the way tasks reach workers.
//!
//! The pool cuts a call into [`Task`]s and hands them to a [`Backend`]; the
//! backend runs each task somewhere and hands the outcome to the task's
//! [`Sink`]. The local backend ([`crate::local`]) uses worker processes on
//! this machine; another backend (a broker) only has to implement the same
//! trait.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::Error;
use crate::PoolStats;
use crate::sys::InPlace;

/// One chunk of one call: `count` items of `job`, encoded back to back.
pub(crate) struct Task {
    pub(crate) job: &'static str,
    /// Position of this chunk among the call's chunks.
    pub(crate) chunk: usize,
    /// Index of the chunk's first item in the call's input.
    pub(crate) first: usize,
    pub(crate) count: usize,
    pub(crate) items: Vec<u8>,
    /// The rest of the chunk after `items`, when it is one large value's own
    /// buffer, moved from the caller's item rather than copied (a backend
    /// that [`Backend::takes_tails`]; empty otherwise).
    pub(crate) tail: Tail,
    pub(crate) sink: Arc<dyn Sink>,
    /// How many times this task's first item was already re-run after its
    /// worker died.
    pub(crate) retried: usize,
    /// Outcomes of the chunk's items before `first`, when this task is the
    /// rest of a chunk whose worker died part-way (empty otherwise): they
    /// are delivered with this task's, as one chunk.
    pub(crate) before: Vec<Part>,
    /// Handles among the items (a `Queue`, a `Shared`, ...): descriptors
    /// that travel beside the task's bytes, which name them by index
    /// (`crate::codec::attach`). Empty for almost every task.
    pub(crate) attached: Attached,
}

/// A task's [`Task::tail`]: one pointer wide, as almost every task has
/// none.
#[derive(Default)]
#[allow(clippy::box_collection)]
pub(crate) struct Tail(Option<Box<Vec<u8>>>);

impl Tail {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Tail((!bytes.is_empty()).then(|| Box::new(bytes)))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.0.take().map_or_else(Vec::new, |bytes| *bytes)
    }
}

/// A task's [`Attachment`]s: one pointer wide, as almost every task has
/// none (a `Vec` would make every `Task` two words larger).
#[derive(Default)]
#[allow(clippy::box_collection)]
pub(crate) struct Attached(Option<Box<Vec<Arc<dyn Attachment>>>>);

impl Attached {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn Attachment>> {
        self.0.iter().flat_map(|all| all.iter())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |all| all.len())
    }

    // Asked by the cluster backend, which cannot send descriptors.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<Arc<dyn Attachment>>> for Attached {
    fn from(all: Vec<Arc<dyn Attachment>>) -> Self {
        Attached((!all.is_empty()).then(|| Box::new(all)))
    }
}

/// A descriptor that travels beside a task's bytes (see `crate::exchange`).
pub(crate) trait Attachment: Send + Sync {
    /// The descriptor to send.
    fn fd(&self) -> BorrowedFd<'_>;
    /// The task carrying it is being sent to process `pid`.
    fn sent_to(&self, pid: u32) {
        let _ = pid;
    }
}

/// The outcome of some consecutive items of a chunk.
pub(crate) struct Part {
    /// The first item's index in the call's input.
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// A reply for these items, or why they all failed.
    pub(crate) outcome: Result<Vec<u8>, Error>,
}

/// Where a task's outcome goes.
pub(crate) trait Sink: Send + Sync {
    /// `Ok` carries one encoded `Result<R, Failure>` per item, wherever the
    /// backend keeps them (a message, shared memory); `Err` means the whole
    /// task was lost (worker died, pool terminated, ...).
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>);

    /// Takes a reply still in the shared memory its worker wrote it in,
    /// where decoding it is one copy of each value into its own storage
    /// (see `codec::values_in_place`): `true` once taken (its values
    /// delivered, or the call failed on it). `false`, with the reply
    /// untouched, where this sink cannot: the backend then copies the
    /// reply out and calls `deliver`.
    fn take_in_place(&self, task: TaskInfo, reply: &InPlace<'_>) -> bool {
        let _ = (task, reply);
        false
    }

    /// Like `deliver`, for a chunk whose outcome came in consecutive parts
    /// (its worker died part-way, and another ran the rest).
    fn deliver_parts(&self, chunk: TaskInfo, parts: Vec<Part>);

    /// Whether each item's outcome matters on its own (`imap`), rather
    /// than the first failure deciding the whole call.
    fn per_item(&self) -> bool {
        false
    }

    /// `items` more items of some task finished (while it runs; backends
    /// that cannot tell report nothing, and `deliver` counts the rest).
    fn progress(&self, items: usize) {
        let _ = items;
    }

    /// True once nobody wants the outcome any more: queued tasks are skipped.
    fn cancelled(&self) -> bool;
}

/// What a sink needs to know about a finished task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskInfo {
    pub(crate) chunk: usize,
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// Items of it already reported through [`Sink::progress`].
    pub(crate) reported: usize,
}

impl Task {
    /// The chunk this task delivers: its own items and those `before` it.
    pub(crate) fn info(&self) -> TaskInfo {
        let first = self.before.first().map_or(self.first, |part| part.first);
        TaskInfo {
            chunk: self.chunk,
            first,
            count: self.first + self.count - first,
            reported: 0,
        }
    }

    /// Delivers this task's outcome (with the parts before it, if any),
    /// `reported` of its items having been counted as progress already
    /// (and every item before it, by whoever delivered those parts).
    pub(crate) fn deliver(self, outcome: Result<&[u8], Error>, reported: usize) {
        let mut info = self.info();
        info.reported = self.first - info.first + reported;
        if self.before.is_empty() {
            return self.sink.deliver(info, outcome);
        }
        let mut parts = self.before;
        parts.push(Part {
            first: self.first,
            count: self.count,
            outcome: outcome.map(<[u8]>::to_vec),
        });
        self.sink.deliver_parts(info, parts);
    }

    /// Reports the task as lost with `error`, unless nobody is listening.
    pub(crate) fn fail(self, error: Error) {
        self.deliver(Err(error), 0);
    }
}

/// Runs tasks. Implementations are shared by every thread using the pool.
pub(crate) trait Backend: Send + Sync {
    /// Queues a task; `Err(Error::Closed)` once the backend was closed.
    fn submit(&self, task: Task) -> Result<(), Error>;
    /// Queues a task whose caller blocks until it is done: a backend may
    /// run it on the caller's thread instead, to save the hand-offs.
    fn submit_and_drive(&self, task: Task) -> Result<(), Error> {
        self.submit(task)
    }
    /// Runs `task`, whose chunk is its `items` followed by `tail` (a large
    /// value's bytes, borrowed from the caller's item), on the caller's
    /// thread, copying `tail` once, straight to where the worker reads it.
    /// Gives the task back where it cannot: the caller then appends `tail`
    /// and calls `submit_and_drive`.
    // The task given back is a move of a few words; boxing it would cost
    // an allocation per blocking call.
    #[allow(clippy::result_large_err)]
    fn drive_with_tail(&self, task: Task, tail: &[u8]) -> Result<(), Task> {
        let _ = tail;
        Err(task)
    }
    /// Whether this backend takes tasks with a [`Task::tail`].
    fn takes_tails(&self) -> bool {
        false
    }
    /// Accepts no new tasks; queued ones still run.
    fn close(&self);
    /// Whether `close`, `join` or `terminate` was called.
    fn is_closed(&self) -> bool;
    /// Closes, waits for queued tasks to finish and the workers to exit.
    fn join(&self) -> Result<(), Error>;
    /// Stops the workers now; pending tasks fail with `Error::Terminated`.
    fn terminate(&self);
    /// How many workers serve this backend.
    fn processes(&self) -> usize;
    /// The encoded size past which calls cut a chunk short, if the backend
    /// wants one (a single item may still exceed it: the backend reports
    /// items over its own limit).
    fn max_chunk_bytes(&self) -> Option<usize> {
        None
    }
    /// Whether the pool's `task_timeout` limits each item of a chunk (an
    /// item that runs over fails alone, the rest of its chunk runs on), or
    /// only whole tasks, as a broker's visibility does: then an `imap`
    /// without a chunk size sends one item per task, so that a timeout
    /// still fails only the item that ran over.
    fn limits_each_item(&self) -> bool {
        false
    }
    /// What the backend has done so far. Backends whose workers are other
    /// programs (a cluster) report nothing here.
    fn stats(&self) -> PoolStats {
        PoolStats::default()
    }
}
