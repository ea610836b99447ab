//! `Event`: a flag in a shared page, waited on with a futex.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::wire::{self, Carry};
use crate::Error;
use crate::backend::Attachment;
use crate::sys::{self, SharedWords};

/// A flag processes wait on, like Python's `multiprocessing.Event`: to tell
/// workers to stop, for example.
///
/// One word of shared memory, set and cleared with atomic stores; waiting
/// is a futex wait on it, woken by [`set`](Event::set). There is no lock,
/// so no process can die holding one. Clone it, or pass it to a job, for
/// another handle to the same flag.
///
/// ```
/// use std::time::Duration;
/// use procpool::{pool_job, Event, Process};
///
/// #[pool_job]
/// fn work_until_stopped(stop: Event) -> u64 {
///     let mut rounds = 0;
///     while !stop.wait_timeout(Duration::from_millis(5)) {
///         rounds += 1;
///     }
///     rounds
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let stop = Event::new()?;
/// let mut worker = Process::spawn(work_until_stopped, stop.clone())?;
/// std::thread::sleep(Duration::from_millis(50));
/// stop.set();
/// let _rounds = worker.join()?;
/// assert!(stop.is_set());
/// # Ok(())
/// # }
/// ```
///
/// There is no wait without a timeout: waiting for an event whose setters
/// are all gone would last for ever. An `Event` cannot be sent to a
/// cluster pool ([`Error::Misuse`]).
#[derive(Clone)]
pub struct Event {
    inner: Arc<SharedWords>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, Error> {
        let page = SharedWords::create("procpool-event")
            .map_err(|err| super::system("cannot create an Event", err))?;
        Ok(Event {
            inner: Arc::new(page),
        })
    }

    fn word(&self) -> &std::sync::atomic::AtomicU32 {
        &self.inner.u32s()[0]
    }

    /// Sets the flag and wakes every process waiting on it.
    pub fn set(&self) {
        self.word().store(1, Ordering::Release);
        sys::futex_wake_all(self.word());
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.word().store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set, at most `timeout`: whether it is set.
    /// `Duration::MAX` waits without a limit.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline::after(timeout);
        loop {
            let word = self.word().load(Ordering::Acquire);
            if word != 0 {
                return true;
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            sys::futex_wait(self.word(), word, left);
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let carry = Arc::new(Carry {
            inner: Arc::clone(&self.inner),
            fd: |page: &SharedWords| -> BorrowedFd<'_> { page.fd() },
            sent_to: None,
        }) as Arc<dyn Attachment>;
        wire::serialize(serializer, wire::EVENT, vec![carry], Vec::new())
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (fds, _) = wire::deserialize(deserializer, wire::EVENT, 1, 0, "Event")?;
        let page = fds
            .into_iter()
            .next()
            .ok_or_else(|| D::Error::custom("an Event without its descriptor"))?;
        let page = SharedWords::open(page).map_err(D::Error::custom)?;
        Ok(Event {
            inner: Arc::new(page),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_wait() {
        let event = Event::new().unwrap();
        assert!(!event.is_set());
        assert!(!event.wait_timeout(Duration::from_millis(10)));
        let other = event.clone();
        let thread = std::thread::spawn(move || other.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        event.set();
        assert!(thread.join().unwrap());
        assert!(event.is_set() && event.wait_timeout(Duration::ZERO));
        event.clear();
        assert!(!event.is_set());
    }
}
