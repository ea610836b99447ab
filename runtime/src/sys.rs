//! What procpool asks of the operating system, in one place: the command
//! that starts a worker and the variables it reads, the thread that starts
//! processes, forking a worker as a sibling, passing descriptors, what a
//! child inherits, random tokens, the parent-death signal, fd flags,
//! shared memory, and error texts that say what to do (`EMFILE` means
//! "raise `ulimit -n`").
//!
//! A leaf module: it imports nothing else of the crate.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fcntl_get_seals, fstat, ftruncate};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// Set in a local worker's environment, to [`WORKER_ON_STDIN`] or
/// [`WORKER_TEMPLATE`]. A program's own constructors may check it to tell
/// that they run in a worker; in the template they run once, for all the
/// workers it forks.
pub(crate) const WORKER_ENV: &str = "__PROCPOOL_WORKER";
/// The value of [`WORKER_ENV`] in a worker: its channel to the parent is
/// its standard input.
pub(crate) const WORKER_ON_STDIN: &str = "stdin";
/// The value of [`WORKER_ENV`] in the worker template (`local::template`):
/// its standard input is its socket to the parent, on which it is asked to
/// fork workers.
pub(crate) const WORKER_TEMPLATE: &str = "template";
/// The pid of the process that started a worker or cluster worker.
pub(crate) const PARENT_ENV: &str = "__PROCPOOL_PARENT_PID";

static BOOTSTRAP_RAN: AtomicBool = AtomicBool::new(false);

/// Records that the start-up hook ran (called by it only).
pub(crate) fn mark_bootstrap_ran() {
    BOOTSTRAP_RAN.store(true, Ordering::Release);
}

/// Whether this binary's start-up hook ran. Reading it before starting
/// workers also makes the linker keep the object file holding the hook.
pub(crate) fn bootstrap_ran() -> bool {
    BOOTSTRAP_RAN.load(Ordering::Acquire)
}

/// Why no worker can start when [`bootstrap_ran`] is false.
pub(crate) const BOOTSTRAP_MISSING: &str = "procpool's start-up hook did not run in this \
    executable, so a worker could not tell it is a worker; this happens when the linker \
    dropped procpool's constructor (link procpool normally, without `-C link-dead-code=no` \
    tricks, and do not strip .init_array)";

/// The command that starts this executable again as a worker: the running
/// binary (`/proc/self/exe`, even if its file was replaced), with the same
/// `argv[0]`, `PARENT_ENV` set and stdin closed off. No local worker
/// marker: the caller adds the one for its kind of worker.
///
/// Nothing here needs code between `fork` and `exec` (`pre_exec`), so the
/// standard library can start the child with `posix_spawn`, whose cost does
/// not grow with the parent's memory: with `fork`, a parent holding 2 GiB
/// took 189 ms to start two workers instead of 1.6 ms.
pub(crate) fn exe_command() -> Command {
    let mut command = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        command.arg0(arg0);
    }
    command
        .env(PARENT_ENV, std::process::id().to_string())
        .env_remove(WORKER_ENV)
        .stdin(Stdio::null());
    command
}

/// Has the kernel send `signal` to this process when its parent dies, and
/// tells whether the parent is still alive, that is, still the process
/// whose pid the parent passed in [`PARENT_ENV`] (read by the caller).
///
/// The parent may be killed with SIGKILL, which runs no clean-up; the check
/// after the request closes the race where it died before. It compares
/// with the parent's own pid rather than with 1, because the parent may
/// itself be pid 1 (a container's entry point).
pub(crate) fn tie_to_parent(signal: nix::sys::signal::Signal, parent: Option<String>) -> bool {
    let _ = nix::sys::prctl::set_pdeathsig(signal);
    let ppid = nix::unistd::getppid().as_raw();
    match parent.and_then(|pid| pid.parse::<i32>().ok()) {
        Some(parent) => ppid == parent,
        None => ppid != 1,
    }
}

/// 128 bits from the kernel's random source, as 32 hex digits.
#[cfg(feature = "cluster")]
pub(crate) fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(err.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A duplicate of `fd` numbered 3 or more (close-on-exec), so that setting
/// up a child's stdin, stdout and stderr cannot overwrite it.
pub(crate) fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(Into::into)
}

/// `err` as a sentence that says what to do when there is something to do.
pub(crate) fn describe_io(err: &std::io::Error) -> String {
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::MFILE) => format!(
            "too many open files in this process ({err}): raise its limit with `ulimit -n` \
             (RLIMIT_NOFILE), or close files it no longer needs"
        ),
        Some(Errno::NFILE) => {
            format!("too many open files on this system ({err}): raise fs.file-max")
        }
        Some(Errno::NOMEM) => format!("out of memory or address space ({err})"),
        // What fork, clone and pthread_create say at the limit on
        // processes and threads (RLIMIT_NPROC counts both), or when the
        // system has no more tasks or memory for one.
        Some(Errno::AGAIN) => format!(
            "the limit on processes and threads was reached ({err}): raise this user's limit \
             with `ulimit -u` (RLIMIT_NPROC), or end processes it no longer needs; otherwise \
             the system is out of memory or process ids (kernel.threads-max, a cgroup's pids.max)"
        ),
        _ => err.to_string(),
    }
}

/// A mapped memfd shared with one worker: grown on demand, never shrunk.
///
/// Each worker gets two at its start (one for requests, one for replies)
/// and keeps them for life, so a payload costs one copy into pages that are
/// already there instead of a new file and a page fault per 4 KiB.
///
/// Regions are sealed against shrinking (and against further seals) before
/// anyone else sees them, and a region from elsewhere is mapped only with
/// that seal: reading a page that the other side cut off would raise
/// `SIGBUS` in the reader. Either side may grow the file; the other maps
/// the new size when it is told a payload reaches past its view.
///
/// # Access, and memory ordering
///
/// The other process can write every byte of a region at any moment, and
/// a worker may be compromised. Rust's model calls a reference to memory
/// that someone else writes meanwhile a data race: the compiler may read a
/// length twice, once for its bounds check and once for its use. So the
/// caller's process never holds a reference into a region:
/// - bytes go in and out only by raw copies ([`Region::write_at`],
///   [`Region::copy_out`]), bounds-checked against this process's own
///   view; what is copied out is private and untrusted, and decoded as such
///   (a region written meanwhile yields garbage, which decodes to an error,
///   never to undefined behaviour);
/// - the header words both sides update while the other runs
///   ([`Region::head`]) are `AtomicU64`s. A writer fills bytes, then stores
///   the counter that covers them with `Release`; a reader loads that
///   counter with `Acquire`, then copies. The answer on the socket (a
///   system call on each side) orders everything written before it too.
///   Counters are checked against each other and the view before use.
///
/// The one exception is a worker reading its request region in place
/// ([`Region::trusted_bytes`]): only its parent (the program) writes that
/// region, never while the worker runs the task, and the mapping is not
/// inherited by processes the worker's jobs fork (`MADV_DONTFORK`).
pub(crate) struct Region {
    fd: OwnedFd,
    base: NonNull<u8>,
    size: usize,
    /// The mapping is left out of processes this one forks.
    private_to_forks: bool,
}

// SAFETY: the mapping is memory owned by this value, reached only through
// raw copies and atomics (see the type's docs); moving it to another thread
// moves that ownership.
unsafe impl Send for Region {}
// SAFETY: `&self` methods only load atomics and copy bytes out by raw
// pointer, which other threads may do at once.
unsafe impl Sync for Region {}

/// What a new region holds before it first grows.
const FIRST_SIZE: usize = 64 << 10;

/// The words at the start of every region (see [`Region::head`]).
pub(crate) const HEAD_WORDS: usize = 8;
const HEAD_BYTES: usize = HEAD_WORDS * 8;

impl Region {
    /// A new zero-filled region, writable by this process, sealed so that
    /// nobody can shrink it.
    pub(crate) fn create() -> std::io::Result<Region> {
        let fd = rustix::fs::memfd_create(
            "procpool-region",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        ftruncate(&fd, FIRST_SIZE as u64)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        Region::map(fd, FIRST_SIZE, false).map_err(Into::into)
    }

    /// Maps a region received from another process. Refused (with the
    /// reason) unless it is a memfd sealed against shrinking. With
    /// `private_to_forks`, processes this one forks do not inherit the
    /// mapping (a worker's, so that a job's fork cannot write it).
    pub(crate) fn open(fd: OwnedFd, private_to_forks: bool) -> Result<Region, String> {
        let seals =
            fcntl_get_seals(&fd).map_err(|err| format!("a region that is not a memfd ({err})"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err("a region that is not sealed against shrinking".into());
        }
        let size = file_size(&fd)?;
        if size < HEAD_BYTES {
            return Err(format!(
                "a region of {size} bytes, too small for its header"
            ));
        }
        Region::map(fd, size, private_to_forks)
            .map_err(|err| format!("cannot map a region: {}", describe_io(&err.into())))
    }

    fn map(fd: OwnedFd, size: usize, private_to_forks: bool) -> Result<Region, Errno> {
        // SAFETY: a new shared mapping of a file sealed against shrinking, so
        // every page of it stays backed while mapped.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or(Errno::NOMEM)?;
        let region = Region {
            fd,
            base,
            size,
            private_to_forks,
        };
        region.keep_from_forks()?;
        Ok(region)
    }

    /// Applies `MADV_DONTFORK` to the mapping, if asked for.
    fn keep_from_forks(&self) -> Result<(), Errno> {
        if !self.private_to_forks {
            return Ok(());
        }
        // SAFETY: advice on exactly this value's mapping; it changes only
        // what a fork inherits, not this process's view.
        unsafe {
            rustix::mm::madvise(
                self.base.as_ptr().cast(),
                self.size,
                rustix::mm::Advice::LinuxDontFork,
            )
        }
    }

    /// The bytes mapped here.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.size
    }

    /// Makes at least `len` bytes writable here, growing the file (by at
    /// least half again, so a growing payload does not remap each time).
    /// On failure nothing changed: the region and its view are as before.
    #[inline]
    pub(crate) fn reserve(&mut self, len: usize) -> std::io::Result<()> {
        if len <= self.size {
            return Ok(());
        }
        self.grow(len)
    }

    #[cold]
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        let file = file_size(&self.fd).map_err(std::io::Error::other)?;
        if file < len {
            let grown = len
                .max(file + file / 2)
                .checked_next_multiple_of(1 << 16)
                .ok_or_else(|| std::io::Error::from(Errno::FBIG))?;
            // The file may have grown even where the mapping then cannot
            // (out of address space): harmless, as the view stays and the
            // other side maps only what it is told about.
            ftruncate(&self.fd, grown as u64)?;
        }
        self.remap()
    }

    /// Makes the first `len` bytes readable here, when the other side says
    /// it wrote that far: fails if the file is not that long.
    pub(crate) fn view(&mut self, len: usize) -> Result<(), String> {
        if len <= self.size {
            return Ok(());
        }
        if file_size(&self.fd)? < len {
            return Err(format!(
                "{len} bytes claimed in a shared region of {}",
                self.size
            ));
        }
        self.remap()
            .map_err(|err| format!("cannot map a shared region: {}", describe_io(&err)))
    }

    /// Maps the whole file, which has grown.
    fn remap(&mut self) -> std::io::Result<()> {
        let size = file_size(&self.fd).map_err(std::io::Error::other)?;
        // SAFETY: moves this value's own mapping; no reference into the old
        // one exists (see the type's docs). The file is at least `size`
        // long and never shrinks. On failure the old mapping stays.
        let base = unsafe {
            rustix::mm::mremap(
                self.base.as_ptr().cast(),
                self.size,
                size,
                rustix::mm::MremapFlags::MAYMOVE,
            )?
        };
        self.base = NonNull::new(base.cast::<u8>()).ok_or(Errno::NOMEM)?;
        self.size = size;
        self.keep_from_forks()?;
        Ok(())
    }

    /// The file descriptor, to send the region to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `at..at + len` lies in this process's view.
    fn covers(&self, at: usize, len: usize) -> bool {
        at.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Copies `bytes` into the region at `at` (which [`Region::reserve`]
    /// made room for). The other process may read or write the same bytes
    /// meanwhile: it then sees garbage, which it must check for anyway.
    #[inline(always)]
    pub(crate) fn write_at(&mut self, at: usize, bytes: &[u8]) -> std::io::Result<()> {
        if !self.covers(at, bytes.len()) {
            return Err(outside(at, bytes.len(), self.size));
        }
        // SAFETY: the destination lies in this value's mapping (checked
        // above) and cannot overlap `bytes`, which is private memory; a raw
        // copy creates no reference into the region.
        unsafe {
            let target = self.base.as_ptr().add(at);
            // A fixed-size copy for the usual one number per item: a
            // `memcpy` call per item was a tenth of a worker's time in a
            // map of them.
            match <&[u8; 8]>::try_from(bytes) {
                Ok(word) => target.cast::<[u8; 8]>().write_unaligned(*word),
                Err(_) => std::ptr::copy_nonoverlapping(bytes.as_ptr(), target, bytes.len()),
            }
        }
        Ok(())
    }

    /// Moves `len` bytes at `from` to `to`, inside the region.
    pub(crate) fn move_within(
        &mut self,
        from: usize,
        len: usize,
        to: usize,
    ) -> std::io::Result<()> {
        if !self.covers(from, len) || !self.covers(to, len) {
            return Err(outside(from.max(to), len, self.size));
        }
        // SAFETY: both ranges lie in this value's mapping (checked above);
        // `ptr::copy` allows them to overlap.
        unsafe {
            let base = self.base.as_ptr();
            std::ptr::copy(base.add(from), base.add(to), len);
        }
        Ok(())
    }

    /// Appends a private copy of the region's bytes `at..at + len` to
    /// `into` (the other process may be writing them: the copy is then
    /// garbage, to be found out by whoever decodes it). Fails, with nothing
    /// appended, if the range is outside this process's view or the memory
    /// for the copy cannot be had.
    pub(crate) fn copy_out(
        &self,
        at: usize,
        len: usize,
        into: &mut Vec<u8>,
    ) -> Result<(), CopyFailed> {
        if !self.covers(at, len) {
            return Err(CopyFailed::Outside(outside(at, len, self.size).to_string()));
        }
        into.try_reserve(len)
            .map_err(|_| CopyFailed::NoMemory(len))?;
        let old = into.len();
        // SAFETY: the source lies in this value's mapping (checked above),
        // the destination is `len` reserved bytes of `into`'s spare
        // capacity, and the two cannot overlap. Every byte up to the new
        // length is written before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(at),
                into.as_mut_ptr().add(old),
                len,
            );
            into.set_len(old + len);
        }
        Ok(())
    }

    /// The region's first `len` bytes, read in place.
    ///
    /// # Safety
    /// No other process writes these bytes while the slice lives: a
    /// worker's request region, which only its parent writes, and never
    /// while the worker runs the task those bytes belong to.
    pub(crate) unsafe fn trusted_bytes(&self, len: usize) -> Result<&[u8], String> {
        if !self.covers(0, len) {
            return Err(outside(0, len, self.size).to_string());
        }
        // SAFETY: `base` maps `size >= len` readable bytes for as long as
        // `self` lives; the caller vouches that nobody writes them meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr(), len) })
    }

    /// The first [`HEAD_WORDS`] 8-byte words, for counters both processes
    /// read and write while the other runs. Every region has them.
    #[inline]
    pub(crate) fn head(&self) -> &[std::sync::atomic::AtomicU64; HEAD_WORDS] {
        // SAFETY: every region maps at least HEAD_BYTES (`create` makes
        // more, `open` refuses less), page-aligned; atomics may be shared
        // with another process (every access to these words, on both
        // sides, is atomic), and the mapping lives as long as the borrow.
        unsafe {
            &*self
                .base
                .as_ptr()
                .cast::<[std::sync::atomic::AtomicU64; HEAD_WORDS]>()
        }
    }
}

/// Why [`Region::copy_out`] copied nothing.
#[derive(Debug)]
pub(crate) enum CopyFailed {
    /// The range is not in the region (described): the other side lied.
    Outside(String),
    /// This process has no memory for a copy of this many bytes.
    NoMemory(usize),
}

impl std::fmt::Display for CopyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyFailed::Outside(why) => f.write_str(why),
            CopyFailed::NoMemory(len) => write!(
                f,
                "out of memory for a private copy of {len} bytes of shared memory"
            ),
        }
    }
}

/// A range that lies outside a region's view.
#[cold]
fn outside(at: usize, len: usize, size: usize) -> std::io::Error {
    std::io::Error::other(format!(
        "{len} bytes at {at} are outside a shared region of {size} bytes"
    ))
}

/// The size of the file behind `fd`.
fn file_size(fd: &OwnedFd) -> Result<usize, String> {
    let size = fstat(fd)
        .map_err(|err| format!("cannot stat a shared region: {err}"))?
        .st_size;
    usize::try_from(size).map_err(|_| "a region of negative size".to_owned())
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this value's mapping; no borrow of it
        // outlives `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.size) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes)", self.size)
    }
}

/// The fork guard's word, in a private page the kernel wipes in any process
/// forked from this one (`MADV_WIPEONFORK`): 1 here, 0 in a fork's copy.
/// Null until [`arm_fork_guard`].
static FORK_GUARD: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicU64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// What a forked copy does when the guard finds it (set by
/// [`arm_fork_guard`]); it must not return.
static ON_FORKED_COPY: std::sync::OnceLock<fn() -> !> = std::sync::OnceLock::new();

/// Arms the fork guard in this process (a worker, before its first job):
/// from now on [`check_fork_guard`] calls `on_copy` in any process forked
/// from this one, and does nothing here. A job that forks without exec
/// leaves a copy of the worker that would otherwise return into the
/// worker's loop and answer for it.
///
/// Costs one load per check: no system call (`getpid` per item was too
/// much for a map of small items).
pub(crate) fn arm_fork_guard(on_copy: fn() -> !) -> std::io::Result<()> {
    use rustix::mm::{Advice, madvise, mmap_anonymous};
    let _ = ON_FORKED_COPY.set(on_copy);
    let page = 4096;
    // SAFETY: a new private anonymous mapping, owned by this function until
    // it is published below and never unmapped (it lives as long as the
    // process, one page).
    let word = unsafe {
        let base = mmap_anonymous(
            std::ptr::null_mut(),
            page,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?;
        if let Err(err) = madvise(base, page, Advice::LinuxWipeOnFork) {
            let _ = munmap(base, page);
            return Err(err.into());
        }
        base.cast::<std::sync::atomic::AtomicU64>()
    };
    // SAFETY: `word` points to the start of the page just mapped, aligned
    // and zero-filled, which is a valid AtomicU64.
    unsafe { (*word).store(1, Ordering::Relaxed) };
    FORK_GUARD.store(word, Ordering::Release);
    Ok(())
}

/// In a process forked (without exec) from one that armed the fork guard,
/// runs the guard's `on_copy`, which does not return; elsewhere nothing.
#[inline(always)]
pub(crate) fn check_fork_guard() {
    let word = FORK_GUARD.load(Ordering::Relaxed);
    // SAFETY: non-null only once it points to the guard's page, which is
    // never unmapped; a fork copies the pointer and wipes the page to zero,
    // so the word reads 0 exactly in a forked copy.
    if !word.is_null() && unsafe { (*word).load(Ordering::Relaxed) } == 0 {
        forked_copy();
    }
}

#[cold]
#[inline(never)]
fn forked_copy() {
    match ON_FORKED_COPY.get() {
        Some(on_copy) => on_copy(),
        // SAFETY: `_exit` ends this copy at once, running nothing of the
        // process it was copied from.
        None => unsafe { libc::_exit(0) },
    }
}

/// Which side of [`fork_sibling`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The calling process; the new one has this pid.
    Parent(u32),
}

/// Forks the calling process into a *sibling*: a copy whose parent is the
/// caller's parent (`clone` with `CLONE_PARENT`), so that the parent can
/// open a pidfd on it, reap it, read how it ended, and be the one whose
/// death kills it (`PR_SET_PDEATHSIG`, which the child must set itself:
/// a fork clears it).
///
/// A raw system call, not libc's `fork`: no `pthread_atfork` handlers run
/// and libc does not refresh its cached thread id in the child. Neither
/// matters to a process that has one thread and holds no lock.
///
/// # Safety
/// The calling process has exactly one thread, and no lock or other state
/// of that thread is in the middle of a change: the child starts with a
/// copy of it and nothing to finish the change. In the child, nothing may
/// rely on libc's cached thread id (process-shared, robust or
/// priority-inheriting pthread mutexes).
pub(crate) unsafe fn fork_sibling() -> std::io::Result<Forked> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    let no_pointer: libc::c_ulong = 0;
    // Without a new stack, `clone` returns in both processes on the same
    // (copied) stack, as `fork` does. Stack, tid and TLS pointers are all
    // zero, so only the flags' position differs between architectures.
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: a fork without shared memory; the caller vouches that the
    // child can run on a copy of this single-threaded process.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            no_pointer,
            no_pointer,
            no_pointer,
            no_pointer,
        )
    };
    #[cfg(target_arch = "s390x")]
    // SAFETY: as above (s390x takes the stack first, then the flags).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            no_pointer,
            flags,
            no_pointer,
            no_pointer,
            no_pointer,
        )
    };
    match pid {
        0 => Ok(Forked::Child),
        pid if pid > 0 => u32::try_from(pid)
            .map(Forked::Parent)
            .map_err(|_| std::io::Error::other("clone returned an invalid pid")),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether `pid` is a child of this process that has not been reaped
/// (running or a zombie). Reaps nothing.
pub(crate) fn is_unreaped_child(pid: u32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags).is_ok()
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

/// Starts `command` from one thread that lives as long as the program.
///
/// Linux sends `PR_SET_PDEATHSIG` when the *thread* that forked the child
/// exits, not the process. Forking from the caller's thread would kill a
/// child as soon as a short-lived thread that started it ends.
pub(crate) fn spawn_from_long_lived_thread(
    command: Command,
) -> std::io::Result<std::process::Child> {
    use std::sync::{Mutex, PoisonError, mpsc};
    type Request = (Command, mpsc::Sender<std::io::Result<std::process::Child>>);
    /// The spawner thread's queue, and the process it runs in: a process
    /// forked from that one (without exec) has a copy of the queue but not
    /// the thread, and starts its own.
    static SPAWNER: Mutex<Option<(u32, mpsc::Sender<Request>)>> = Mutex::new(None);
    let gone = || std::io::Error::other("procpool's spawner thread is gone");
    let (reply, response) = mpsc::channel();
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        let own_pid = std::process::id();
        let requests = match &mut *spawner {
            Some((pid, requests)) if *pid == own_pid => requests,
            slot => {
                let (requests, incoming) = mpsc::channel::<Request>();
                std::thread::Builder::new()
                    .name("procpool-spawner".into())
                    .spawn(move || {
                        // Spawning consumes the command, and with it this
                        // process's copies of the descriptors it passes on.
                        for (mut command, reply) in incoming {
                            let _ = reply.send(command.spawn());
                        }
                    })?;
                &mut slot.insert((own_pid, requests)).1
            }
        };
        requests.send((command, reply)).map_err(|_| gone())?;
    }
    response.recv().unwrap_or_else(|_| Err(gone()))
}

/// What a process started now would inherit from this one and what a
/// program may change while it runs: environment, working directory,
/// where stdout and stderr go, user and group ids, resource limits.
/// Compared, not interpreted: two equal values start equal children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inherited {
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    cwd: Option<std::path::PathBuf>,
    /// Device and inode of stdout and stderr.
    output: [Option<(u64, u64)>; 2],
    ids: [u32; 4],
    limits: Vec<rustix::process::Rlimit>,
}

impl Inherited {
    /// This process's values now.
    pub(crate) fn now() -> Inherited {
        use rustix::process::{Resource, getegid, geteuid, getgid, getrlimit, getuid};
        let identity = |fd: BorrowedFd<'_>| fstat(fd).ok().map(|s| (s.st_dev, s.st_ino));
        Inherited {
            env: std::env::vars_os().collect(),
            cwd: std::env::current_dir().ok(),
            output: [
                identity(rustix::stdio::stdout()),
                identity(rustix::stdio::stderr()),
            ],
            ids: [
                getuid().as_raw(),
                geteuid().as_raw(),
                getgid().as_raw(),
                getegid().as_raw(),
            ],
            limits: [
                Resource::Nofile,
                Resource::Nproc,
                Resource::As,
                Resource::Data,
                Resource::Stack,
                Resource::Core,
                Resource::Cpu,
                Resource::Fsize,
                Resource::Memlock,
            ]
            .into_iter()
            .map(getrlimit)
            .collect(),
        }
    }
}
