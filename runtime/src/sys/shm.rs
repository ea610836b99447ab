//! What the exchange handles (`crate::exchange`: `Queue`, `Pipe`, `Event`,
//! `Shared`) ask of the kernel: sealed memfds read in place, small shared
//! pages of atomic words, futex waits on them, `SOCK_SEQPACKET` pairs whose
//! datagrams carry descriptors, and whether a process still lives.
//!
//! # Access, and memory ordering
//!
//! A [`Sealed`] memfd is sealed against writing, shrinking and growing
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW`) before any other process
//! sees it, and one that comes from elsewhere is mapped only once those
//! seals are verified on it: then no process can change a byte of it any
//! more, so a `&[u8]` into it is sound, and reading a page can never raise
//! `SIGBUS`.
//!
//! A [`SharedWords`] page is writable by every process holding it (a
//! worker may be compromised). It is reached only through atomics (Rust's
//! model allows atomics shared with another process); what it holds is
//! untrusted and checked before use, and garbage there can make a wait end
//! early or late, never undefined behaviour.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fcntl_get_seals, fstat, ftruncate};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// The seals that make a memfd immutable.
const IMMUTABLE: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A memfd nobody can change any more, mapped read-only here.
pub(crate) struct Sealed {
    fd: OwnedFd,
    /// Null when `len` is 0 (nothing is mapped).
    base: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and nobody can write the file (it is
// sealed), so sharing or moving it between threads races with nothing.
unsafe impl Send for Sealed {}
// SAFETY: as above: `&self` only reads immutable bytes.
unsafe impl Sync for Sealed {}

impl Sealed {
    /// A new sealed memfd holding `bytes`, mapped read-only.
    pub(crate) fn create(name: &str, bytes: &[u8]) -> std::io::Result<Sealed> {
        let fd = memfd(name)?;
        ftruncate(&fd, bytes.len() as u64)?;
        let mut at = 0;
        while at < bytes.len() {
            match rustix::io::pwrite(&fd, &bytes[at..], at as u64) {
                Ok(0) => return Err(Errno::IO.into()),
                Ok(written) => at += written,
                Err(Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
        fcntl_add_seals(&fd, IMMUTABLE)?;
        Sealed::map(fd, bytes.len()).map_err(Into::into)
    }

    /// Maps a memfd received from another process: refused (with the
    /// reason) unless it is sealed against writing, shrinking and growing.
    pub(crate) fn open(fd: OwnedFd) -> Result<Sealed, String> {
        let seals = fcntl_get_seals(&fd)
            .map_err(|err| format!("a shared value that is not in a memfd ({err})"))?;
        let needed = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
        if !seals.contains(needed) {
            return Err(
                "a shared value in a memfd that is not sealed against writes and resizing".into(),
            );
        }
        let len = file_size(&fd)?;
        Sealed::map(fd, len).map_err(|err| format!("cannot map a shared value: {err}"))
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Sealed, Errno> {
        if len == 0 {
            return Ok(Sealed {
                fd,
                base: std::ptr::null(),
                len,
            });
        }
        // SAFETY: a new read-only shared mapping of a file that cannot
        // shrink (sealed), so every page stays backed while mapped.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        Ok(Sealed {
            fd,
            base: base.cast::<u8>().cast_const(),
            len,
        })
    }

    /// The bytes, read in place. Page-aligned.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.base.is_null() {
            return &[];
        }
        // SAFETY: `base` maps `len` readable bytes for as long as `self`
        // lives, and nobody can write them (the file is sealed against
        // writes, so no process has or can make a writable shared mapping).
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.len)
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: unmaps exactly this value's mapping; no borrow of it
            // outlives `self`.
            let _ = unsafe { munmap(self.base.cast_mut().cast(), self.len) };
        }
    }
}

/// The identity of the file behind `fd` (device, inode): the same memfd
/// received twice has the same one.
pub(crate) fn file_identity(fd: BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    let stat = fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// A page of atomic words shared by every process holding its memfd.
pub(crate) struct SharedWords {
    fd: OwnedFd,
    base: NonNull<u8>,
    /// Bytes mapped.
    size: usize,
}

// SAFETY: the mapping is reached only through atomics.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

const PAGE: usize = 4096;

impl SharedWords {
    /// A new zeroed page of `bytes` (at most a page) of words.
    pub(crate) fn create(name: &str) -> std::io::Result<SharedWords> {
        let fd = memfd(name)?;
        ftruncate(&fd, PAGE as u64)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        SharedWords::map(fd).map_err(Into::into)
    }

    /// Maps a page received from another process: refused unless it is a
    /// memfd of a page sealed against resizing.
    pub(crate) fn open(fd: OwnedFd) -> Result<SharedWords, String> {
        let seals = fcntl_get_seals(&fd)
            .map_err(|err| format!("a shared page that is not a memfd ({err})"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err("a shared page that is not sealed against resizing".into());
        }
        let size = file_size(&fd)?;
        if size != PAGE {
            return Err(format!("a shared page of {size} bytes"));
        }
        SharedWords::map(fd).map_err(|err| format!("cannot map a shared page: {err}"))
    }

    fn map(fd: OwnedFd) -> Result<SharedWords, Errno> {
        // SAFETY: a new shared mapping of a page-long file that cannot
        // shrink (sealed), so its page stays backed while mapped.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(SharedWords {
            fd,
            base,
            size: PAGE,
        })
    }

    /// The page as 64-bit words (a user of a page uses one view only).
    pub(crate) fn u64s(&self) -> &[AtomicU64] {
        // SAFETY: the page is mapped, aligned and `size` bytes long while
        // `self` lives; every access to it, here and in other processes,
        // is atomic.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.size / 8) }
    }

    /// The page as 32-bit words, for futexes.
    pub(crate) fn u32s(&self) -> &[AtomicU32] {
        // SAFETY: as for `u64s`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.size / 4) }
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::fmt::Debug for SharedWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWords")
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this value's mapping; no borrow of it
        // outlives `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.size) };
    }
}

/// Waits while `word` holds `expected`, at most `timeout`, across
/// processes (a shared futex); returns early on a wake, a signal, or a
/// change.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    use rustix::thread::futex;
    let timeout = rustix::thread::futex::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&timeout));
}

/// Wakes every process waiting on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), u32::MAX >> 1);
}

fn memfd(name: &str) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?)
}

fn file_size(fd: &OwnedFd) -> Result<usize, String> {
    let size = fstat(fd)
        .map_err(|err| format!("cannot stat a shared memfd: {err}"))?
        .st_size;
    usize::try_from(size).map_err(|_| "a memfd of negative size".to_owned())
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub(crate) fn packet_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Asks for a send buffer of `bytes` on `socket` (the kernel caps it at
/// `net.core.wmem_max`); best effort.
pub(crate) fn widen_send_buffer(socket: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(socket, bytes);
}

/// The most descriptors one datagram of a handle carries.
pub(crate) const PACKET_FDS: usize = 64;

/// Sends `bytes` as one datagram with `fds`, without blocking and without
/// `SIGPIPE`: `Err(AGAIN)` when the socket's buffer is full.
pub(crate) fn send_packet(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> rustix::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(PACKET_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::TOOMANYREFS);
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    loop {
        match sendmsg(socket, &[std::io::IoSlice::new(bytes)], &mut control, flags) {
            Err(Errno::INTR) => {}
            other => return other.map(drop),
        }
    }
}

/// One datagram read by [`recv_packet`].
pub(crate) struct Packet {
    /// How many bytes of the buffer it filled.
    pub(crate) len: usize,
    /// The descriptors it carried, close-on-exec.
    pub(crate) fds: Vec<OwnedFd>,
    /// It was longer than the buffer (and cut).
    pub(crate) truncated: bool,
    /// Descriptors were dropped (too many, or this process has no room).
    pub(crate) fds_dropped: bool,
}

/// Reads one datagram into `buffer` without blocking: `Err(AGAIN)` when
/// none is there. A closed peer with nothing queued reads as length 0.
pub(crate) fn recv_packet(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> rustix::io::Result<Packet> {
    recv_datagram(socket, buffer, rustix::net::RecvFlags::DONTWAIT)
}

/// Reads one datagram into `buffer` with up to [`PACKET_FDS`] descriptors
/// (close-on-exec), with `flags`; retried after signals. The one place
/// procpool takes descriptors from a socket (see also
/// [`recv_with_fd`](super::recv_with_fd)).
pub(super) fn recv_datagram(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    flags: rustix::net::RecvFlags,
) -> rustix::io::Result<Packet> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(PACKET_FDS))];
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
        return Ok(Packet {
            len: received.bytes,
            fds,
            truncated: received.flags.contains(ReturnFlags::TRUNC),
            fds_dropped: received.flags.contains(ReturnFlags::CTRUNC),
        });
    }
}

/// What [`wait_for`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The events asked for.
    Yes,
    /// The other end of the socket is closed (and, for reading, nothing is left).
    HungUp,
    /// Neither, within the time.
    No,
}

/// Waits until `fd` is ready for `events`, at most `timeout`.
pub(crate) fn wait_for(
    fd: BorrowedFd<'_>,
    events: rustix::event::PollFlags,
    timeout: Duration,
) -> std::io::Result<Ready> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&fd, events)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(0) | Err(Errno::INTR) => Ok(Ready::No),
        Ok(_) => {
            let revents = fds[0].revents();
            if revents.intersects(events) {
                Ok(Ready::Yes)
            } else if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
                Ok(Ready::HungUp)
            } else {
                Ok(Ready::No)
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// When process `pid` started (clock ticks after boot, from
/// `/proc/<pid>/stat`), or `None` if it is gone (or a zombie, or cannot
/// be read): with its start time, a pid names one process even after the
/// number is reused.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    // Field 22 is the start time; the state was field 3.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfds_hold_their_bytes_and_refuse_changes() {
        let sealed = Sealed::create("procpool-test", b"hello").unwrap();
        assert_eq!(sealed.bytes(), b"hello");
        let copy = rustix::io::fcntl_dupfd_cloexec(sealed.fd(), 3).unwrap();
        assert!(rustix::io::pwrite(&copy, b"J", 0).is_err());
        assert!(ftruncate(&copy, 1).is_err());
        let opened = Sealed::open(copy).unwrap();
        assert_eq!(opened.bytes(), b"hello");
        assert_eq!(
            file_identity(opened.fd()).unwrap(),
            file_identity(sealed.fd()).unwrap()
        );
        let empty = Sealed::create("procpool-test", b"").unwrap();
        assert_eq!(empty.bytes(), b"");
        // Not sealed, or not a memfd: refused.
        let unsealed = memfd("unsealed").unwrap();
        assert!(Sealed::open(unsealed).unwrap_err().contains("not sealed"));
        let socket = packet_pair().unwrap().0;
        assert!(Sealed::open(socket).unwrap_err().contains("not in a memfd"));
        let page = SharedWords::create("procpool-test").unwrap();
        let copy = rustix::io::fcntl_dupfd_cloexec(page.fd(), 3).unwrap();
        assert!(Sealed::open(copy).is_err());
    }

    #[test]
    fn shared_pages_are_shared() {
        use std::sync::atomic::Ordering;
        let page = SharedWords::create("procpool-test").unwrap();
        let copy = rustix::io::fcntl_dupfd_cloexec(page.fd(), 3).unwrap();
        let other = SharedWords::open(copy).unwrap();
        page.u64s()[3].store(42, Ordering::Release);
        assert_eq!(other.u64s()[3].load(Ordering::Acquire), 42);
        let wrong = memfd("wrong").unwrap();
        ftruncate(&wrong, 8192).unwrap();
        fcntl_add_seals(&wrong, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        assert!(SharedWords::open(wrong).unwrap_err().contains("8192"));
        // A futex wait with nothing to wake it ends at its timeout.
        let start = std::time::Instant::now();
        futex_wait(&page.u32s()[0], 0, Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(10));
    }

    #[test]
    fn a_process_start_names_live_processes_only() {
        let mine = process_start(std::process::id()).unwrap();
        assert_eq!(process_start(std::process::id()), Some(mine));
        assert_eq!(process_start(u32::MAX), None);
    }
}
