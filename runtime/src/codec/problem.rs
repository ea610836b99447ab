//! [`Problem`]: why a value could not be encoded or decoded, and the
//! caller-facing error it becomes.

use std::any::{Any, type_name};

use super::error;
use super::error::CodecError;

/// Why a value could not be encoded or decoded.
///
/// `pub` (in this private module) because a job's item encoder returns it
/// (see [`crate::job::ItemEncoder`]); the code `#[pool_job]` generates
/// reaches it through `__private` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Names the type and says what went wrong, with the user's own
    /// message when their impl gave one.
    pub(crate) message: String,
    pub(crate) cause: Cause,
}

/// What kind of failure a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The value is wrong: its impl refused it, or the bytes are corrupt.
    Value,
    /// The user's `Serialize`/`Deserialize` impl panicked.
    Panicked,
    /// A buffer could not be allocated: the system's refusal, nobody's bug.
    NoMemory,
}

impl Problem {
    pub(super) fn encode<T: ?Sized>(error: CodecError) -> Self {
        Problem {
            message: format!("cannot serialize a `{}`: {}", type_name::<T>(), error),
            cause: Cause::of(&error),
        }
    }

    pub(super) fn decode<T: ?Sized>(error: CodecError) -> Self {
        Problem {
            message: format!("cannot decode a `{}`: {}", type_name::<T>(), error),
            cause: Cause::of(&error),
        }
    }

    pub(super) fn corrupt(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            cause: Cause::Value,
        }
    }

    pub(super) fn panic<T: ?Sized>(direction: &str, payload: &(dyn Any + Send)) -> Self {
        let text = crate::error::panic_message(payload);
        Problem {
            message: format!(
                "the {direction} impl of `{}` panicked: {text}",
                type_name::<T>()
            ),
            cause: Cause::Panicked,
        }
    }

    /// A value that cannot go where it was sent (described).
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Problem::corrupt(message)
    }

    /// What the encoder of a job that does not compile would return (see
    /// `__private::NeverEncode`).
    pub(crate) fn never_encoded() -> Self {
        Problem::corrupt("a #[pool_job] with a type that cannot be serialized does not compile")
    }

    /// The user's `Serialize`/`Deserialize` impl panicked.
    pub(crate) fn panicked(&self) -> bool {
        self.cause == Cause::Panicked
    }

    /// Memory ran out rather than a value being wrong: the pool reports
    /// it as the system's refusal ([`crate::Error::System`]).
    pub(crate) fn is_out_of_memory(&self) -> bool {
        self.cause == Cause::NoMemory
    }
}

impl Cause {
    pub(super) fn of(error: &CodecError) -> Self {
        if error.no_memory {
            Cause::NoMemory
        } else {
            Cause::Value
        }
    }
}

/// The caller's error for a value of `job` that could not be encoded or
/// decoded (`direction` says which, e.g. "serialize argument 3"):
/// [`crate::Error::System`] naming memory, with an `ENOMEM` `io::Error`
/// as its source, when a buffer could not be allocated; else
/// [`crate::Error::Serialization`] with the message.
pub(crate) fn error_for(job: &str, direction: String, problem: Problem) -> crate::Error {
    let message = problem.message;
    match problem.cause {
        Cause::NoMemory => crate::Error::system(
            format!(
                "job `{job}`: cannot {direction}: {message}; the pool is still usable, with \
                 smaller payloads or more memory (check `ulimit -v`)"
            ),
            std::io::Error::from_raw_os_error(libc::ENOMEM),
        ),
        Cause::Value | Cause::Panicked => crate::Error::Serialization {
            job: job.to_owned(),
            direction,
            message,
        },
    }
}

/// `bytes` in a new vector, or the [`Problem`] of memory running out.
pub(crate) fn try_to_vec(bytes: &[u8]) -> Result<Vec<u8>, Problem> {
    error::owned_bytes(bytes).map_err(|error| Problem {
        cause: Cause::of(&error),
        message: error.message,
    })
}

/// Appends `bytes` to `out`, or fails (with `out` as it was) when the
/// memory cannot be had.
pub(crate) fn try_append(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Problem> {
    error::reserve(out, bytes.len()).map_err(|error| Problem {
        cause: Cause::of(&error),
        message: error.message,
    })?;
    out.extend_from_slice(bytes);
    Ok(())
}
