//! Which processes hold a queue: a page of slots shared by all of them, so
//! that a `get` on an empty queue (or a `put` on a full one) can tell that
//! no other live process could ever end its wait.
//!
//! A slot is two words: `pid << 32 | kind`, and the process's start time
//! (`/proc/<pid>/stat`, so that a reused pid is not taken for the process
//! that registered). A process registers while it holds the queue
//! (`Holder`) and removes its slot when its last handle drops. A process
//! that dies keeps its slot, which every reader then finds dead: nothing
//! is ever waited for on behalf of a dead process. A task carrying the
//! queue to a worker registers that worker as `Transit` before it is
//! sent; the worker replaces it with its own slot when it decodes the
//! handle.
//!
//! Every process holding the queue can write the page; a compromised one
//! can make another's wait end early (an error) or last until its timeout,
//! nothing more: the words are atomics, and every one read is checked.

use std::sync::atomic::Ordering;

use crate::sys::{SharedWords, process_start};

const HOLDER: u64 = 1;
const TRANSIT: u64 = 2;

pub(super) struct Ledger {
    page: SharedWords,
}

impl Ledger {
    pub(super) fn new(page: SharedWords) -> Ledger {
        Ledger { page }
    }

    pub(super) fn page(&self) -> &SharedWords {
        &self.page
    }

    fn slots(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let words = self.page.u64s();
        (0..words.len() / 2).map(move |slot| {
            (
                slot,
                words[2 * slot].load(Ordering::Acquire),
                words[2 * slot + 1].load(Ordering::Acquire),
            )
        })
    }

    /// Takes a slot for `pid` as `kind`; `None` when every slot is taken
    /// by a live process (then this one is simply not seen).
    fn take(&self, pid: u32, kind: u64) -> Option<usize> {
        let words = self.page.u64s();
        let start = process_start(pid);
        let mine = (u64::from(pid) << 32) | kind;
        for pass in 0..2 {
            for (slot, word, started) in self.slots() {
                let free = word == 0 || (pass == 1 && !alive(word, started));
                if free
                    && words[2 * slot]
                        .compare_exchange(word, mine, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    words[2 * slot + 1].store(start.unwrap_or(0), Ordering::Release);
                    return Some(slot);
                }
            }
        }
        None
    }

    /// Registers this process as a holder: the slot to give back.
    pub(super) fn register(&self) -> Option<usize> {
        let pid = std::process::id();
        let slot = self.take(pid, HOLDER);
        // The handle arrived: this process is no longer in transit.
        let transit = (u64::from(pid) << 32) | TRANSIT;
        let words = self.page.u64s();
        for (other, word, _) in self.slots() {
            if word == transit {
                words[2 * other + 1].store(0, Ordering::Release);
                let _ = words[2 * other].compare_exchange(
                    transit,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
        slot
    }

    /// Gives back a slot of this process.
    pub(super) fn release(&self, slot: usize) {
        let words = self.page.u64s();
        let mine = (u64::from(std::process::id()) << 32) | HOLDER;
        if let (Some(word), Some(started)) = (words.get(2 * slot), words.get(2 * slot + 1)) {
            started.store(0, Ordering::Release);
            let _ = word.compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Process `pid` is about to be sent the queue.
    pub(super) fn in_transit_to(&self, pid: u32) {
        let _ = self.take(pid, TRANSIT);
    }

    /// Whether a live process other than this one holds the queue (or is
    /// being sent it).
    pub(super) fn others_alive(&self) -> bool {
        let me = u64::from(std::process::id());
        self.slots().any(|(_, word, started)| {
            word != 0 && !(word >> 32 == me && word & 0xffff_ffff == HOLDER) && alive(word, started)
        })
    }
}

/// Whether the process of a slot lives (a start time of 0: not yet known).
fn alive(word: u64, started: u64) -> bool {
    let Ok(pid) = u32::try_from(word >> 32) else {
        return false;
    };
    match process_start(pid) {
        None => false,
        Some(now) => started == 0 || started == now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_seen_until_they_leave_or_die() {
        let ledger = Ledger::new(SharedWords::create("procpool-test").unwrap());
        assert!(!ledger.others_alive());
        let mine = ledger.register().unwrap();
        assert!(!ledger.others_alive(), "this process is not another");
        // A live other process (this test's parent, say) in transit.
        let parent = std::os::unix::process::parent_id();
        ledger.in_transit_to(parent);
        assert!(ledger.others_alive());
        // A dead one is not seen: a child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let page = ledger.page().u64s();
        page[100].store((u64::from(pid) << 32) | HOLDER, Ordering::Release);
        // Garbage in a slot (a compromised holder) is no live process.
        page[102].store(u64::MAX, Ordering::Release);
        let words = ledger.page().u64s();
        for slot in 0..words.len() / 2 {
            if words[2 * slot].load(Ordering::Relaxed) == (u64::from(parent) << 32) | TRANSIT {
                words[2 * slot].store(0, Ordering::Relaxed);
            }
        }
        assert!(!ledger.others_alive());
        ledger.release(mine);
        // Every slot taken by the dead: they are reused.
        for slot in 0..words.len() / 2 {
            words[2 * slot].store((u64::from(pid) << 32) | HOLDER, Ordering::Relaxed);
        }
        assert!(ledger.register().is_some());
    }
}
