//! A worker's end: whether it is alive, asking it to exit, killing it,
//! and reaping it (always, on drop at the latest).

use std::os::fd::AsFd;
use std::sync::PoisonError;
use std::time::Duration;

use rustix::event::PollFlags;

use super::{EXIT_GRACE, WorkerProcess};
use crate::error::ExitCause;
use crate::local::channel::{self};
use crate::local::messages::ToWorker;
use crate::sys::{self};

impl WorkerProcess {
    /// How the process ended, if it has, without reaping it (so its pid stays
    /// reserved and signals cannot reach a stranger).
    pub(crate) fn peek_exit(&self) -> Option<ExitCause> {
        if let Some(cause) = self.reaped {
            return Some(cause);
        }
        sys::peek_exit(self.pidfd.as_fd()).map(ExitCause::from)
    }

    /// Whether the process is still running (not exited, whether reaped or not).
    pub(crate) fn is_alive(&self) -> bool {
        self.reaped.is_none()
            && channel::wait(&self.pidfd, PollFlags::IN, Some(Duration::ZERO))
                .is_ok_and(|exited| !exited)
    }

    /// Resident memory of the process (`VmRSS` in `/proc/<pid>/status`).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Sends `signal` unless the process has already been reaped; through
    /// the pidfd, so that a pid the kernel reaped (a program that ignores
    /// SIGCHLD) and gave to a stranger is never signalled.
    pub(crate) fn signal(&self, signal: sys::Signal) {
        if self.reaped.is_none() {
            sys::send_signal(self.pidfd.as_fd(), signal);
        }
    }

    /// Waits up to `limit` for the process to end by itself, kills it if it
    /// has not, and reaps it.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> ExitCause {
        if let Some(cause) = self.reaped {
            return cause;
        }
        if !channel::wait(&self.pidfd, PollFlags::IN, Some(limit)).unwrap_or(false) {
            self.kill();
        }
        self.reap()
    }

    /// Asks the worker to exit and reaps it; kills it if it does not comply quickly.
    pub(crate) fn shutdown(mut self) {
        if self.channel.try_send(&ToWorker::Exit).is_ok() {
            self.reap();
        } else {
            self.kill_and_reap();
        }
    }

    pub(crate) fn kill_and_reap(&mut self) -> ExitCause {
        if self.reaped.is_none() {
            self.kill();
        }
        self.reap()
    }

    /// SIGKILL through the pidfd, which cannot reach another process.
    pub(super) fn kill(&self) {
        sys::send_signal(self.pidfd.as_fd(), sys::Signal::KILL);
    }

    /// Waits up to [`EXIT_GRACE`] for the child to end, kills it if it
    /// lingers, and reaps it.
    pub(super) fn reap(&mut self) -> ExitCause {
        if let Some(cause) = self.reaped {
            return cause;
        }
        let slot = self.slot.take();
        let mut registered = slot
            .as_ref()
            .map(|slot| slot.0.lock().unwrap_or_else(PoisonError::into_inner));
        if !channel::wait(&self.pidfd, PollFlags::IN, Some(EXIT_GRACE)).unwrap_or(false) {
            self.kill();
        }
        let cause = ExitCause::from(sys::reap(self.pidfd.as_fd()));
        self.reaped = Some(cause);
        if let Some(pid) = registered.as_deref_mut() {
            *pid = None;
        }
        cause
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
