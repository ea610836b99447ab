//! The messages parent and worker exchange over ipc-channel.
//!
//! A task carries a chunk of items already encoded back to back (see
//! [`crate::codec`]); the reply carries one encoded `Result<R, Failure>` per
//! item, so one bad item does not cost the rest of its chunk.

use ipc_channel::ipc::{IpcSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::Error;

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// First message after the handshake.
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
    },
    /// Finish and exit with code 0.
    Exit,
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// First message on the bootstrap socket: where to send tasks.
    Hello {
        pid: u32,
        tasks: IpcSender<ToWorker>,
        /// The secret from the worker's environment; see `process::secret_token`.
        token: String,
    },
    /// The parent's own message to unblock a bootstrap `accept` whose child
    /// died before connecting (`IpcOneShotServer::accept` has no timeout).
    Abort,
    /// `Init` was processed.
    Ready,
    /// One encoded `Result<R, Failure>` per item of task number `task`.
    Done { task: u64, items: Payload },
    /// Task number `task` failed as a whole before any item ran (or, with
    /// `task` 0, the initializer failed).
    Failed { task: u64, failure: Failure },
}

/// Encoded items, in the message or, when large, in shared memory.
///
/// A socket moves a large message in ~200 KiB fragments, copied by the
/// kernel twice and reassembled by ipc-channel; a memfd mapping is filled
/// once and read in place by the other process.
#[derive(Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(ByteBuf),
    /// The first `len` bytes of a shared region (regions are reused, so they
    /// may be larger than the payload).
    Shared {
        memory: IpcSharedMemory,
        len: u64,
    },
}

/// From this size on, a payload goes through shared memory.
pub(crate) const SHARED_FROM: usize = 1 << 20;

impl Payload {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        if bytes.len() >= SHARED_FROM {
            Payload::Shared {
                memory: IpcSharedMemory::from_bytes(&bytes),
                len: bytes.len() as u64,
            }
        } else {
            Payload::Inline(ByteBuf::from(bytes))
        }
    }
}

/// One shared region, reused for payload after payload.
///
/// A fresh region costs a page fault and a page clear per 4 KiB, twice the
/// cost of the copy itself; a reused one costs only the copy. The owner must
/// not [`fill`](Scratch::fill) it again until the receiver is done with the
/// previous payload: drivers refill only after the reply to it arrived.
#[derive(Default)]
pub(crate) struct Scratch(Option<IpcSharedMemory>);

impl Scratch {
    /// A payload holding `bytes`, in the reused region when they are large.
    pub(crate) fn fill(&mut self, bytes: Vec<u8>) -> Payload {
        if bytes.len() < SHARED_FROM {
            return Payload::Inline(ByteBuf::from(bytes));
        }
        let region = match self.0.take() {
            Some(region) if region.len() >= bytes.len() => region,
            // Whole MiBs, so payloads of slightly varying size share a region.
            _ => IpcSharedMemory::from_byte(0, bytes.len().next_multiple_of(1 << 20)),
        };
        let mut region = region;
        // SAFETY: this process holds the only mapping that is in use: the
        // receiver of the previous payload in this region has replied (see
        // the type's documentation), and the receiver of this one has not
        // been sent it yet.
        unsafe { region.deref_mut()[..bytes.len()].copy_from_slice(&bytes) };
        let payload = Payload::Shared {
            memory: region.clone(),
            len: bytes.len() as u64,
        };
        self.0 = Some(region);
        payload
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Shared { memory, len } => {
                let len = usize::try_from(*len)
                    .unwrap_or(usize::MAX)
                    .min(memory.len());
                &memory[..len]
            }
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Payload::Inline(_) => "Inline",
            Payload::Shared { .. } => "Shared",
        };
        write!(f, "{kind}({} bytes)", self.len())
    }
}

/// Why one item (or a whole task) failed inside a worker.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailureKind {
    Panicked,
    DecodeArguments,
    EncodeResult,
    UnknownJob,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The caller-facing error, for the item at `index` of the call's input.
    pub(crate) fn into_error(self, job: &str, index: usize) -> Error {
        let job = job.to_owned();
        match self.kind {
            FailureKind::Panicked => Error::Panicked {
                job,
                index,
                message: self.message,
            },
            FailureKind::DecodeArguments => Error::Serialization {
                job,
                direction: format!("decode the arguments of item {index} in the worker"),
                message: self.message,
            },
            FailureKind::EncodeResult => Error::Serialization {
                job,
                direction: format!("serialize the result of item {index} in the worker"),
                message: self.message,
            },
            FailureKind::UnknownJob => Error::UnknownJob(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_reuses_one_region_for_large_payloads() {
        let mut scratch = Scratch::default();
        let small = scratch.fill(vec![1, 2, 3]);
        assert!(matches!(small, Payload::Inline(_)));
        assert_eq!(&*small, &[1, 2, 3]);

        let first = scratch.fill(vec![7; SHARED_FROM + 5]);
        assert!(matches!(first, Payload::Shared { .. }));
        assert_eq!(first.len(), SHARED_FROM + 5);
        assert!(first.iter().all(|&b| b == 7));
        let region = scratch.0.as_ref().map(|r| r.as_ptr()).unwrap();
        drop(first);

        // Smaller, so it fits: same region, new contents, new length.
        let second = scratch.fill(vec![9; SHARED_FROM + 1]);
        assert_eq!(scratch.0.as_ref().map(|r| r.as_ptr()).unwrap(), region);
        assert_eq!(second.len(), SHARED_FROM + 1);
        assert!(second.iter().all(|&b| b == 9));

        // Larger than the region: a new one.
        let third = scratch.fill(vec![3; 3 * SHARED_FROM]);
        assert_eq!(third.len(), 3 * SHARED_FROM);
        assert!(third.iter().all(|&b| b == 3));
    }
}
