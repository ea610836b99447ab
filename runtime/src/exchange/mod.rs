//! The exchange half of `multiprocessing`: [`Queue`], [`Pipe`] and its
//! [`Connection`]s, [`Event`], and [`Shared`] read-only memory.
//!
//! Each handle is made of descriptors (sockets, memfds), so it reaches a
//! worker only with a task: a worker is forked from a template started
//! with the program and inherits nothing made later. While a task's items
//! are encoded, a handle's `Serialize` gives its descriptors to the chunk
//! and writes their indices (`crate::codec::attach`); the local backend
//! sends them beside the task (`SCM_RIGHTS`), and the worker's decoding
//! takes them back by index. A value put in a [`Queue`] or sent on a
//! [`Connection`] carries handles the same way. Where descriptors cannot
//! go (a cluster pool, a job's result, `serde_json`), encoding a handle
//! fails with an [`Error`](crate::Error) that says so.
//!
//! What keeps these robust, for every handle:
//! - a value is one `SOCK_SEQPACKET` datagram, which the kernel queues
//!   whole or not at all: a process killed in a `put` leaves no half value,
//!   and no lock exists for it to die holding (large values ride in a
//!   sealed memfd passed beside the datagram);
//! - every wait is bounded (`*_timeout`), or ends with
//!   [`Error::Disconnected`](crate::Error::Disconnected) once procpool can
//!   see that nothing can end it (the other end closed, or no other live
//!   process holds the queue);
//! - bytes from another process are copied out of the socket and decoded
//!   as untrusted; shared memory is read in place only when sealed.

mod event;
mod ledger;
mod packet;
mod pipe;
mod queue;
mod shared;
mod wire;

pub use event::Event;
pub use pipe::{Connection, Pipe};
pub use queue::Queue;
pub use shared::{Plain, Shared};

pub(crate) use shared::{cached_count, cached_liveness, sweep_cache};

use crate::Error;

/// The error of a task for a cluster pool that carries a handle.
#[cfg(feature = "cluster")]
pub(crate) fn refused_by_cluster(job: &str) -> Error {
    Error::Misuse(format!(
        "job `{job}`: a Queue, Pipe, Event or Shared cannot be sent to a cluster pool: it is \
         made of descriptors of this machine, which another host cannot use; pass such \
         handles to a local Pool or a Process, and send plain values to the cluster"
    ))
}

/// How long a wait sleeps before it looks again whether it can still end.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// An `Error::System` for a failed system call of a handle.
fn system(context: &str, err: impl Into<std::io::Error>) -> Error {
    Error::system(context, err.into())
}
