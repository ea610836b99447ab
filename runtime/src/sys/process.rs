//! Processes: forking a worker as a sibling, watching and reaping a child
//! through its pidfd, signals and their names, the parent-death signal,
//! the fork guard, the thread that starts processes, and what a child
//! inherits.
//!
//! A child is watched, signalled and reaped through its pidfd wherever one
//! is open: a pidfd names one process for good, while a pid can be reused
//! once the child is reaped (by this program, or by the kernel when the
//! program ignores `SIGCHLD`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::Ordering;

use rustix::fs::fstat;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags, munmap};
use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus, pidfd_open, pidfd_send_signal,
    waitid,
};

/// How a child process ended, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal of this number ended it.
    Signal(i32),
    /// Its status could not be read.
    Unknown,
    /// Its status could not be read because this program ignores `SIGCHLD`
    /// (or set `SA_NOCLDWAIT`): the kernel reaped it and kept none.
    SigchldIgnored,
}

impl Exit {
    fn of(status: &WaitIdStatus) -> Option<Exit> {
        if let Some(code) = status.exit_status() {
            Some(Exit::Code(code))
        } else {
            status.terminating_signal().map(Exit::Signal)
        }
    }
}

/// Sends `signal` to `pid`, a child of this process that nobody has
/// reaped yet (so its pid cannot have been reused), where no pidfd is open.
#[cfg(feature = "cluster")]
pub(crate) fn signal_unreaped_child(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// A pidfd for `pid`, a child of this process that has not been reaped
/// (so its pid cannot have been reused).
pub(crate) fn open_pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(Errno::SRCH)?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `signal` to the process of `pidfd`, which cannot reach another
/// process even if it was reaped meanwhile.
pub(crate) fn send_signal(pidfd: BorrowedFd<'_>, signal: Signal) {
    let _ = pidfd_send_signal(pidfd, signal);
}

/// Reaps the child of `pidfd`, waiting for it to end; how it ended.
pub(crate) fn reap(pidfd: BorrowedFd<'_>) -> Exit {
    loop {
        match waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED) {
            Ok(Some(status)) => return Exit::of(&status).unwrap_or(Exit::Unknown),
            Err(Errno::INTR) => continue,
            Ok(None) | Err(_) => return unreadable_exit(),
        }
    }
}

/// How the child of `pidfd` ended, if it has, without reaping it (so its
/// pid stays reserved).
pub(crate) fn peek_exit(pidfd: BorrowedFd<'_>) -> Option<Exit> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match waitid(WaitId::PidFd(pidfd), options) {
        Ok(Some(status)) => Exit::of(&status),
        Ok(None) => None,
        Err(_) => Some(unreadable_exit()),
    }
}

/// Kills and reaps `pid`, a child of this process that nothing else reaps
/// and nobody has reaped yet; how it ended.
pub(crate) fn kill_and_reap(pid: u32) -> Exit {
    match open_pidfd(pid) {
        Ok(pidfd) => {
            send_signal(pidfd.as_fd(), Signal::KILL);
            reap(pidfd.as_fd())
        }
        Err(_) => unreadable_exit(),
    }
}

/// Why a child's exit status could not be read: most often because this
/// program ignores `SIGCHLD` (or set `SA_NOCLDWAIT`), so the kernel reaped
/// the child itself and kept no status; that is worth saying, as it is
/// the program's setting and it can change it.
fn unreadable_exit() -> Exit {
    // rustix has no `sigaction` outside its experimental runtime API: libc.
    // SAFETY: an all-zero `sigaction` is a valid value to be overwritten.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new action, sigaction only reads the current one
    // into `current`, which outlives the call.
    let read = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) };
    let reaped_by_kernel =
        current.sa_sigaction == libc::SIG_IGN || current.sa_flags & libc::SA_NOCLDWAIT != 0;
    if read == 0 && reaped_by_kernel {
        Exit::SigchldIgnored
    } else {
        Exit::Unknown
    }
}

/// The name of signal number `signal` on Linux (`SIGKILL`), or `None`.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let index = usize::try_from(signal).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

/// Has the kernel send `signal` to this process when its parent dies, and
/// tells whether the parent is still alive, that is, still the process
/// whose pid the parent passed in [`PARENT_ENV`](super::PARENT_ENV) (read
/// by the caller).
///
/// The parent may be killed with SIGKILL, which runs no clean-up; the check
/// after the request closes the race where it died before. It compares
/// with the parent's own pid rather than with 1, because the parent may
/// itself be pid 1 (a container's entry point).
pub(crate) fn tie_to_parent(signal: Signal, parent: Option<String>) -> bool {
    let _ = rustix::process::set_parent_process_death_signal(Some(signal));
    let ppid = Pid::as_raw(rustix::process::getppid());
    match parent.and_then(|pid| pid.parse::<i32>().ok()) {
        Some(parent) => ppid == parent,
        None => ppid > 1,
    }
}

/// Ends this process at once with `code`: no destructor, `atexit` handler
/// or buffered output runs (a forked copy must not run the original's).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes any code and does not return; it touches no
    // state of this process that Rust relies on.
    unsafe { libc::_exit(code) }
}

/// Tells glibc's allocator to keep freed memory instead of returning it to
/// the kernel after every task.
///
/// A worker allocates and frees the same large buffers (decoded items, the
/// encoded reply) task after task. By default glibc serves blocks over
/// 128 KiB with `mmap` and trims the heap top, so every task paid a page
/// fault per 4 KiB again: measured, 4 400 faults per `map` of 10⁶ integers,
/// nearly all in workers. Like a Python worker, a procpool worker now keeps
/// its peak heap; `max_memory_per_child` bounds it.
pub(crate) fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called once,
    // before the worker runs any job.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Names this process (its `comm`: what `ps`, `top` and `pgrep` show)
/// after the program's executable, up to the kernel's 15 bytes. A worker
/// is started through `/proc/self/exe`, which would otherwise name it
/// `exe`, so `pgrep myservice` missed a program's workers.
pub(crate) fn name_after_program() {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Some(name) = path.file_name() else {
        return;
    };
    // A replaced executable reads as "name (deleted)".
    let name = name.as_bytes();
    let name = name.strip_suffix(b" (deleted)").unwrap_or(name);
    let name = &name[..name.len().min(15)];
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = rustix::thread::set_name(&name);
    }
}

/// This machine's host name, as the kernel has it.
#[cfg(feature = "cluster")]
pub(crate) fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_str()
        .map(str::to_owned)
        .unwrap_or_else(|_| "host".to_owned())
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
        None => exit_now(0),
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
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    waitid(WaitId::Pid(pid), options).is_ok()
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
