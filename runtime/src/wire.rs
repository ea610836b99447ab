//! The messages parent and worker exchange over a worker's channel
//! ([`crate::local::channel`]).
//!
//! A task carries a chunk of items already encoded back to back (see
//! [`crate::codec`]); the reply carries one encoded `Result<R, Failure>` per
//! item, so one bad item does not cost the rest of its chunk.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::Error;
use crate::sys::Region;

/// Payloads up to this size travel inside their message; larger ones in
/// shared memory.
///
/// Small enough that the few messages ever queued on one socket (a task,
/// the next task, `Exit`) fit its default send buffer (208 KiB).
pub(crate) const INLINE_MAX: usize = 32 * 1024;

/// A message that may carry one [`Payload`], sent whole in one datagram.
pub(crate) trait Message: Serialize + serde::de::DeserializeOwned {
    /// The message's payload, if it has one.
    fn payload(&self) -> Option<&Payload>;
    /// The same, to attach shared memory received beside the message.
    fn payload_mut(&mut self) -> Option<&mut Payload>;
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// First message after the worker's `Hello`.
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
    /// First message: the worker is connected. Its pid must be the child's.
    Hello { pid: u32 },
    /// `Init` was processed.
    Ready,
    /// One encoded `Result<R, Failure>` per item of task number `task`.
    Done { task: u64, items: Payload },
    /// Task number `task` failed as a whole before any item ran (or, with
    /// `task` 0, the initializer failed).
    Failed { task: u64, failure: Failure },
}

impl Message for ToWorker {
    fn payload(&self) -> Option<&Payload> {
        match self {
            ToWorker::Run { items, .. } => Some(items),
            _ => None,
        }
    }
    fn payload_mut(&mut self) -> Option<&mut Payload> {
        match self {
            ToWorker::Run { items, .. } => Some(items),
            _ => None,
        }
    }
}

impl Message for FromWorker {
    fn payload(&self) -> Option<&Payload> {
        match self {
            FromWorker::Done { items, .. } => Some(items),
            _ => None,
        }
    }
    fn payload_mut(&mut self) -> Option<&mut Payload> {
        match self {
            FromWorker::Done { items, .. } => Some(items),
            _ => None,
        }
    }
}

/// Encoded items, in the message or, when large, in shared memory.
///
/// A socket datagram is small (its limit is the send buffer); a memfd
/// mapping is filled once and read in place by the other process.
pub(crate) enum Payload {
    Inline(ByteBuf),
    /// The first `len` bytes of a shared region (regions are reused, so they
    /// may be larger than the payload). The region travels beside the
    /// message; the channel attaches it on arrival, or refuses the message.
    Shared {
        region: Option<Arc<Region>>,
        len: u64,
    },
}

/// How a payload looks inside a message: the bytes, or the size of the
/// region that comes with it.
#[derive(Serialize, Deserialize)]
enum PayloadOnWire {
    Inline(ByteBuf),
    Shared(u64),
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Inline(bytes) => serializer.serialize_newtype_variant(
                "PayloadOnWire",
                0,
                "Inline",
                serde_bytes::Bytes::new(bytes),
            ),
            Payload::Shared { len, .. } => {
                serializer.serialize_newtype_variant("PayloadOnWire", 1, "Shared", len)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match PayloadOnWire::deserialize(deserializer)? {
            PayloadOnWire::Inline(bytes) => Payload::Inline(bytes),
            PayloadOnWire::Shared(len) => Payload::Shared { region: None, len },
        })
    }
}

impl Payload {
    /// A payload holding `bytes`, in a new region when they are large.
    pub(crate) fn new(bytes: Vec<u8>) -> std::io::Result<Self> {
        if bytes.len() <= INLINE_MAX {
            return Ok(Payload::Inline(ByteBuf::from(bytes)));
        }
        let mut region = Region::create(bytes.len())?;
        // SAFETY: the region is new: nobody else has seen it.
        unsafe { region.bytes_mut()[..bytes.len()].copy_from_slice(&bytes) };
        Ok(Payload::Shared {
            region: Some(Arc::new(region)),
            len: bytes.len() as u64,
        })
    }
}

/// One shared region, reused for payload after payload.
///
/// A fresh region costs a page fault and a page clear per 4 KiB, twice the
/// cost of the copy itself; a reused one costs only the copy.
#[derive(Default)]
pub(crate) struct Scratch(Option<Arc<Region>>);

impl Scratch {
    /// A payload holding `bytes`, in the reused region when they are large.
    ///
    /// # Safety
    /// The receiver of the previous payload filled from this scratch must
    /// be done with it (it replied, or it is dead): the region is
    /// rewritten in place. Drivers refill only after the reply to it.
    pub(crate) unsafe fn fill(&mut self, bytes: Vec<u8>) -> std::io::Result<Payload> {
        if bytes.len() <= INLINE_MAX {
            return Ok(Payload::Inline(ByteBuf::from(bytes)));
        }
        // A region still referenced by a payload in this process is never
        // rewritten: only one that nothing here reads any more is reused.
        let reusable = self
            .0
            .take()
            .filter(|region| region.len() >= bytes.len() && Arc::strong_count(region) == 1);
        let mut region = match reusable {
            Some(region) => region,
            // Whole MiBs, so payloads of slightly varying size share a region.
            None => Arc::new(Region::create(bytes.len().next_multiple_of(1 << 20))?),
        };
        let Some(writable) = Arc::get_mut(&mut region) else {
            return Payload::new(bytes);
        };
        // SAFETY: no payload in this process refers to the region (checked
        // above), and the caller vouches for the previous receiver.
        unsafe { writable.bytes_mut()[..bytes.len()].copy_from_slice(&bytes) };
        let payload = Payload::Shared {
            region: Some(Arc::clone(&region)),
            len: bytes.len() as u64,
        };
        self.0 = Some(region);
        Ok(payload)
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Shared { region, len } => {
                // A received shared payload always has its region (the
                // channel refuses it otherwise) and `len` within it.
                let bytes = region.as_deref().map_or(&[][..], Region::bytes);
                let len = usize::try_from(*len).unwrap_or(usize::MAX).min(bytes.len());
                &bytes[..len]
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

    fn fill(scratch: &mut Scratch, bytes: Vec<u8>) -> Payload {
        // SAFETY: no other process sees these payloads.
        unsafe { scratch.fill(bytes) }.unwrap()
    }

    fn region_of(payload: &Payload) -> *const u8 {
        match payload {
            Payload::Shared {
                region: Some(region),
                ..
            } => region.bytes().as_ptr(),
            other => panic!("not shared: {other:?}"),
        }
    }

    #[test]
    fn scratch_reuses_one_region_for_large_payloads() {
        let mut scratch = Scratch::default();
        let small = fill(&mut scratch, vec![1, 2, 3]);
        assert!(matches!(small, Payload::Inline(_)));
        assert_eq!(&*small, &[1, 2, 3]);

        let first = fill(&mut scratch, vec![7; INLINE_MAX + 5]);
        assert_eq!(first.len(), INLINE_MAX + 5);
        assert!(first.iter().all(|&b| b == 7));
        let region = region_of(&first);

        // Still referenced by `first`: a new region, `first` unchanged.
        let second = fill(&mut scratch, vec![8; INLINE_MAX + 1]);
        assert_ne!(region_of(&second), region);
        assert!(first.iter().all(|&b| b == 7));
        let region = region_of(&second);
        drop((first, second));

        // Smaller, so it fits: same region, new contents, new length.
        let third = fill(&mut scratch, vec![9; INLINE_MAX + 1]);
        assert_eq!(region_of(&third), region);
        assert_eq!(third.len(), INLINE_MAX + 1);
        assert!(third.iter().all(|&b| b == 9));
        drop(third);

        // Larger than the region: a new one.
        let fourth = fill(&mut scratch, vec![3; 3 << 20]);
        assert_eq!(fourth.len(), 3 << 20);
        assert!(fourth.iter().all(|&b| b == 3));
    }
}
