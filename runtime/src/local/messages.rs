//! The messages parent and worker exchange over a worker's channel
//! ([`crate::local::channel`]).
//!
//! A task carries a chunk of items already encoded back to back (see
//! [`crate::codec`]); the reply carries one encoded `Result<R, Failure>` per
//! item, so one bad item does not cost the rest of its chunk.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::failure::Failure;

/// Payloads up to this size travel inside their message; larger ones in
/// the worker's request region.
///
/// Small enough that the few messages ever queued on one socket (a task,
/// the next task, `Exit`) fit its default send buffer (208 KiB).
pub(crate) const INLINE_MAX: usize = 32 * 1024;

/// A message: sent whole in one datagram, with the descriptors it expects.
pub(crate) trait Message: Serialize + serde::de::DeserializeOwned {
    /// How many file descriptors travel beside this message.
    fn descriptors(&self) -> usize {
        0
    }
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// First message after the worker's `Hello`. The worker's reply
    /// region (`sys::Region`) travels with it, kept for the worker's life.
    Init {
        /// What `current_process().name()` says inside the worker.
        name: String,
        /// A job and its encoded argument to run once before any task.
        initializer: Option<(String, ByteBuf)>,
    },
    /// Run `job` over `count` encoded items. With `last`, exit after the
    /// reply: code 0 if every item succeeded, 1 otherwise (as a Python
    /// `Process` whose target raised).
    Run {
        /// The driver's number for this task, echoed in the reply so a
        /// stray reply is never taken for another task's.
        task: u64,
        job: String,
        count: u64,
        items: Payload,
        last: bool,
        /// How many descriptors of handles among the items (a `Queue`,
        /// a `Shared`, ...; see `crate::codec::attach`) follow the
        /// request region, if that comes too.
        attached: u32,
    },
    /// Finish and exit with code 0.
    Exit,
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// First message: the worker is connected. Its pid must be the child's.
    Hello { pid: u32 },
    /// `Init` was processed.
    Ready,
    /// Task number `task` ran: its reply, `len` bytes, is in the worker's
    /// reply region (read through `crate::reply_log::reply`).
    Done { task: u64, len: u64 },
    /// Task number `task` failed as a whole before any item ran (or, with
    /// `task` 0, the initializer failed).
    Failed { task: u64, failure: Failure },
    /// Sent by a *copy* of the worker, forked by a job during task number
    /// `task` (0: the initializer), which found itself about to return
    /// into the worker's loop; it exits right after. The parent knows the
    /// sender from the kernel (`SCM_CREDENTIALS`), not from this message.
    Forked { task: u64 },
}

impl Message for ToWorker {
    fn descriptors(&self) -> usize {
        match self {
            ToWorker::Init { .. } => 1,
            ToWorker::Run {
                items, attached, ..
            } => {
                let region = matches!(
                    items,
                    Payload::Shared {
                        with_region: true,
                        ..
                    }
                );
                usize::from(region) + usize::try_from(*attached).unwrap_or(usize::MAX)
            }
            _ => 0,
        }
    }
}

impl ToWorker {
    /// Whether the request region travels with this message (first of its descriptors).
    pub(crate) fn carries_region(&self) -> bool {
        matches!(
            self,
            ToWorker::Init { .. }
                | ToWorker::Run {
                    items: Payload::Shared {
                        with_region: true,
                        ..
                    },
                    ..
                }
        )
    }
}

impl Message for FromWorker {}

/// A task's encoded items: in the message, or, when large, the first `len`
/// bytes of the worker's request region.
#[derive(Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(ByteBuf),
    Shared {
        len: u64,
        /// The region travels with this message: the first task to need
        /// one (the worker keeps it for the next ones). Made only then, so
        /// workers that never see a large task hold one descriptor less.
        with_region: bool,
    },
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            Payload::Shared { len, .. } => write!(f, "Shared({len} bytes)"),
        }
    }
}
