//! The caller's table of its tasks: those pending (sent, or waiting for
//! room in the window), the backlog of tasks not sent yet, and the
//! watermark below which every task is settled.

use std::collections::{HashMap, VecDeque};

use crate::backend::Task;

pub(super) struct Pending {
    /// The task, its items taken out to be sent.
    pub(super) task: Task,
    /// Its stream and entry id once sent, to withdraw it on `terminate`.
    pub(super) entry: Option<(String, String)>,
    /// Its bytes, while they count towards the window (sent, or being sent).
    pub(super) in_flight: usize,
    /// The task as sent, kept while it is in Redis (so at most `window`
    /// bytes of them, and one larger task), to send it again if a worker
    /// drops it unrun (see [`Shared::resend`]).
    pub(super) sent: Option<Queued>,
    /// How many times it was sent again.
    pub(super) resent: u64,
}

/// A task waiting in this process for room in the window.
pub(super) struct Queued {
    pub(super) seq: u64,
    pub(super) job: &'static str,
    pub(super) count: usize,
    pub(super) stream: String,
    pub(super) items: Vec<u8>,
    /// When the task stops being valid (signed with it).
    pub(super) expires_ms: u64,
    pub(super) tag: Option<Vec<u8>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) pending: HashMap<u64, Pending>,
    /// Tasks not sent yet because the window was full, in order.
    pub(super) backlog: VecDeque<Queued>,
    /// Bytes of tasks sent to Redis whose results did not come back yet.
    pub(super) in_flight: usize,
    pub(super) next_seq: u64,
    /// Every task numbered below this is settled (see [`State::low`]).
    low: u64,
    /// Settled tasks whose claims in Redis were not removed yet.
    pub(super) settled: Vec<u64>,
    pub(super) closed: bool,
}

impl State {
    /// Removes a pending task, freeing its room in the window.
    pub(super) fn take(&mut self, seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&seq)?;
        self.in_flight -= pending.in_flight;
        self.settled.push(seq);
        Some(pending)
    }

    /// Removes every pending task, and forgets the tasks not sent yet.
    pub(super) fn take_all(&mut self) -> Vec<Pending> {
        self.in_flight = 0;
        self.backlog.clear();
        self.settled.extend(self.pending.keys().copied());
        self.pending.drain().map(|(_, p)| p).collect()
    }

    /// The watermark: the lowest task number still pending, or the next
    /// one. Every task below it is settled (its result came, or its call
    /// ended), so workers drop any task numbered below it unrun. Numbers
    /// only grow, so this moves forward only, in O(1) amortized.
    pub(super) fn low(&mut self) -> u64 {
        while self.low < self.next_seq && !self.pending.contains_key(&self.low) {
            self.low += 1;
        }
        self.low
    }

    /// Whether a task of `bytes` may go to Redis now: the window always
    /// takes one task, however large, so that no call waits forever.
    pub(super) fn admits(&self, bytes: usize, window: usize) -> bool {
        self.in_flight == 0 || self.in_flight + bytes <= window
    }
}
