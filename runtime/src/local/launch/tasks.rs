//! A running worker's tasks: a chunk staged into its request region, the
//! task sent (with the descriptors of its handles), the answer awaited from
//! the worker's own pid only, and the reply read from its reply region.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use serde_bytes::ByteBuf;

use super::{Event, Lost, STEP, WorkerProcess};
use crate::local::channel::{ChannelError, Incoming, poll_any};
use crate::local::messages::{FromWorker, INLINE_MAX, Payload, ToWorker};
use crate::reply_log::{self, Partial};
use crate::sys::{CopyFailed, InPlace, Region};

impl WorkerProcess {
    /// A chunk's items as the next task will carry them: in the message
    /// when small, else copied into the request region. The chunk is
    /// `items` followed by `tail` (a large value's bytes, which are then
    /// copied once, from the caller's value into the region).
    ///
    /// A failure (no memory or file size left for the region) leaves the
    /// worker as it was: the region goes with the next large task that is
    /// sent.
    ///
    /// # Safety
    /// The worker is not reading the request region: it answered every task
    /// it was sent (or was sent none). The worker reads that region in
    /// place, relying on this.
    pub(crate) unsafe fn stage(&mut self, items: &[u8], tail: &[u8]) -> std::io::Result<Payload> {
        let len = items.len() + tail.len();
        if len <= INLINE_MAX {
            return Ok(Payload::Inline(ByteBuf::from([items, tail].concat())));
        }
        let requests = match &mut self.requests {
            Some(requests) => requests,
            none => none.insert(Region::create()?),
        };
        requests.reserve(len)?;
        requests.write_at(0, items)?;
        requests.write_at(items.len(), tail)?;
        Ok(Payload::Shared {
            len: len as u64,
            with_region: !self.requests_shared,
        })
    }

    /// The reply of `len` bytes the worker announced for task number
    /// `task`, where it lies in the worker's region (read only by copies).
    pub(crate) fn reply_in_place(
        &mut self,
        task: u64,
        len: u64,
    ) -> Result<InPlace<'_>, CopyFailed> {
        let replies = self.replies.as_mut().ok_or_else(|| {
            CopyFailed::Outside("a reply before the worker was initialised".to_owned())
        })?;
        reply_log::reply_in_place(replies, task, len)
    }

    /// Whether the worker says it sent its answer to task number `task`.
    pub(crate) fn answered(&self, task: u64) -> bool {
        self.replies
            .as_ref()
            .is_some_and(|replies| reply_log::is_answered(replies, task))
    }

    /// Items of task number `task` finished so far, while it runs.
    pub(crate) fn items_done(&self, task: u64) -> Option<usize> {
        reply_log::items_done(self.replies.as_ref()?, task)
    }

    /// What the worker had finished of task number `task` (of `count`
    /// items) when it died.
    pub(crate) fn partial(&mut self, task: u64, count: usize) -> Option<Partial> {
        reply_log::partial(self.replies.as_mut()?, task, count)
    }

    /// Sends one message and waits for the reply. `deadline` bounds the wait
    /// (the worker is killed when it passes); `abort` is checked while waiting.
    #[cfg(test)]
    pub(crate) fn call(
        &mut self,
        message: ToWorker,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<FromWorker, Lost> {
        self.send_attached(message, &[], deadline, abort)?;
        self.recv(deadline, abort)
    }

    /// Sends one message. Waits while the worker's queue is full (it is not
    /// reading), as long as it lives, until `deadline`, unless `abort`.
    ///
    /// `attached`: the descriptors of the handles among a task's items,
    /// sent after the request region (see `ToWorker::Run`).
    pub(crate) fn send_attached(
        &mut self,
        message: ToWorker,
        attached: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<(), Lost> {
        // The only other message with a descriptor: the first large task,
        // with the request region.
        let region = self.requests.take();
        let mut fds: Vec<BorrowedFd<'_>> = match &region {
            Some(region) if message.carries_region() => vec![region.fd()],
            _ => Vec::new(),
        };
        let with_region = !fds.is_empty();
        fds.extend_from_slice(attached);
        let sent = self.send_with(&message, &fds, deadline, abort);
        // The worker has the region once a message carrying it was sent.
        self.requests_shared |= sent.is_ok() && with_region;
        drop(fds);
        self.requests = region;
        sent
    }

    /// [`send`](WorkerProcess::send), with the descriptors the message expects.
    pub(super) fn send_with(
        &mut self,
        message: &ToWorker,
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<(), Lost> {
        loop {
            match self.channel.try_send_with(message, fds) {
                Ok(()) => return Ok(()),
                Err(ChannelError::WouldBlock) => {}
                Err(ChannelError::Closed) => return Err(Lost::Died(self.reap())),
                Err(err) => return Err(self.abandon(err)),
            }
            match self.wait(PollFlags::OUT, deadline, abort)? {
                Event::Readable | Event::Nothing => {}
                Event::Exited => return Err(Lost::Died(self.reap())),
            }
        }
    }

    /// Waits for the next reply; when `deadline` passes the worker is
    /// killed and the wait fails with [`Lost::TimedOut`].
    pub(crate) fn recv(
        &mut self,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<FromWorker, Lost> {
        match self.recv_until(deadline, abort)? {
            Some(reply) => Ok(reply),
            None => {
                self.kill_and_reap();
                Err(Lost::TimedOut)
            }
        }
    }

    /// Waits for the next reply until `deadline`; `Ok(None)` when it passed
    /// (the worker is left running).
    pub(crate) fn recv_until(
        &mut self,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<Option<FromWorker>, Lost> {
        loop {
            match self.channel.try_recv_with::<FromWorker>() {
                Ok(incoming) => return self.check_sender(incoming).map(Some),
                Err(ChannelError::WouldBlock) => {}
                Err(ChannelError::Closed) => return Err(Lost::Died(self.reap())),
                Err(err) => return Err(self.abandon(err)),
            }
            match self.wait(PollFlags::IN, deadline, abort) {
                Ok(Event::Readable) => {}
                Ok(Event::Exited) => {
                    // A reply sent just before exiting is already queued.
                    match self.channel.try_recv_with::<FromWorker>() {
                        Ok(incoming) => return self.check_sender(incoming).map(Some),
                        Err(ChannelError::WouldBlock | ChannelError::Closed) => {
                            return Err(Lost::Died(self.reap()));
                        }
                        Err(err) => return Err(self.abandon(err)),
                    }
                }
                Ok(Event::Nothing) => return Ok(None),
                Err(lost) => return Err(lost),
            }
        }
    }

    /// A message that arrived on the worker's channel, if the worker sent
    /// it. The kernel names the sender: anything from another process (a
    /// copy of the worker forked by a job, which shares its socket) is a
    /// protocol violation, except the notice such a copy sends before it
    /// exits, which is returned for the caller to match with its task; the
    /// worker is replaced after the task in hand either way.
    fn check_sender(&mut self, incoming: Incoming<FromWorker>) -> Result<FromWorker, Lost> {
        let sender = incoming.sender;
        if sender == Some(self.pid) {
            return Ok(incoming.message);
        }
        let who = match sender {
            Some(pid) => format!("process {pid}"),
            None => "a process the kernel did not name".to_owned(),
        };
        match incoming.message {
            FromWorker::Forked { task } => {
                self.forked_copy = Some((sender, task));
                Ok(FromWorker::Forked { task })
            }
            other => {
                self.kill_and_reap();
                Err(Lost::Protocol(format!(
                    "{who}, not the worker, sent {other:?} on its channel (a copy of the \
                     worker that a job forked?)"
                )))
            }
        }
    }

    /// The copy of this worker that a job forked, if one announced itself:
    /// a sentence saying so.
    pub(crate) fn forked_copy(&self) -> Option<String> {
        let (sender, task) = self.forked_copy?;
        let who = sender.map_or_else(|| "a process".to_owned(), |pid| format!("process {pid}"));
        Some(format!(
            "a job forked a copy of the worker ({who}, during task {task}) that returned into \
             procpool's loop; the copy exited without answering"
        ))
    }

    /// Gives up on the worker after a failed exchange: a message we cannot
    /// read means it is not speaking our protocol, and a system call that
    /// failed here leaves the exchange half done; either way, do not trust
    /// it further.
    fn abandon(&mut self, err: ChannelError) -> Lost {
        self.kill_and_reap();
        match err {
            ChannelError::Io(err) => Lost::System(err),
            other => Lost::Protocol(other.to_string()),
        }
    }

    /// Waits until the channel is ready for `events`, the worker exits, or
    /// `deadline` passes (`Event::Nothing`); fails with [`Lost::Aborted`]
    /// (the worker killed) when `abort` is set.
    pub(super) fn wait(
        &mut self,
        events: PollFlags,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<Event, Lost> {
        loop {
            if abort.load(Ordering::Acquire) {
                self.kill_and_reap();
                return Err(Lost::Aborted);
            }
            let step = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Event::Nothing);
                    }
                    left.min(STEP)
                }
                None => STEP,
            };
            let mut fds = [
                PollFd::from_borrowed_fd(self.channel.fd(), events),
                PollFd::new(&self.pidfd, PollFlags::IN),
            ];
            let ready = poll_any(&mut fds, Some(step));
            let (socket, exited) = (fds[0].revents(), fds[1].revents());
            match ready {
                Ok(0) => continue,
                Ok(_) if !socket.is_empty() => return Ok(Event::Readable),
                Ok(_) if !exited.is_empty() => return Ok(Event::Exited),
                Ok(_) => continue,
                Err(err) => {
                    self.kill_and_reap();
                    return Err(Lost::System(err));
                }
            }
        }
    }
}
