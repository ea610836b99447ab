//! Why one item (or a whole task) failed inside a worker, as both worker
//! loops (local and cluster) report it and the codec carries it in a reply;
//! and the caller-facing [`Error`] it becomes.

use serde::{Deserialize, Serialize};

use crate::Error;

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
    /// The worker's system refused what the results needed (shared memory
    /// past a file size or memory limit): the OS error number, if any.
    System(Option<i32>),
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
            FailureKind::System(errno) => Error::system(
                format!(
                    "job `{job}`, item {index}: the worker {}; the worker is kept",
                    self.message
                ),
                errno.map_or_else(
                    || std::io::Error::other(self.message.clone()),
                    std::io::Error::from_raw_os_error,
                ),
            ),
        }
    }
}
