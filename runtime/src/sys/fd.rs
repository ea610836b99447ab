//! Descriptors: passing one beside a datagram, and keeping procpool's
//! own clear of the standard streams.

use std::os::fd::{BorrowedFd, OwnedFd};

/// A duplicate of `fd` numbered 3 or more (close-on-exec), so that setting
/// up a child's stdin, stdout and stderr cannot overwrite it.
pub(crate) fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(Into::into)
}

/// Sends a datagram of `bytes` carrying `fd` on a `SOCK_SEQPACKET` socket,
/// without blocking and without `SIGPIPE` when the other end is closed.
pub(crate) fn send_with_fd(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> rustix::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    sendmsg(socket, &[std::io::IoSlice::new(bytes)], &mut control, flags)?;
    Ok(())
}

/// One datagram read by [`recv_with_fd`].
pub(crate) struct Received {
    /// How many bytes of the buffer it filled (0: the other end is closed,
    /// or an empty datagram).
    pub(crate) len: usize,
    /// The one descriptor it carried, close-on-exec.
    pub(crate) fd: Option<OwnedFd>,
    /// Descriptors were dropped: more than one came, or this process could
    /// not take one (out of descriptors).
    pub(crate) fds_dropped: bool,
}

/// Reads one datagram into `buffer` (waiting for it unless `flags` has
/// `DONTWAIT`), with at most one descriptor; retried after signals. Any
/// more that came are closed and reported as dropped.
pub(crate) fn recv_with_fd(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    flags: rustix::net::RecvFlags,
) -> rustix::io::Result<Received> {
    let mut packet = super::shm::recv_datagram(socket, buffer, flags)?;
    let fds_dropped = packet.fds_dropped || packet.fds.len() > 1;
    let fd = if packet.fds.len() == 1 {
        packet.fds.pop()
    } else {
        None
    };
    Ok(Received {
        len: packet.len,
        fd,
        fds_dropped,
    })
}
