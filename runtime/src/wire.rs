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
    /// One encoded `Result<R, Failure>` per item of the task.
    Done { items: Payload },
    /// The whole task failed before any item ran.
    Failed(Failure),
}

/// Encoded items, in the message or, when large, in shared memory.
///
/// A socket moves a large message in ~200 KiB fragments, copied by the
/// kernel twice and reassembled by ipc-channel; a memfd mapping is filled
/// once and read in place by the other process.
#[derive(Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(ByteBuf),
    Shared(IpcSharedMemory),
}

/// From this size on, a payload goes through shared memory.
const SHARED_FROM: usize = 256 << 10;

impl Payload {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        if bytes.len() >= SHARED_FROM {
            Payload::Shared(IpcSharedMemory::from_bytes(&bytes))
        } else {
            Payload::Inline(ByteBuf::from(bytes))
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Shared(memory) => memory,
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Payload::Inline(_) => "Inline",
            Payload::Shared(_) => "Shared",
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
