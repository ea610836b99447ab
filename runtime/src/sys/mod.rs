//! What procpool asks of the operating system, in one place: the command
//! that starts a worker and the variables it reads (here), processes and
//! signals ([`process`]), shared memory ([`region`]), descriptors
//! ([`fd`]), random tokens, and error texts that say what to do (`EMFILE`
//! means "raise `ulimit -n`").
//!
//! System calls go through `rustix`; `libc` only where rustix has no call
//! (`clone` with `CLONE_PARENT`, `sigaction`, `mallopt`, `_exit`). The
//! worker's channel (`local::channel`) makes its socket calls itself.
//!
//! A leaf module: it imports nothing else of the crate.

mod fd;
mod process;
mod region;
mod shm;

pub(crate) use fd::{Received, above_stdio, recv_with_fd, send_with_fd};
pub(crate) use process::{
    Exit, Forked, Inherited, arm_fork_guard, check_fork_guard, exit_now, fork_sibling,
    is_unreaped_child, keep_freed_memory, kill_and_reap, name_after_program, open_pidfd, peek_exit,
    reap, send_signal, signal_name, spawn_from_long_lived_thread, tie_to_parent,
};
#[cfg(feature = "cluster")]
pub(crate) use process::{host_name, signal_unreaped_child};
pub(crate) use region::{CopyFailed, InPlace, Region, ReplyCopy, Span, Word, word_bytes};
#[cfg(test)]
pub(crate) use region::{bytes_copied_out_here, bytes_written_here, whole_replies_copied_here};
pub(crate) use rustix::process::Signal;
pub(crate) use shm::{
    Ready, Sealed, SharedWords, file_identity, futex_wait, futex_wake_all, packet_pair,
    process_start, recv_packet, send_packet, wait_for, widen_send_buffer,
};

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

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

/// 128 bits from the kernel's random source, as 32 hex digits.
#[cfg(feature = "cluster")]
pub(crate) fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(err.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What to do about `err`, when there is something to do, as a sentence
/// that does not repeat the OS error's own text (an [`Error::System`]
/// returns that from `source()`).
///
/// [`Error::System`]: crate::Error::System
pub(crate) fn io_advice(err: &std::io::Error) -> Option<&'static str> {
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::MFILE) => Some(
            "too many open files in this process: raise its limit with `ulimit -n` \
             (RLIMIT_NOFILE), or close files it no longer needs",
        ),
        Some(Errno::NFILE) => Some("too many open files on this system: raise fs.file-max"),
        Some(Errno::NOMEM) => Some("out of memory or address space"),
        // What fork, clone and pthread_create say at the limit on
        // processes and threads (RLIMIT_NPROC counts both), or when the
        // system has no more tasks or memory for one.
        Some(Errno::AGAIN) => Some(
            "the limit on processes and threads was reached: raise this user's limit with \
             `ulimit -u` (RLIMIT_NPROC), or end processes it no longer needs; otherwise the \
             system is out of memory or process ids (kernel.threads-max, a cgroup's pids.max)",
        ),
        _ => None,
    }
}

/// `err` as one line of text, with what to do when there is something to
/// do: for messages that can only carry text (a worker's report to its
/// parent).
pub(crate) fn describe_io(err: &std::io::Error) -> String {
    match io_advice(err) {
        Some(advice) => format!("{advice} ({err})"),
        None => err.to_string(),
    }
}
