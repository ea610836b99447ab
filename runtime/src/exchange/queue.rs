//! `Queue<T>`: multi-producer, multi-consumer, between processes.
//!
//! One `SOCK_SEQPACKET` socket pair. Values go one way, one datagram each
//! (see `packet.rs`): a `put` sends on end A, a `get` reads on end B, and
//! the kernel queues and hands out each datagram whole, so there is no
//! lock. A bounded queue's room is counted by credit datagrams going the
//! other way, B to A: `n` at the start, one taken by each `put` *after* it
//! sent its value, one given back by each `get`. So a process that dies
//! between the two steps can only loosen the bound (a `put` killed after
//! sending) or make one `put` wait for the next `get` (a `get` killed
//! after reading): never stop values from flowing.
//!
//! Which processes hold the queue is in a shared page (`ledger.rs`): a wait
//! that no other live process could end fails with `Error::Disconnected`.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ledger::Ledger;
use super::packet::{self, Received};
use super::wire::{self, Carry};
use crate::Error;
use crate::backend::Attachment;
use crate::sys::{self, Ready, SharedWords};

/// The largest bound: its credits must fit in a socket's buffer.
const MAX_BOUND: usize = 4096;

/// A queue between processes, like Python's `multiprocessing.Queue`.
///
/// Clone it to hand it to a [`Process`](crate::Process) or a pool's job
/// (it is a job argument like any other: `#[pool_job] fn f(q: Queue<u64>)`);
/// every clone, in every process, is the same queue. Values cross with the
/// same codec as job arguments, so any serde type works, and handles
/// (another `Queue`, a [`Shared`](crate::Shared)) travel inside values too.
/// Values from one producer arrive in the order it put them.
///
/// ```
/// use procpool::{pool_job, Process, Queue};
///
/// #[pool_job]
/// fn produce(queue: Queue<u64>, n: u64) {
///     for i in 0..n {
///         queue.put(i * i).unwrap();
///     }
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let queue = Queue::new()?;
/// let mut process = Process::spawn(produce, (queue.clone(), 4))?;
/// let got: Vec<u64> = (0..4).map(|_| queue.get()).collect::<Result<_, _>>()?;
/// assert_eq!(got, [0, 1, 4, 9]);
/// process.join()?;
/// # Ok(())
/// # }
/// ```
///
/// # Robustness
///
/// - A value is one datagram, which the kernel queues whole or not at all,
///   and there is no lock: a producer killed in the middle of `put` leaves
///   every value before it and nothing of the one it was sending; the
///   queue keeps working for everyone else. Values of more than 32 KiB
///   (encoded) travel in a sealed memfd passed beside the datagram.
/// - Joining a producer before draining its queue does not deadlock as in
///   Python: a value put is already in the kernel's queue, not in a feeder
///   thread of the producer. (An unbounded queue holds what the kernel's
///   socket buffer holds, several MiB; past that, `put` waits as for a
///   bounded queue.)
/// - [`get`](Queue::get) on an empty queue, or [`put`](Queue::put) on a
///   full one, ends with [`Error::Disconnected`] once no other live process
///   holds the queue (or is being sent it) and no other clone of it lives
///   in this process: then nothing could ever end the wait. Threads that
///   share one handle by reference are not seen: give each thread its own
///   clone. Use [`get_timeout`](Queue::get_timeout) to bound a wait
///   otherwise.
/// - Dropping the last handle in every process frees the queue, and any
///   values left in it.
///
/// A queue cannot be sent to a cluster pool: submitting a job with one
/// fails with [`Error::Misuse`].
pub struct Queue<T> {
    inner: Arc<Inner>,
    _values: PhantomData<fn(T) -> T>,
}

struct Inner {
    /// Values are sent here; credits arrive here.
    a: OwnedFd,
    /// Values arrive here; credits are sent here.
    b: OwnedFd,
    ledger: Ledger,
    /// This process's slot in the ledger.
    slot: Option<usize>,
    /// The bound, for a bounded queue.
    bound: Option<usize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.ledger.release(slot);
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: Arc::clone(&self.inner),
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("bound", &self.inner.bound)
            .finish_non_exhaustive()
    }
}

const WHAT: &str = "procpool::Queue";

impl<T: Serialize + DeserializeOwned + 'static> Queue<T> {
    /// A new queue without a bound of its own (the kernel's socket buffer,
    /// several MiB, is one).
    pub fn new() -> Result<Queue<T>, Error> {
        Queue::create(None)
    }

    /// A new queue bounded to `n` values (1 to 4096): a
    /// [`put`](Queue::put) that finds it full places its value, then waits
    /// until a [`get`](Queue::get) makes room, so the queue holds at most
    /// `n` values plus one per producer waiting in `put`. (Unlike Python's
    /// `put`, which waits first: a producer killed while it waits must not
    /// take room with it, and one killed between placing and waiting can
    /// only loosen the bound by one, never stop the values.)
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let queue = procpool::Queue::bounded(2)?;
    /// queue.put("a".to_string())?;
    /// queue.put("b".to_string())?;
    /// assert_eq!(queue.get()?, "a");
    /// # Ok(())
    /// # }
    /// ```
    pub fn bounded(n: usize) -> Result<Queue<T>, Error> {
        if n == 0 || n > MAX_BOUND {
            return Err(Error::Config(format!(
                "a bounded Queue holds 1 to {MAX_BOUND} values, not {n}; use Queue::new() for \
                 more"
            )));
        }
        Queue::create(Some(n))
    }

    fn create(bound: Option<usize>) -> Result<Queue<T>, Error> {
        let (a, b) =
            sys::packet_pair().map_err(|err| super::system("cannot create a Queue", err))?;
        // As much room as the system gives, for an unbounded queue's values.
        sys::widen_send_buffer(a.as_fd(), 8 << 20);
        let page = SharedWords::create("procpool-queue")
            .map_err(|err| super::system("cannot create a Queue", err))?;
        if let Some(n) = bound {
            sys::widen_send_buffer(b.as_fd(), 8 << 20);
            for _ in 0..n {
                sys::send_packet(b.as_fd(), &[packet::TAG_CREDIT], &[])
                    .map_err(|err| super::system("cannot fill a bounded Queue's credits", err))?;
            }
        }
        Ok(Queue::from_parts(a, b, Ledger::new(page), bound))
    }

    fn from_parts(a: OwnedFd, b: OwnedFd, ledger: Ledger, bound: Option<usize>) -> Queue<T> {
        let slot = ledger.register();
        Queue {
            inner: Arc::new(Inner {
                a,
                b,
                ledger,
                slot,
                bound,
            }),
            _values: PhantomData,
        }
    }

    /// Puts `value` at the end of the queue. On a bounded queue that is
    /// full, the value is placed, then `put` waits until a `get` makes room;
    /// it fails with [`Error::Disconnected`] if no other process could ever
    /// do that (the value stays in the queue).
    pub fn put(&self, value: T) -> Result<(), Error> {
        let out = packet::encode(&value, WHAT)?;
        drop(value);
        loop {
            match out.send(self.inner.a.as_fd()) {
                Ok(()) => break,
                Err(rustix::io::Errno::AGAIN) => {
                    self.wait(self.inner.a.as_fd(), PollFlags::OUT, None, "put")?;
                }
                Err(err) => return Err(super::system("Queue::put could not send", err)),
            }
        }
        if self.inner.bound.is_some() {
            self.take_credit()?;
        }
        Ok(())
    }

    /// Takes one credit: waits for room in a bounded queue.
    fn take_credit(&self) -> Result<(), Error> {
        let mut buffer = [0u8; 2];
        loop {
            match packet::recv(&self.inner.a, &mut buffer) {
                Ok(Some((1, fds))) if buffer[0] == packet::TAG_CREDIT && fds.is_empty() => {
                    return Ok(());
                }
                // Anything else on the credit side is not ours: ignored.
                Ok(Some(_)) | Err(Received::Bad(_)) => {}
                Ok(None) => {
                    self.wait(self.inner.a.as_fd(), PollFlags::IN, None, "put")?;
                }
                Err(Received::Closed) => return Ok(()),
                Err(Received::System(err)) => {
                    return Err(super::system("Queue::put could not wait for room", err));
                }
            }
        }
    }

    /// Takes the first value, waiting for one as long as some other process
    /// could still put one (see [`Queue`] for when the wait ends with
    /// [`Error::Disconnected`]).
    pub fn get(&self) -> Result<T, Error> {
        self.get_until(None)
    }

    /// Like [`get`](Queue::get), but gives up after `timeout` with
    /// [`Error::Timeout`]; nothing is taken then.
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn main() -> Result<(), procpool::Error> {
    /// let queue = procpool::Queue::<u8>::new()?;
    /// let waiting = queue.clone(); // another handle: the wait is not hopeless
    /// match queue.get_timeout(Duration::from_millis(10)) {
    ///     Err(procpool::Error::Timeout(waited)) => assert_eq!(waited, Duration::from_millis(10)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # drop(waiting);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.get_until(Some((timeout, crate::deadline::after(timeout))))
    }

    fn get_until(&self, limit: Option<(Duration, Option<Instant>)>) -> Result<T, Error> {
        let mut buffer = vec![0u8; packet::BUFFER];
        loop {
            match packet::recv(&self.inner.b, &mut buffer) {
                Ok(Some((len, fds))) => {
                    if self.inner.bound.is_some() {
                        // Room for one more; a full credit side (a bound
                        // loosened by a producer's death) needs none.
                        let _ = sys::send_packet(self.inner.b.as_fd(), &[packet::TAG_CREDIT], &[]);
                    }
                    return packet::decode(&buffer[..len], fds, WHAT);
                }
                Ok(None) => self.wait(self.inner.b.as_fd(), PollFlags::IN, limit, "get")?,
                Err(Received::Closed) => {
                    return Err(Error::Disconnected("the queue was closed".into()));
                }
                Err(Received::Bad(why)) => {
                    return Err(Error::Ipc(format!("{WHAT}::get: {why}")));
                }
                Err(Received::System(err)) => {
                    return Err(super::system("Queue::get could not read", err));
                }
            }
        }
    }

    /// Waits until `fd` is ready for `events`, until `limit` if given, or
    /// until no other process could make it ready.
    fn wait(
        &self,
        fd: BorrowedFd<'_>,
        events: PollFlags,
        limit: Option<(Duration, Option<Instant>)>,
        op: &str,
    ) -> Result<(), Error> {
        loop {
            let mut slice = super::LOOK_AGAIN;
            if let Some((timeout, deadline)) = limit {
                match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
                    Some(left) if left.is_zero() => return Err(Error::Timeout(timeout)),
                    Some(left) => slice = slice.min(left),
                    None => {}
                }
            }
            match sys::wait_for(fd, events, slice) {
                Ok(Ready::Yes | Ready::HungUp) => return Ok(()),
                Ok(Ready::No) => {}
                Err(err) => return Err(super::system("a Queue could not wait", err)),
            }
            if Arc::strong_count(&self.inner) == 1 && !self.inner.ledger.others_alive() {
                // One last look: a value (or room) may have come just before
                // the last holder left.
                if let Ok(Ready::Yes) = sys::wait_for(fd, events, Duration::ZERO) {
                    return Ok(());
                }
                let state = if op == "get" { "empty" } else { "full" };
                return Err(Error::Disconnected(format!(
                    "Queue::{op} would wait for ever: the queue is {state} and no other live \
                     process holds it (nor any other handle of this process)"
                )));
            }
        }
    }

    fn carried(&self) -> Vec<Arc<dyn Attachment>> {
        let carry = |fd: for<'a> fn(&'a Inner) -> BorrowedFd<'a>, sent: Option<fn(&Inner, u32)>| {
            Arc::new(Carry {
                inner: Arc::clone(&self.inner),
                fd,
                sent_to: sent,
            }) as Arc<dyn Attachment>
        };
        vec![
            carry(|inner| inner.a.as_fd(), None),
            carry(|inner| inner.b.as_fd(), None),
            carry(
                |inner| inner.ledger.page().fd(),
                Some(|inner, pid| inner.ledger.in_transit_to(pid)),
            ),
        ]
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bound = self.inner.bound.map_or(0, |n| n as u64);
        wire::serialize(serializer, wire::QUEUE, self.carried(), vec![bound])
    }
}

impl<'de, T: Serialize + DeserializeOwned + 'static> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (fds, words) = wire::deserialize(deserializer, wire::QUEUE, 3, 1, "Queue")?;
        let mut fds = fds.into_iter();
        let (Some(a), Some(b), Some(page)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(D::Error::custom("a Queue without its descriptors"));
        };
        let page = SharedWords::open(page).map_err(D::Error::custom)?;
        let bound = match words.first().copied().unwrap_or(0) {
            0 => None,
            n => Some(
                usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= MAX_BOUND)
                    .ok_or_else(|| D::Error::custom("a Queue with an impossible bound"))?,
            ),
        };
        Ok(Queue::from_parts(a, b, Ledger::new(page), bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_out_in_order_and_waits_end() {
        let queue = Queue::<String>::new().unwrap();
        for i in 0..100 {
            queue.put(format!("value {i}")).unwrap();
        }
        for i in 0..100 {
            assert_eq!(queue.get().unwrap(), format!("value {i}"));
        }
        // Alone, an empty queue's get cannot be answered: an error, not a hang.
        let start = Instant::now();
        assert!(matches!(queue.get(), Err(Error::Disconnected(_))));
        assert!(start.elapsed() < Duration::from_secs(5));
        // With another handle, it waits until its timeout.
        let other = queue.clone();
        assert!(matches!(
            queue.get_timeout(Duration::from_millis(50)),
            Err(Error::Timeout(d)) if d == Duration::from_millis(50)
        ));
        drop(other);
    }

    #[test]
    fn a_bounded_queue_holds_its_bound() {
        assert!(Queue::<u8>::bounded(0).is_err());
        assert!(Queue::<u8>::bounded(MAX_BOUND + 1).is_err());
        let queue = Queue::<u64>::bounded(3).unwrap();
        for i in 0..3 {
            queue.put(i).unwrap();
        }
        // Full, and nobody else to make room: the put's value is placed,
        // and the wait for room fails.
        assert!(matches!(queue.put(3), Err(Error::Disconnected(why)) if why.contains("full")));
        let got: Vec<u64> = (0..4).map(|_| queue.get().unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3]);
        // A consumer thread with its own clone makes room as it goes.
        let consumer = queue.clone();
        let thread =
            std::thread::spawn(move || (0..50).map(|_| consumer.get().unwrap()).sum::<u64>());
        for i in 0..50 {
            queue.put(i).unwrap();
        }
        assert_eq!(thread.join().unwrap(), (0..50).sum());
    }

    #[test]
    fn large_values_travel_in_sealed_memory() {
        let queue = Queue::<Vec<u8>>::new().unwrap();
        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        queue.put(big.clone()).unwrap();
        queue.put(vec![1, 2, 3]).unwrap();
        assert_eq!(queue.get().unwrap(), big);
        assert_eq!(queue.get().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_queue_travels_inside_a_queue() {
        let outer = Queue::<Queue<u32>>::new().unwrap();
        let inner = Queue::<u32>::new().unwrap();
        outer.put(inner.clone()).unwrap();
        let received = outer.get().unwrap();
        received.put(5).unwrap();
        assert_eq!(inner.get().unwrap(), 5);
    }
}
