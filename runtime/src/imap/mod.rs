//! Lazy iteration: `imap` and `imap_unordered`.
//!
//! Unlike Python's `imap`, which reads its whole input before yielding
//! (so an endless input hangs), input is pulled only as results are
//! consumed, with a bounded number of chunks in flight.
//!
//! Without a chunk size, chunks start at one item and grow while they come
//! back quickly ([`ChunkSizer`]): Python's one item per task made an
//! `imap_unordered` of 10⁵ trivial items about 200 times slower than with
//! `chunksize(1000)`, while a fixed large chunk would delay the first
//! results and unbalance slow items.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

mod chunking;
mod results;

pub(crate) use chunking::Chunking;
use chunking::{ChunkSizer, TARGET_CHUNK_TIME, Timings};
use results::{State, Stream};

use crate::backend::{Sink, Task};
use crate::codec::ChunkWriter;
use crate::job::{BoxedEncode, Decode, Encode};
use crate::progress::Progress;
use crate::{Error, Pool};

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// Yields one `Result` per input item: the job's value, or why that item
/// failed (a panic, a dead worker, ...). Input is read lazily, a few chunks
/// ahead of what has been consumed. Dropping the iterator early skips the
/// chunks that were queued but not started.
#[must_use = "iterators are lazy: nothing runs until the Imap is iterated"]
pub struct Imap<R, I: Iterator> {
    /// A handle of its own: the iterator may outlive the caller's `Pool`
    /// value (moved to another thread, or a response's stream).
    pool: Pool,
    job: &'static str,
    /// Fused: a run of plain numbers that met the input's end leaves the
    /// next read at the end too, as one read per item did.
    input: Option<std::iter::Fuse<I>>,
    encode: BoxedEncode<I::Item>,
    /// [`Encode::extend_raw`] over the input: plain numbers, a run at a
    /// time (one virtual call per run rather than per item).
    fill: RawFill<I>,
    stream: Arc<Stream<R>>,
    sizer: ChunkSizer,
    /// The backend's hard limit on a chunk's bytes (a cluster's
    /// `max_payload`), as the pool's `map` keeps it.
    byte_limit: Option<usize>,
    /// An item taken back from a chunk it would have taken over
    /// `byte_limit`: the first of the next chunk.
    carried: Option<I::Item>,
    max_in_flight: usize,
    in_flight: usize,
    next_chunk: usize,
    next_item: usize,
    /// The next chunk to yield, when ordered.
    next_to_yield: usize,
    ordered: bool,
    /// The chunk being yielded, item by item: taken as it came (a chunk of
    /// thousands of items is not copied again into a queue).
    ready: std::vec::IntoIter<Result<R, Error>>,
}

impl<R, I: Iterator> std::fmt::Debug for Imap<R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("job", &self.job)
            .field("chunksize", &self.sizer.size)
            .field("adaptive", &self.sizer.adaptive)
            .field("in_flight", &self.in_flight)
            .field("ordered", &self.ordered)
            .finish()
    }
}

/// See [`Imap`]'s `fill`.
type RawFill<I> =
    Box<dyn Fn(&mut std::iter::Fuse<I>, &mut ChunkWriter, usize, usize) -> usize + Send + Sync>;

/// The next item count, after `count`, at which an adaptive chunk looks at
/// the clock (a power of two, or a multiple of 64).
fn next_clock_check(count: usize) -> usize {
    let power = count.saturating_add(1).next_power_of_two();
    let multiple = (count / 64).saturating_add(1).saturating_mul(64);
    power.min(multiple)
}

impl<R, I> Imap<R, I>
where
    R: Send + 'static,
    I: Iterator,
{
    pub(crate) fn new(
        pool: Pool,
        job: &'static str,
        input: I,
        chunking: Chunking,
        ordered: bool,
        encode: impl Encode<I::Item>,
        decode: Decode<R>,
    ) -> Self {
        // A total for the bar (and its ETA) when the input knows its length.
        let total = match input.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let progress = Progress::new(pool.shows_progress(), job, total, pool.call_board());
        let byte_limit = pool.max_chunk_bytes();
        // One chunk running and one queued per worker keeps every worker busy.
        let max_in_flight = 2 * pool.processes().max(1);
        Imap {
            pool,
            job,
            input: Some(input.fuse()),
            encode: Box::new(move |item, chunk| encode.encode(item, chunk)),
            fill: Box::new(move |input, chunk, max_items, max_bytes| {
                encode.extend_raw(input, chunk, max_items, max_bytes)
            }),
            stream: Arc::new(Stream {
                job,
                decode,
                progress,
                state: Mutex::new(State {
                    finished: HashMap::new(),
                    completion: VecDeque::new(),
                    cancelled: false,
                    waker: None,
                    started: HashMap::new(),
                    timings: Timings::default(),
                }),
                arrived: Condvar::new(),
            }),
            sizer: ChunkSizer::new(chunking),
            byte_limit,
            carried: None,
            max_in_flight,
            in_flight: 0,
            next_chunk: 0,
            next_item: 0,
            next_to_yield: 0,
            ordered,
            ready: Vec::new().into_iter(),
        }
    }

    /// The iterator of a call refused before it starts (a chunk size of
    /// 0): it yields `error` once and reads no input.
    pub(crate) fn refused(mut self, error: Error) -> Self {
        self.input = None;
        self.ready = vec![Err(error)].into_iter();
        self
    }

    /// Pulls input until enough chunks are in flight or the input ends.
    fn top_up(&mut self) {
        while self.in_flight < self.max_in_flight {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let adaptive = self.sizer.adaptive;
            let size = if adaptive {
                let measure = self.stream.lock().timings.measure();
                self.sizer.next(measure)
            } else {
                self.sizer.size
            };
            let first = self.next_item;
            let started = adaptive.then(Instant::now);
            let mut items = ChunkWriter::default();
            let mut bad_item = None;
            while items.len() < size {
                let item = match self.carried.take() {
                    Some(item) => item,
                    None => match input.next() {
                        Some(item) => item,
                        None => {
                            self.input = None;
                            break;
                        }
                    },
                };
                if let Err(problem) = (self.encode)(&item, &mut items) {
                    bad_item = Some(crate::codec::error_for(
                        self.job,
                        format!("serialize argument {}", first + items.len()),
                        problem,
                    ));
                    break;
                }
                // A single item over the limit is the backend's to refuse.
                if self
                    .byte_limit
                    .is_some_and(|limit| items.byte_len() > limit && items.len() > 1)
                {
                    items.undo_last();
                    self.carried = Some(item);
                    break;
                }
                if self.byte_limit.is_none() {
                    // Plain numbers: up to the next look at the clock in one run.
                    let limit = match started {
                        Some(_) => next_clock_check(items.len()).min(size),
                        None => size,
                    };
                    (self.fill)(input, &mut items, limit, self.sizer.max_bytes);
                }
                if let Some(started) = started {
                    let count = items.len();
                    // The clock is read now and then only (about 35 ns a
                    // read, against a few ns to encode a small item); an
                    // input that turns slow sends what it has.
                    if items.byte_len() >= self.sizer.max_bytes
                        || ((count.is_power_of_two() || count % 64 == 0)
                            && started.elapsed() >= TARGET_CHUNK_TIME)
                    {
                        break;
                    }
                }
            }
            if items.len() > 0 {
                let attached = items.take_attached();
                self.submit(first, items.len(), (items.finish(), attached), started);
            }
            if let Some(error) = bad_item {
                // The unencodable item keeps its place as an error of its own.
                let chunk = self.next_chunk;
                self.next_chunk += 1;
                self.next_item += 1;
                self.in_flight += 1;
                self.stream.store(chunk, vec![Err(error)]);
            }
        }
    }

    /// `started`: when the chunk began filling, to time it (adaptive only).
    fn submit(
        &mut self,
        first: usize,
        count: usize,
        (items, attached): (Vec<u8>, crate::codec::attach::Attached),
        started: Option<Instant>,
    ) {
        let chunk = self.next_chunk;
        if let Some(started) = started {
            // Before submitting: the reply may come back before `submit_task` returns.
            self.stream.lock().started.insert(chunk, started);
        }
        self.next_chunk += 1;
        self.next_item += count;
        self.in_flight += 1;
        let task = Task {
            job: self.job,
            chunk,
            first,
            count,
            items,
            tail: Default::default(),
            sink: Arc::clone(&self.stream) as Arc<dyn Sink>,
            retried: 0,
            before: Vec::new(),
            attached: attached.into(),
        };
        if let Err(error) = self.pool.submit_task(task) {
            // This chunk fails. A closed pool takes no more input; after any
            // other refusal (a chunk too large for a cluster, a broker
            // error) the next chunks are still tried.
            if matches!(error, Error::Closed | Error::Terminated { .. }) {
                self.input = None;
            }
            self.stream
                .store(chunk, (0..count).map(|_| Err(error.clone())).collect());
        }
    }

    /// Takes the next chunk to yield if it has arrived.
    fn try_take_chunk(&mut self, state: &mut State<R>) -> Option<Vec<Result<R, Error>>> {
        let chunk = if self.ordered {
            Some(self.next_to_yield).filter(|c| state.finished.contains_key(c))
        } else {
            state.completion.front().copied()
        }?;
        state.completion.retain(|&c| c != chunk);
        if self.ordered {
            self.next_to_yield += 1;
        }
        self.in_flight -= 1;
        Some(state.finished.remove(&chunk).unwrap_or_default())
    }

    /// Blocks until the next chunk to yield has arrived and takes it.
    fn take_chunk(&mut self) -> Vec<Result<R, Error>> {
        let stream = Arc::clone(&self.stream);
        let mut state = stream.lock();
        loop {
            if let Some(items) = self.try_take_chunk(&mut state) {
                return items;
            }
            state = stream
                .arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The same results as a [`Stream`](futures_core::Stream), for async
    /// code: waiting for a result does not block the thread, the pool wakes
    /// the polling task when one arrives (as for
    /// [`AsyncResult`](crate::AsyncResult)), under any executor.
    ///
    /// Input is still read on the polling thread, as results are taken: an
    /// input iterator that blocks (a channel, a file) blocks that thread.
    /// Dropping the stream skips the chunks not yet started, as dropping
    /// the iterator does.
    ///
    /// ```
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    ///
    /// use futures_core::Stream;
    /// use procpool::{pool_job, Pool};
    ///
    /// #[pool_job]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// let pool = Pool::with_processes(2)?;
    /// let mut squares = pool.imap(square, 0..4).into_stream();
    /// // Under an executor, `StreamExt::next(&mut squares).await` does the same.
    /// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let mut all = Vec::new();
    /// runtime.block_on(async {
    ///     while let Some(item) = poll_fn(|cx| Pin::new(&mut squares).poll_next(cx)).await {
    ///         all.push(item?);
    ///     }
    ///     Ok::<_, procpool::Error>(())
    /// })?;
    /// assert_eq!(all, vec![0, 1, 4, 9]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_stream(self) -> ImapStream<R, I> {
        ImapStream { imap: self }
    }
}

impl<R, I> Iterator for Imap<R, I>
where
    R: Send + 'static,
    I: Iterator,
{
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.next() {
                return Some(item);
            }
            self.top_up();
            if self.in_flight == 0 {
                return None;
            }
            let items = self.take_chunk();
            self.ready = items.into_iter();
        }
    }
}

impl<R, I: Iterator> Drop for Imap<R, I> {
    fn drop(&mut self) {
        self.stream.progress.finish();
        self.stream
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancelled = true;
    }
}

/// The results of [`Pool::imap`] or [`Pool::imap_unordered`] as a
/// [`Stream`](futures_core::Stream). Created by [`Imap::into_stream`].
#[must_use = "streams are lazy: nothing runs until the stream is polled"]
pub struct ImapStream<R, I: Iterator> {
    imap: Imap<R, I>,
}

impl<R, I: Iterator> std::fmt::Debug for ImapStream<R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapStream")
            .field("imap", &self.imap)
            .finish()
    }
}

// Nothing in the stream is ever pinned in place (the input iterator is only
// called through `&mut`), so it may move freely whatever `I` is.
impl<R, I: Iterator> Unpin for ImapStream<R, I> {}

impl<R, I> futures_core::Stream for ImapStream<R, I>
where
    R: Send + 'static,
    I: Iterator,
{
    type Item = Result<R, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let imap = &mut self.get_mut().imap;
        loop {
            if let Some(item) = imap.ready.next() {
                return Poll::Ready(Some(item));
            }
            imap.top_up();
            if imap.in_flight == 0 {
                return Poll::Ready(None);
            }
            let stream = Arc::clone(&imap.stream);
            let mut state = stream.lock();
            match imap.try_take_chunk(&mut state) {
                Some(items) => imap.ready = items.into_iter(),
                None => {
                    // Registered under the lock that `store` takes, so a
                    // chunk arriving now wakes this waker.
                    match &mut state.waker {
                        Some(existing) if existing.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_clock_check;

    /// A run of plain numbers stops exactly where the item-by-item loop
    /// would look at the clock: the next power of two or multiple of 64.
    #[test]
    fn a_run_stops_at_the_next_look_at_the_clock() {
        let looks = |count: usize| count.is_power_of_two() || count.is_multiple_of(64);
        for count in 0..5000 {
            let next = next_clock_check(count);
            assert!(next > count && looks(next), "{count} -> {next}");
            assert!(!(count + 1..next).any(looks), "{count} -> {next} skips one");
        }
    }
}
