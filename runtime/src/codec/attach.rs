//! Handles that travel beside a value's bytes: a `Queue`, `Pipe`, `Event`
//! or `Shared` (see `crate::exchange`) is a descriptor, which no byte
//! string can carry.
//!
//! While a [`ChunkWriter`](super::ChunkWriter) encodes an item, a handle's
//! `Serialize` hands its descriptors to [`attach`], which keeps them with
//! the chunk and returns their index; the index is all the bytes hold.
//! Whoever sends the chunk (a worker's channel, a queue's datagram) sends
//! those descriptors with it (`SCM_RIGHTS`). On the other side the
//! receiver sets them with [`receiving`] while it decodes, and the handle's
//! `Deserialize` takes its descriptors back by index ([`received`]).
//!
//! Outside of these two windows (`serde_json::to_string(&queue)`, a job's
//! result, a cluster pool's task, an initializer's argument) a handle
//! cannot be encoded: [`attach`] says so, and the encoding fails with that
//! message instead of producing a handle that points nowhere.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::backend::Attachment;

/// The most descriptors one task or one queued value carries.
pub(crate) const MAX_ATTACHED: usize = 60;

/// Descriptors collected for one chunk, in index order.
pub(crate) type Attached = Vec<Arc<dyn Attachment>>;

thread_local! {
    /// The collector of the chunk being encoded on this thread, if any.
    static COLLECTOR: RefCell<Option<Attached>> = const { RefCell::new(None) };
    /// The descriptors of the chunk being decoded on this thread, if any.
    static RECEIVED: RefCell<Option<Vec<Arc<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Puts the collector back when [`collecting`] ends, even by a panic.
struct Restore<'a> {
    attached: &'a mut Attached,
    previous: Option<Attached>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let mine =
            COLLECTOR.with(|collector| std::mem::replace(&mut *collector.borrow_mut(), previous));
        *self.attached = mine.unwrap_or_default();
    }
}

/// Runs `encode` with `attached` receiving the descriptors of the handles
/// it serializes.
pub(crate) fn collecting<R>(attached: &mut Attached, encode: impl FnOnce() -> R) -> R {
    let mine = std::mem::take(attached);
    let previous = COLLECTOR.with(|collector| collector.borrow_mut().replace(mine));
    let _restore = Restore { attached, previous };
    encode()
}

/// Runs `encode` where no handle may be encoded (a job's result).
pub(crate) fn refusing<R>(encode: impl FnOnce() -> R) -> R {
    let previous = COLLECTOR.with(|collector| collector.borrow_mut().take());
    let result = encode();
    COLLECTOR.with(|collector| *collector.borrow_mut() = previous);
    result
}

/// Keeps `attachment` with the chunk being encoded; its index there (the
/// same index each time the same attachment is given). An error, to
/// return from `Serialize`, where handles cannot go.
pub(crate) fn attach(attachment: &Arc<dyn Attachment>) -> Result<u32, String> {
    COLLECTOR.with(|collector| {
        let mut collector = collector.borrow_mut();
        let Some(attached) = collector.as_mut() else {
            return Err(NOT_HERE.to_owned());
        };
        // The same descriptor once: an item may be serialized more than
        // once (a dry run finds its shape), each time with new attachments.
        let fd = attachment.fd().as_raw_fd();
        let index = match attached
            .iter()
            .position(|known| known.fd().as_raw_fd() == fd)
        {
            Some(index) => index,
            None if attached.len() >= MAX_ATTACHED => {
                return Err(format!(
                    "more than {MAX_ATTACHED} descriptors of Queue, Pipe, Event or Shared handles \
                     in one task or value; send fewer handles at once"
                ));
            }
            None => {
                attached.push(Arc::clone(attachment));
                attached.len() - 1
            }
        };
        u32::try_from(index).map_err(|_| NOT_HERE.to_owned())
    })
}

/// Why a handle could not be encoded here.
pub(crate) const NOT_HERE: &str = "a Queue, Pipe, Event or Shared handle crosses only as an \
    argument of a job run by a local Pool or a Process, or inside a value sent through a Queue \
    or Pipe, on this machine: its descriptors cannot go into other bytes (a job's result, an \
    initializer's argument, serde_json, a cluster pool)";

/// Drops the descriptors of an item that was not written, keeping the first `keep`.
pub(crate) fn truncate(attached: &mut Attached, keep: usize) {
    attached.truncate(keep);
}

/// A chunk's attachments, as its writer holds them.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) all: Attached,
    /// How many there were before the last item.
    pub(crate) before_last: usize,
    /// Handles are refused (a reply).
    pub(crate) refuse: bool,
}

impl Held {
    pub(crate) fn refusing() -> Self {
        Held {
            refuse: true,
            ..Held::default()
        }
    }

    /// Drops those of the last item only.
    pub(crate) fn undo_last(&mut self) {
        self.all.truncate(self.before_last);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} attached", self.all.len())
    }
}

/// Runs `decode` with `fds` as the descriptors handles take back by index.
pub(crate) fn receiving<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    struct Clear(Option<Vec<Arc<OwnedFd>>>);
    impl Drop for Clear {
        fn drop(&mut self) {
            let previous = self.0.take();
            RECEIVED.with(|received| *received.borrow_mut() = previous);
        }
    }
    if fds.is_empty() && RECEIVED.with(|received| received.borrow().is_none()) {
        return decode();
    }
    let fds = fds.into_iter().map(Arc::new).collect();
    let previous = RECEIVED.with(|received| received.borrow_mut().replace(fds));
    let _clear = Clear(previous);
    decode()
}

/// The descriptor at `index` among those that came with the value being
/// decoded; an error (for `Deserialize`) when there is none.
pub(crate) fn received(index: u32) -> Result<Arc<OwnedFd>, String> {
    RECEIVED.with(|received| {
        let received = received.borrow();
        let fds = received.as_ref().ok_or_else(|| {
            "a Queue, Pipe, Event or Shared handle decoded where no descriptors came with the \
             bytes"
                .to_owned()
        })?;
        usize::try_from(index)
            .ok()
            .and_then(|index| fds.get(index))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "a handle names descriptor {index}, but {} came with the value",
                    fds.len()
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, BorrowedFd};

    struct Fd(OwnedFd);
    impl Attachment for Fd {
        fn fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    fn fd() -> Arc<dyn Attachment> {
        Arc::new(Fd(rustix::io::dup(std::io::stdin()).unwrap()))
    }

    #[test]
    fn attachments_are_collected_once_each_and_only_where_asked() {
        let (a, b) = (fd(), fd());
        assert!(attach(&a).unwrap_err().contains("crosses only"));
        let mut attached = Attached::new();
        let indices = collecting(&mut attached, || {
            [attach(&a), attach(&b), attach(&a)].map(Result::unwrap)
        });
        assert_eq!(indices, [0, 1, 0]);
        assert_eq!(attached.len(), 2);
        // Nested windows restore the outer one.
        let mut outer = Attached::new();
        collecting(&mut outer, || {
            attach(&a).unwrap();
            refusing(|| assert!(attach(&b).is_err()));
            let mut inner = Attached::new();
            collecting(&mut inner, || attach(&b).unwrap());
            assert_eq!(inner.len(), 1);
            assert_eq!(attach(&b).unwrap(), 1);
        });
        assert_eq!(outer.len(), 2);
        let too_many: Vec<_> = (0..=MAX_ATTACHED).map(|_| fd()).collect();
        let mut attached = Attached::new();
        let last = collecting(&mut attached, || {
            too_many
                .iter()
                .map(attach)
                .collect::<Vec<_>>()
                .pop()
                .unwrap()
        });
        assert!(last.unwrap_err().contains("more than"));
    }

    #[test]
    fn received_descriptors_are_found_by_index_only_while_decoding() {
        assert!(received(0).is_err());
        let fds = vec![rustix::io::dup(std::io::stdin()).unwrap()];
        receiving(fds, || {
            assert!(received(0).is_ok());
            assert!(received(1).unwrap_err().contains("1 came"));
            assert!(received(u32::MAX).is_err());
        });
        assert!(received(0).is_err());
    }
}
