//! How a handle looks among a value's bytes: its kind, the indices of its
//! descriptors among those sent beside the bytes, and a few numbers.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::backend::Attachment;
use crate::codec::attach;

/// Kinds of handle.
pub(super) const QUEUE: u8 = 1;
pub(super) const CONNECTION: u8 = 2;
pub(super) const EVENT: u8 = 3;
pub(super) const SHARED_VALUE: u8 = 4;
pub(super) const SHARED_SLICE: u8 = 5;

#[derive(Serialize, Deserialize)]
#[serde(rename = "procpool::Handle")]
struct Wire {
    kind: u8,
    fds: Vec<u32>,
    words: Vec<u64>,
}

/// One of a handle's descriptors, kept alive (with the handle's state) for
/// as long as the task or value carrying it needs it.
pub(super) struct Carry<I: Send + Sync + 'static> {
    pub(super) inner: Arc<I>,
    pub(super) fd: for<'a> fn(&'a I) -> BorrowedFd<'a>,
    pub(super) sent_to: Option<fn(&I, u32)>,
}

impl<I: Send + Sync + 'static> Attachment for Carry<I> {
    fn fd(&self) -> BorrowedFd<'_> {
        (self.fd)(&self.inner)
    }

    fn sent_to(&self, pid: u32) {
        if let Some(sent_to) = self.sent_to {
            sent_to(&self.inner, pid);
        }
    }
}

/// Writes a handle of `kind` whose descriptors are `carried`.
pub(super) fn serialize<S: Serializer>(
    serializer: S,
    kind: u8,
    carried: Vec<Arc<dyn Attachment>>,
    words: Vec<u64>,
) -> Result<S::Ok, S::Error> {
    let fds = carried
        .iter()
        .map(attach::attach)
        .collect::<Result<Vec<u32>, String>>()
        .map_err(serde::ser::Error::custom)?;
    Wire { kind, fds, words }.serialize(serializer)
}

/// Reads a handle of `kind` with `fds` descriptors and `words` numbers:
/// private duplicates of its descriptors (close-on-exec), and its numbers.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
    kind: u8,
    fds: usize,
    words: usize,
    what: &str,
) -> Result<(Vec<OwnedFd>, Vec<u64>), D::Error> {
    use serde::de::Error;
    let wire = Wire::deserialize(deserializer)?;
    if wire.kind != kind || wire.fds.len() != fds || wire.words.len() != words {
        return Err(D::Error::custom(format!(
            "the bytes of a {what} hold another kind of handle ({} with {} descriptors)",
            wire.kind,
            wire.fds.len()
        )));
    }
    let fds = wire
        .fds
        .iter()
        .map(|&index| {
            let fd = attach::received(index)?;
            rustix::io::fcntl_dupfd_cloexec(&*fd, 3)
                .map_err(|err| format!("cannot keep a {what}'s descriptor: {err}"))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(D::Error::custom)?;
    Ok((fds, wire.words))
}
