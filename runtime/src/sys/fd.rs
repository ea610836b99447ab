//! Descriptors: passing one beside a datagram, and keeping procpool's
//! own clear of the standard streams.

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;

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
/// `DONTWAIT`), with at most one descriptor; retried after signals.
pub(crate) fn recv_with_fd(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    flags: rustix::net::RecvFlags,
) -> rustix::io::Result<Received> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = match recvmsg(
            socket,
            &mut [std::io::IoSliceMut::new(buffer)],
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(Errno::INTR) => continue,
            other => other?,
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let fds_dropped = received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > 1;
        let fd = if fds.len() == 1 { fds.pop() } else { None };
        return Ok(Received {
            len: received.bytes,
            fd,
            fds_dropped,
        });
    }
}
