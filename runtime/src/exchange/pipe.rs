//! `Pipe`: two connected ends, one `SOCK_SEQPACKET` socket each.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::packet::{self, Received};
use super::wire::{self, Carry};
use crate::Error;
use crate::backend::Attachment;
use crate::sys::{self, Ready};

/// Makes duplex pipes, like Python's `multiprocessing.Pipe()`.
///
/// ```
/// use procpool::{pool_job, Connection, Pipe, Process};
///
/// #[pool_job]
/// fn echo_twice(end: Connection<String>) {
///     while let Ok(text) = end.recv() {
///         end.send(format!("{text} {text}")).unwrap();
///     }
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (here, there) = Pipe::new()?;
/// let mut process = Process::spawn(echo_twice, there)?;
/// here.send("hey".to_string())?;
/// assert_eq!(here.recv()?, "hey hey");
/// drop(here); // the process's recv then fails, and it returns
/// process.join()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub enum Pipe {}

impl Pipe {
    /// Two connected ends: what one sends, the other receives, both ways.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T: Serialize + DeserializeOwned + 'static>()
    -> Result<(Connection<T>, Connection<T>), Error> {
        let (a, b) =
            sys::packet_pair().map_err(|err| super::system("cannot create a Pipe", err))?;
        for end in [&a, &b] {
            sys::widen_send_buffer(end.as_fd(), 8 << 20);
        }
        Ok((Connection::from_fd(a), Connection::from_fd(b)))
    }
}

/// One end of a [`Pipe`]: [`send`](Connection::send) to the other end,
/// [`recv`](Connection::recv) what it sent.
///
/// Not `Clone`: an end belongs to one owner, which may move it to a job
/// (it is a job argument like any other). A value is one datagram (large
/// ones in a sealed memfd beside it), so a sender killed mid-`send` leaves
/// no half value. Once every copy of the other end is closed (its
/// process ended, or the handle was dropped), `recv` fails with
/// [`Error::Disconnected`] after the values already sent, and `send` fails
/// at once: never a hang on a dead peer. An end given to a pool's job is
/// held by the pool until that task ends (it may be retried); one given to
/// a [`Process`](crate::Process) belongs to that process alone.
pub struct Connection<T> {
    inner: Arc<OwnedFd>,
    _values: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

const WHAT: &str = "procpool::Connection";

impl<T: Serialize + DeserializeOwned + 'static> Connection<T> {
    fn from_fd(fd: OwnedFd) -> Self {
        Connection {
            inner: Arc::new(fd),
            _values: PhantomData,
        }
    }

    /// Sends `value` to the other end. Waits while the other end's unread
    /// values fill the socket's buffer; fails with [`Error::Disconnected`]
    /// once the other end is closed. A peer that is alive but never reads
    /// holds this up for as long as it lives: use
    /// [`send_timeout`](Connection::send_timeout) to bound the wait.
    pub fn send(&self, value: T) -> Result<(), Error> {
        self.send_until(value, None)
    }

    /// Like [`send`](Connection::send), but gives up after `timeout` with
    /// [`Error::Timeout`], the value not sent, when the other end's unread
    /// values still fill the buffer.
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), Error> {
        self.send_until(value, Some((timeout, crate::deadline::after(timeout))))
    }

    fn send_until(
        &self,
        value: T,
        limit: Option<(Duration, Option<Instant>)>,
    ) -> Result<(), Error> {
        let out = packet::encode(&value, WHAT)?;
        drop(value);
        loop {
            match out.send(self.inner.as_fd()) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => {
                    let mut slice = super::LOOK_AGAIN;
                    if let Some((timeout, Some(deadline))) = limit {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(Error::Timeout(timeout));
                        }
                        slice = slice.min(left);
                    }
                    if let Err(err) = sys::wait_for(self.inner.as_fd(), PollFlags::OUT, slice) {
                        return Err(super::system("Connection::send could not wait", err));
                    }
                }
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                    return Err(closed());
                }
                Err(err) => return Err(super::system("Connection::send could not send", err)),
            }
        }
    }

    /// Receives the next value, waiting as long as the other end is open.
    pub fn recv(&self) -> Result<T, Error> {
        self.recv_until(None)
    }

    /// Like [`recv`](Connection::recv), but gives up after `timeout` with
    /// [`Error::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.recv_until(Some((timeout, crate::deadline::after(timeout))))
    }

    /// Whether a value (or the other end's close) is there to read, waiting
    /// at most `timeout` for one: Python's `poll`.
    pub fn poll(&self, timeout: Duration) -> Result<bool, Error> {
        match sys::wait_for(self.inner.as_fd(), PollFlags::IN, timeout) {
            Ok(ready) => Ok(ready != Ready::No),
            Err(err) => Err(super::system("Connection::poll", err)),
        }
    }

    fn recv_until(&self, limit: Option<(Duration, Option<Instant>)>) -> Result<T, Error> {
        let mut buffer = vec![0u8; packet::BUFFER];
        loop {
            match packet::recv(&*self.inner, &mut buffer) {
                Ok(Some((len, fds))) => return packet::decode(&buffer[..len], fds, WHAT),
                Ok(None) => {}
                Err(Received::Closed) => return Err(closed()),
                Err(Received::Bad(why)) => return Err(Error::Ipc(format!("{WHAT}::recv: {why}"))),
                Err(Received::System(err)) => {
                    return Err(super::system("Connection::recv could not read", err));
                }
            }
            let mut slice = Duration::from_secs(3600);
            if let Some((timeout, Some(deadline))) = limit {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout));
                }
                slice = left;
            }
            if let Err(err) = sys::wait_for(self.inner.as_fd(), PollFlags::IN, slice) {
                return Err(super::system("Connection::recv could not wait", err));
            }
        }
    }
}

fn closed() -> Error {
    Error::Disconnected(
        "the other end of the pipe is closed (every copy of it was dropped, or its process \
         ended)"
            .into(),
    )
}

impl<T: Serialize + DeserializeOwned + 'static> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let carry = Arc::new(Carry {
            inner: Arc::clone(&self.inner),
            fd: |fd: &OwnedFd| -> BorrowedFd<'_> { fd.as_fd() },
            sent_to: None,
        }) as Arc<dyn Attachment>;
        wire::serialize(serializer, wire::CONNECTION, vec![carry], Vec::new())
    }
}

impl<'de, T: Serialize + DeserializeOwned + 'static> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (fds, _) = wire::deserialize(deserializer, wire::CONNECTION, 1, 0, "Connection")?;
        let fd = fds
            .into_iter()
            .next()
            .ok_or_else(|| D::Error::custom("a Connection without its descriptor"))?;
        // A socket of the right kind, or it is not an end of ours.
        match rustix::net::sockopt::socket_type(&fd) {
            Ok(rustix::net::SocketType::SEQPACKET) => Ok(Connection::from_fd(fd)),
            _ => Err(D::Error::custom(
                "a Connection whose descriptor is not a SOCK_SEQPACKET socket",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_and_a_closed_end_is_an_error() {
        let (a, b) = Pipe::new::<Vec<u32>>().unwrap();
        a.send(vec![1, 2]).unwrap();
        b.send(vec![3]).unwrap();
        assert_eq!(b.recv().unwrap(), [1, 2]);
        assert_eq!(a.recv().unwrap(), [3]);
        assert!(!a.poll(Duration::from_millis(5)).unwrap());
        assert!(matches!(
            a.recv_timeout(Duration::from_millis(20)),
            Err(Error::Timeout(_))
        ));
        b.send(vec![4]).unwrap();
        drop(b);
        // What was sent before the close still arrives; then the close.
        assert_eq!(a.recv().unwrap(), [4]);
        assert!(matches!(a.recv(), Err(Error::Disconnected(_))));
        assert!(matches!(a.send(vec![5]), Err(Error::Disconnected(_))));
    }

    #[test]
    fn a_send_to_a_peer_that_never_reads_ends_at_its_timeout() {
        let (a, b) = Pipe::new::<Vec<u8>>().unwrap();
        // Fill the buffer: small values until one would wait.
        let mut sent = 0;
        loop {
            match a.send_timeout(vec![7; 1024], Duration::from_millis(50)) {
                Ok(()) => sent += 1,
                Err(Error::Timeout(_)) => break,
                Err(other) => panic!("after {sent} values: {other:?}"),
            }
            assert!(sent < 1_000_000, "the buffer never filled");
        }
        assert!(sent > 0);
        // Once the peer reads, sending goes on; nothing was half sent.
        assert_eq!(b.recv().unwrap(), vec![7; 1024]);
        a.send_timeout(vec![8], Duration::from_secs(10)).unwrap();
        for _ in 1..sent {
            assert_eq!(b.recv().unwrap(), vec![7; 1024]);
        }
        assert_eq!(b.recv().unwrap(), vec![8]);
    }
}
