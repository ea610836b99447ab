//! A worker's channel: one `SOCK_SEQPACKET` socket pair per worker, one
//! datagram per message, large payloads in sealed shared memory.
//!
//! This replaces ipc-channel for the local pool because every part of it
//! that could hang, panic or leak sits on this path: its one-shot server
//! (a socket in `TMPDIR`, accepted without close-on-exec, held open by any
//! process that connects), its fragment reassembly (a blocking `recvmsg`
//! no timeout reaches) and its assertions on `mmap` and reconnects. Here:
//! - the pair is made with close-on-exec and the child's end is inherited
//!   by that child only (see `local::launch`), so nothing else can connect
//!   and no other process holds a worker's socket;
//! - a message is a single datagram of at most [`FRAME_MAX`] bytes, read
//!   without blocking once `poll` says it is there: no read waits for a
//!   second part, and garbage is a decode error, never a wait;
//! - descriptors travel only where a message expects them (the worker's
//!   shared regions, once, with `Init`), and a message with any other
//!   number of them is refused; every system call's failure is an error
//!   value.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg,
    sendmsg, socketpair,
};

use crate::local::messages::{INLINE_MAX, Message};

/// The largest datagram either side accepts: an inline payload and its message.
const FRAME_MAX: usize = INLINE_MAX + 4096;

/// The most descriptors any message carries: a region and a task's handles.
const MAX_FDS: usize = 1 + crate::codec::attach::MAX_ATTACHED;

/// What went wrong on a channel.
#[derive(Debug)]
pub(crate) enum ChannelError {
    /// The other end is closed.
    Closed,
    /// Nothing can be sent or read now (non-blocking calls only).
    WouldBlock,
    /// The other side sent something that is not a message of ours (described).
    Violation(String),
    /// A system call failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("the channel is closed"),
            ChannelError::WouldBlock => f.write_str("the channel is not ready"),
            ChannelError::Violation(what) => write!(f, "{what}"),
            ChannelError::Io(err) => write!(f, "{}", crate::sys::describe_io(err)),
        }
    }
}

impl From<Errno> for ChannelError {
    fn from(errno: Errno) -> Self {
        match errno {
            Errno::AGAIN => ChannelError::WouldBlock,
            Errno::PIPE | Errno::CONNRESET => ChannelError::Closed,
            other => ChannelError::Io(other.into()),
        }
    }
}

/// One end of a worker's socket pair.
pub(crate) struct Channel {
    socket: OwnedFd,
    /// Receive buffer, reused for every message.
    buffer: Vec<u8>,
}

/// One message read from a channel.
pub(crate) struct Incoming<M> {
    pub(crate) message: M,
    /// The descriptors it carried, as many as the message expects.
    pub(crate) fds: Vec<OwnedFd>,
    /// The process that sent it, as the kernel saw it (`SCM_CREDENTIALS`,
    /// which a sender cannot forge): known on the parent's end of a pair.
    pub(crate) sender: Option<u32>,
}

/// A new socket pair: the end this process keeps, and the raw end for the child.
/// Both are close-on-exec; only the child that is meant to have its end clears
/// the flag, in its own copy (`local::launch`).
///
/// The kernel attaches the sender's pid to every message arriving on this
/// process's end (`SO_PASSCRED`, set before the other end exists anywhere
/// else), so a reply proves which process sent it.
pub(crate) fn pair() -> std::io::Result<(Channel, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_passcred(&ours, true)?;
    Ok((Channel::new(ours), theirs))
}

impl Channel {
    /// Wraps a connected `SOCK_SEQPACKET` socket.
    pub(crate) fn new(socket: OwnedFd) -> Self {
        Channel {
            socket,
            buffer: vec![0; FRAME_MAX],
        }
    }

    /// The socket, for `poll`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends one message without blocking: [`ChannelError::WouldBlock`]
    /// when the other side's queue is full.
    pub(crate) fn try_send<M: Message>(&self, message: &M) -> Result<(), ChannelError> {
        self.try_send_with(message, &[])
    }

    /// [`try_send`](Channel::try_send) with the descriptors the message
    /// expects beside it.
    pub(crate) fn try_send_with<M: Message>(
        &self,
        message: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        // postcard, not the codec: messages are procpool's own fixed types
        // (users' values travel inside them as opaque codec bytes), and
        // postcard needs no tags for them (see runtime/Cargo.toml).
        let bytes = postcard::to_stdvec(message)
            .map_err(|err| ChannelError::Io(std::io::Error::other(err)))?;
        if bytes.len() > FRAME_MAX {
            return Err(ChannelError::Io(std::io::Error::other(format!(
                "a message of {} bytes is over the channel's limit of {FRAME_MAX}",
                bytes.len()
            ))));
        }
        if fds.len() != message.descriptors() {
            return Err(ChannelError::Io(std::io::Error::other(format!(
                "internal error: a message expecting {} descriptors sent with {}",
                message.descriptors(),
                fds.len()
            ))));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        // MSG_NOSIGNAL: a closed peer is an error here, not a SIGPIPE that
        // would kill a caller that did not ignore it.
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        sendmsg(&self.socket, &[IoSlice::new(&bytes)], &mut control, flags)?;
        Ok(())
    }

    /// Sends one message, waiting as long as the other side's queue is full.
    /// Used by workers, whose parent always reads.
    pub(crate) fn send<M: Message>(&self, message: &M) -> Result<(), ChannelError> {
        loop {
            match self.try_send(message) {
                Err(ChannelError::WouldBlock) => {
                    wait(&self.socket, PollFlags::OUT, None).map_err(ChannelError::Io)?;
                }
                other => return other,
            }
        }
    }

    /// Reads one message if one is there, without blocking.
    pub(crate) fn try_recv<M: Message>(&mut self) -> Result<M, ChannelError> {
        self.try_recv_with().map(|incoming| incoming.message)
    }

    /// Reads one message, the descriptors that came with it (as many as
    /// the message expects: anything else is refused) and its sender.
    pub(crate) fn try_recv_with<M: Message>(&mut self) -> Result<Incoming<M>, ChannelError> {
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut self.buffer)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut sender = None;
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                RecvAncillaryMessage::ScmCredentials(credentials) => {
                    sender = u32::try_from(credentials.pid.as_raw_nonzero().get()).ok();
                }
                _ => {}
            }
        }
        if received.bytes == 0 && fds.is_empty() {
            // An empty read is how a closed peer shows, but also what an
            // empty datagram reads as: only a hung-up socket is closed.
            let mut fds = [PollFd::new(&self.socket, PollFlags::RDHUP)];
            let hung_up = poll_any(&mut fds, Some(std::time::Duration::ZERO))
                .map(|_| {
                    fds[0]
                        .revents()
                        .intersects(PollFlags::HUP | PollFlags::RDHUP)
                })
                .unwrap_or(true);
            return Err(if hung_up {
                ChannelError::Closed
            } else {
                ChannelError::Violation("an empty message".into())
            });
        }
        if received.flags.contains(ReturnFlags::TRUNC) {
            return Err(ChannelError::Violation(format!(
                "a message over the {FRAME_MAX}-byte limit arrived"
            )));
        }
        if received.flags.contains(ReturnFlags::CTRUNC) && fds.len() < MAX_FDS {
            // The kernel drops a descriptor it cannot install (this
            // process is at its limit) and says so only by this flag.
            return Err(ChannelError::Io(std::io::Error::from(Errno::MFILE)));
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ChannelError::Violation(format!(
                "a message carried more than {MAX_FDS} file descriptors"
            )));
        }
        let message: M = postcard::from_bytes(&self.buffer[..received.bytes])
            .map_err(|err| ChannelError::Violation(format!("an undecodable message ({err})")))?;
        if fds.len() != message.descriptors() {
            return Err(ChannelError::Violation(format!(
                "a message that takes {} file descriptors came with {}",
                message.descriptors(),
                fds.len()
            )));
        }
        Ok(Incoming {
            message,
            fds,
            sender,
        })
    }

    /// Waits for a message and reads it. Used by workers, which have
    /// nothing else to do.
    #[cfg(test)]
    pub(crate) fn recv<M: Message>(&mut self) -> Result<M, ChannelError> {
        self.recv_with().map(|incoming| incoming.message)
    }

    /// [`recv`](Channel::recv), with the descriptors that came along.
    pub(crate) fn recv_with<M: Message>(&mut self) -> Result<Incoming<M>, ChannelError> {
        loop {
            // Waiting first: a worker asks for its next message right after
            // answering, when it is rarely there yet.
            wait(&self.socket, PollFlags::IN, None).map_err(ChannelError::Io)?;
            match self.try_recv_with() {
                Err(ChannelError::WouldBlock) => {}
                other => return other,
            }
        }
    }
}

/// Waits until `fd` is ready for `events` (or hung up), at most `timeout`
/// (`None`: no limit). True when it is ready.
pub(crate) fn wait(
    fd: &impl AsFd,
    events: PollFlags,
    timeout: Option<std::time::Duration>,
) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(fd, events)];
    Ok(poll_any(&mut fds, timeout)? > 0)
}

/// `poll` over `fds`, retried after signals; the number of ready entries.
pub(crate) fn poll_any(
    fds: &mut [PollFd<'_>],
    timeout: Option<std::time::Duration>,
) -> std::io::Result<usize> {
    let timeout = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    loop {
        match poll(fds, timeout.as_ref()) {
            Err(Errno::INTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::messages::{FromWorker, Payload, ToWorker};
    use crate::sys::Region;

    fn raw_send(to: &Channel, bytes: &[u8], fd: Option<BorrowedFd<'_>>) {
        let fds;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if let Some(fd) = fd {
            fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        sendmsg(
            to.fd(),
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn both_ends() -> (Channel, Channel) {
        let (ours, theirs) = pair().unwrap();
        (ours, Channel::new(theirs))
    }

    #[test]
    fn messages_and_their_descriptors_arrive_whole() {
        let (mut parent, mut worker) = both_ends();
        let large: Vec<u8> = (0..INLINE_MAX).map(|i| i as u8).collect();
        for bytes in [vec![1, 2, 3], large] {
            let task = ToWorker::Run {
                task: 7,
                job: "job".into(),
                count: 1,
                items: Payload::Inline(bytes.clone().into()),
                last: false,
                attached: 0,
            };
            parent.send(&task).unwrap();
            match worker.recv::<ToWorker>().unwrap() {
                ToWorker::Run {
                    task: 7,
                    items: Payload::Inline(items),
                    ..
                } => assert_eq!(&items[..], &bytes[..]),
                other => panic!("{other:?}"),
            }
        }
        let replies = Region::create().unwrap();
        let init = ToWorker::Init {
            name: "w".into(),
            initializer: None,
        };
        parent.try_send_with(&init, &[replies.fd()]).unwrap();
        let incoming = worker.recv_with::<ToWorker>().unwrap();
        assert_eq!(incoming.fds.len(), 1);
        // A message is never sent with descriptors it does not expect.
        assert!(
            parent
                .try_send_with(&ToWorker::Exit, &[replies.fd()])
                .is_err()
        );
        assert!(parent.try_send_with(&init, &[]).is_err());
        assert!(matches!(
            parent.try_recv::<FromWorker>(),
            Err(ChannelError::WouldBlock)
        ));
        drop(worker);
        assert!(matches!(
            parent.recv::<FromWorker>(),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn what_is_not_a_message_of_ours_is_refused() {
        let (mut parent, worker) = both_ends();
        let violation = |parent: &mut Channel| match parent.try_recv::<FromWorker>() {
            Err(ChannelError::Violation(why)) => why,
            other => panic!("expected a violation, got {other:?}"),
        };
        // Over the frame limit: cut by the kernel, refused here.
        raw_send(&worker, &vec![1; FRAME_MAX + 1], None);
        assert!(violation(&mut parent).contains("limit"));
        // Undecodable, and empty.
        raw_send(&worker, &[0xff, 0xff], None);
        assert!(violation(&mut parent).contains("undecodable"));
        raw_send(&worker, &[], None);
        assert!(violation(&mut parent).contains("empty"));
        // A descriptor on a message that takes none.
        let ready = postcard::to_stdvec(&FromWorker::Ready).unwrap();
        raw_send(&worker, &ready, Some(worker.fd()));
        assert!(violation(&mut parent).contains("takes 0 file descriptors"));
        let done = postcard::to_stdvec(&FromWorker::Done { task: 1, len: 10 }).unwrap();
        let region = Region::create().unwrap();
        raw_send(&worker, &done, Some(region.fd()));
        assert!(violation(&mut parent).contains("came with 1"));
        // The channel still works after each refusal.
        worker.send(&FromWorker::Ready).unwrap();
        assert!(matches!(parent.recv::<FromWorker>(), Ok(FromWorker::Ready)));
    }

    #[test]
    fn only_sealed_memfds_become_regions() {
        let socket = pair().unwrap().1;
        assert!(Region::open(socket, false).unwrap_err().contains("memfd"));
        let unsealed =
            rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(
            Region::open(unsealed, false)
                .unwrap_err()
                .contains("not sealed")
        );
        // A region grown on one side is seen whole on the other once asked.
        let mut ours = Region::create().unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(ours.fd(), 3).unwrap();
        let mut theirs = Region::open(fd, true).unwrap();
        let size = theirs.len();
        ours.reserve(size * 3).unwrap();
        ours.write_at(size * 3 - 1, &[42]).unwrap();
        assert!(ours.write_at(size * 3, &[1]).is_err());
        assert!(theirs.view(size * 3).is_ok());
        let mut copy = Vec::new();
        theirs.copy_out(size * 3 - 1, 1, &mut copy).unwrap();
        assert_eq!(copy, [42]);
        assert!(theirs.copy_out(size * 3 - 1, 2, &mut copy).is_err());
        assert!(theirs.copy_out(usize::MAX, 2, &mut copy).is_err());
        assert_eq!(copy, [42]);
        assert!(theirs.view(usize::MAX / 2).is_err());
    }
}
