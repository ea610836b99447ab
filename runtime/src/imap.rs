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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::backend::{Part, Sink, Task, TaskInfo};
use crate::codec::ChunkWriter;
use crate::job::{BoxedEncode, Decode, Encode};
use crate::progress::Progress;
use crate::{Error, Pool};

struct State<R> {
    /// Finished chunks by number, until the iterator takes them.
    finished: HashMap<usize, Vec<Result<R, Error>>>,
    /// Chunk numbers in the order they finished.
    completion: VecDeque<usize>,
    cancelled: bool,
    /// The task polling an [`ImapStream`], woken when a chunk arrives.
    waker: Option<Waker>,
    /// When each chunk still out began to be filled (adaptive sizing only).
    started: HashMap<usize, Instant>,
    /// The time per item of the chunks that came back.
    timings: Timings,
}

/// How many of the last chunks a [`Measure`] looks at.
const MEASURE_WINDOW: usize = 4;

/// The time per item of the last chunks that came back, latest last.
#[derive(Debug, Default)]
struct Timings {
    recent: VecDeque<Duration>,
    count: u64,
}

impl Timings {
    fn record(&mut self, per_item: Duration) {
        if self.recent.len() == MEASURE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(per_item);
        self.count += 1;
    }

    /// What the sizer goes by; `None` before any chunk came back.
    fn measure(&self) -> Option<Measure> {
        Some(Measure {
            per_item: self.recent.iter().copied().min()?,
            count: self.count,
        })
    }
}

/// The time per item of the chunks that came back last: the least over the
/// last [`MEASURE_WINDOW`]. A chunk is timed from the moment its first item
/// was pulled from the input (so a slow input counts as slow items) until
/// its results were decoded. That includes the wait behind the chunk
/// queued before it on its worker, which only ever adds: a small chunk
/// queued behind a large one looks slow per item, and taken alone it
/// shrank the next chunks to a few hundred items for no reason (measured:
/// 16 384 down to 179). The least of the last few is a chunk that waited
/// little, and a change in the items' own time still shows within a few.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measure {
    per_item: Duration,
    /// Chunks timed so far: a chunk grows once per new measure.
    count: u64,
}

/// Receives the chunks of one `imap` call.
struct Stream<R> {
    job: &'static str,
    decode: Decode<R>,
    progress: Progress,
    state: Mutex<State<R>>,
    arrived: Condvar,
}

impl<R> Stream<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, chunk: usize, items: Vec<Result<R, Error>>) {
        self.store_timed(chunk, items, false);
    }

    /// Stores a chunk; `timed`: it came back from a worker, so its time
    /// per item is the latest measure (a lost chunk's is not).
    fn store_timed(&self, chunk: usize, items: Vec<Result<R, Error>>, timed: bool) {
        let mut state = self.lock();
        if let Some(started) = state.started.remove(&chunk)
            && timed
            && !items.is_empty()
        {
            let per_item = started.elapsed() / items.len().try_into().unwrap_or(u32::MAX);
            state.timings.record(per_item);
        }
        state.finished.insert(chunk, items);
        state.completion.push_back(chunk);
        let waker = state.waker.take();
        drop(state);
        self.arrived.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R: Send + 'static> Stream<R> {
    /// Appends the outcomes of `count` items from `first` to `items`. A
    /// lost part fails each of its items, and the items after an
    /// undecodable one fail with it, so the output stays aligned with the
    /// input.
    fn decode_part(
        &self,
        first: usize,
        count: usize,
        outcome: Result<&[u8], Error>,
        items: &mut Vec<Result<R, Error>>,
    ) {
        let start = items.len();
        let decoded =
            outcome.and_then(|bytes| self.decode.outcomes(self.job, first, count, bytes, items));
        if let Err(error) = decoded {
            items.resize_with(start + count, || Err(error.clone()));
        }
    }
}

impl<R: Send + 'static> Sink for Stream<R> {
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>) {
        let mut items = Vec::with_capacity(task.count);
        let replied = outcome.is_ok();
        self.decode_part(task.first, task.count, outcome, &mut items);
        self.progress
            .advance(task.count.saturating_sub(task.reported));
        self.store_timed(task.chunk, items, replied);
    }

    fn deliver_parts(&self, chunk: TaskInfo, parts: Vec<Part>) {
        let mut items = Vec::with_capacity(chunk.count);
        for part in parts {
            self.decode_part(
                part.first,
                part.count,
                part.outcome.as_deref().map_err(Clone::clone),
                &mut items,
            );
        }
        self.progress
            .advance(chunk.count.saturating_sub(chunk.reported));
        self.store(chunk.chunk, items);
    }

    fn progress(&self, items: usize) {
        self.progress.advance(items);
    }

    fn per_item(&self) -> bool {
        true
    }

    fn cancelled(&self) -> bool {
        self.lock().cancelled
    }
}

/// The time per chunk that adaptive chunks aim at, as a [`Measure`] counts
/// it: with the wait behind the chunk queued before it, so about half of it
/// is the chunk's own run. Long enough that per-message costs (tens of µs)
/// fade, short enough that results keep coming and the last chunks end
/// together; an item this slow or slower travels alone. Measured on
/// `imap_unordered` of 10⁵ trivial items (2 workers, medians of 101 runs
/// on a loaded machine): 4 ms made chunks of up to 27 000 items and took
/// 1.3-1.5 times as long as `chunksize(1000)`; 0.5 to 2 ms took 1.0-1.25
/// times as long.
const TARGET_CHUNK_TIME: Duration = Duration::from_millis(2);

/// The most items an adaptive chunk takes, whatever their size: 512 KiB of
/// `u64`, as the pool's byte cut for chunks it sizes.
const MAX_ADAPTIVE_ITEMS: usize = 1 << 16;

/// How an `imap` cuts its input into chunks; the pool chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// Exactly this many items per chunk (the caller's `chunksize`).
    Fixed(usize),
    /// Sized from measured times ([`ChunkSizer`]), with each chunk's input
    /// cut once it reaches `max_bytes`.
    Adaptive {
        /// Where a chunk's encoded input is cut.
        max_bytes: usize,
    },
}

/// How many items go into the next chunk.
///
/// Fixed when the caller chose (Python's meaning of `chunksize`).
/// Otherwise adaptive: the first chunks hold one item each, so the first
/// results come at once and an endless or slow input works; then each new
/// [`Measure`] lets the next chunk double, up to as many items as fit in
/// [`TARGET_CHUNK_TIME`] at the measured time per item (so slow items stay
/// at one per chunk, and once items turn slower the next chunk shrinks at
/// once), and at most [`MAX_ADAPTIVE_ITEMS`]. Its input is cut at the
/// pool's byte limit (as `map`'s chunks are), and a chunk whose input turns
/// slow while it fills is sent with what it has (`Imap::top_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkSizer {
    size: usize,
    adaptive: bool,
    /// Where an adaptive chunk's encoded input is cut.
    max_bytes: usize,
    /// The measure count the size last grew on.
    grown_on: u64,
}

impl ChunkSizer {
    fn new(chunking: Chunking) -> Self {
        let (size, adaptive, max_bytes) = match chunking {
            Chunking::Fixed(size) => (size.max(1), false, usize::MAX),
            Chunking::Adaptive { max_bytes } => (1, true, max_bytes),
        };
        ChunkSizer {
            size,
            adaptive,
            max_bytes,
            grown_on: 0,
        }
    }

    /// The size of the next chunk, given the latest measure.
    fn next(&mut self, measure: Option<Measure>) -> usize {
        if let (true, Some(measure)) = (self.adaptive, measure) {
            let fits = if measure.per_item.is_zero() {
                MAX_ADAPTIVE_ITEMS
            } else {
                // Saturates (never wraps) for a tiny per-item time.
                (TARGET_CHUNK_TIME.as_secs_f64() / measure.per_item.as_secs_f64()) as usize
            };
            let mut size = self.size;
            if measure.count > self.grown_on {
                self.grown_on = measure.count;
                size = size.saturating_mul(2);
            }
            self.size = size.min(fits).clamp(1, MAX_ADAPTIVE_ITEMS);
        }
        self.size
    }
}

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// Yields one `Result` per input item: the job's value, or why that item
/// failed (a panic, a dead worker, ...). Input is read lazily, a few chunks
/// ahead of what has been consumed. Dropping the iterator early skips the
/// chunks that were queued but not started.
#[must_use = "iterators are lazy: nothing runs until the Imap is iterated"]
pub struct Imap<'pool, R, I: Iterator> {
    pool: &'pool Pool,
    job: &'static str,
    input: Option<I>,
    encode: BoxedEncode<I::Item>,
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

impl<R, I: Iterator> std::fmt::Debug for Imap<'_, R, I> {
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

impl<'pool, R, I> Imap<'pool, R, I>
where
    R: Send + 'static,
    I: Iterator,
{
    pub(crate) fn new(
        pool: &'pool Pool,
        job: &'static str,
        input: I,
        chunking: Chunking,
        ordered: bool,
        encode: impl Encode<I::Item>,
        decode: Decode<R>,
    ) -> Self {
        Imap {
            pool,
            job,
            input: Some(input),
            encode: Box::new(encode),
            stream: Arc::new(Stream {
                job,
                decode,
                progress: Progress::new(pool.shows_progress(), job, None),
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
            byte_limit: pool.max_chunk_bytes(),
            carried: None,
            // One chunk running and one queued per worker keeps every worker busy.
            max_in_flight: 2 * pool.processes().max(1),
            in_flight: 0,
            next_chunk: 0,
            next_item: 0,
            next_to_yield: 0,
            ordered,
            ready: Vec::new().into_iter(),
        }
    }

    /// An iterator that yields `error` once, reading no input.
    pub(crate) fn failed(
        pool: &'pool Pool,
        job: &'static str,
        input: I,
        error: Error,
        encode: impl Encode<I::Item>,
        decode: Decode<R>,
    ) -> Self {
        let mut imap = Imap::new(pool, job, input, Chunking::Fixed(1), true, encode, decode);
        imap.input = None;
        imap.ready = vec![Err(error)].into_iter();
        imap
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
    pub fn into_stream(self) -> ImapStream<'pool, R, I> {
        ImapStream { imap: self }
    }
}

impl<R, I> Iterator for Imap<'_, R, I>
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

impl<R, I: Iterator> Drop for Imap<'_, R, I> {
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
pub struct ImapStream<'pool, R, I: Iterator> {
    imap: Imap<'pool, R, I>,
}

impl<R, I: Iterator> std::fmt::Debug for ImapStream<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapStream")
            .field("imap", &self.imap)
            .finish()
    }
}

// Nothing in the stream is ever pinned in place (the input iterator is only
// called through `&mut`), so it may move freely whatever `I` is.
impl<R, I: Iterator> Unpin for ImapStream<'_, R, I> {}

impl<R, I> futures_core::Stream for ImapStream<'_, R, I>
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
    use std::time::Duration;

    use super::{ChunkSizer, Chunking, MAX_ADAPTIVE_ITEMS, MEASURE_WINDOW, Measure, Timings};

    fn adaptive() -> ChunkSizer {
        ChunkSizer::new(Chunking::Adaptive { max_bytes: 1 << 19 })
    }

    fn measure(per_item: Duration, count: u64) -> Option<Measure> {
        Some(Measure { per_item, count })
    }

    #[test]
    fn a_chosen_chunk_size_never_changes() {
        let mut sizer = ChunkSizer::new(Chunking::Fixed(7));
        assert_eq!(sizer.next(None), 7);
        assert_eq!(sizer.next(measure(Duration::from_nanos(1), 5)), 7);
        assert_eq!(sizer.next(measure(Duration::from_secs(1), 6)), 7);
    }

    #[test]
    fn adaptive_chunks_start_at_one_and_double_once_per_measure() {
        let mut sizer = adaptive();
        // Nothing measured yet: one item per chunk, however many are sent.
        assert_eq!(sizer.next(None), 1);
        assert_eq!(sizer.next(None), 1);
        let tiny = Duration::from_nanos(10);
        assert_eq!(sizer.next(measure(tiny, 1)), 2);
        // The same measure again lets nothing grow.
        assert_eq!(sizer.next(measure(tiny, 1)), 2);
        assert_eq!(sizer.next(measure(tiny, 2)), 4);
        let mut size = 4;
        for count in 3..40 {
            size = sizer.next(measure(tiny, count));
        }
        assert_eq!(size, MAX_ADAPTIVE_ITEMS);
        // A zero time per item (a coarse clock) is as tiny as can be.
        assert_eq!(sizer.next(measure(Duration::ZERO, 41)), MAX_ADAPTIVE_ITEMS);
    }

    #[test]
    fn slow_items_stay_alone_and_a_slow_measure_shrinks_the_next_chunk_at_once() {
        let mut sizer = adaptive();
        for count in 1..10 {
            assert_eq!(sizer.next(measure(Duration::from_millis(5), count)), 1);
        }
        let mut sizer = adaptive();
        for count in 1..30 {
            sizer.next(measure(Duration::from_nanos(10), count));
        }
        assert_eq!(sizer.size, MAX_ADAPTIVE_ITEMS);
        // 100 µs per item: 20 fit in the target time.
        assert_eq!(sizer.next(measure(Duration::from_micros(100), 30)), 20);
        // Then it grows back by doubling.
        assert_eq!(sizer.next(measure(Duration::from_nanos(10), 31)), 40);
    }

    #[test]
    fn a_measure_is_the_least_time_per_item_of_the_last_chunks() {
        let ms = Duration::from_millis;
        let mut timings = Timings::default();
        assert_eq!(timings.measure(), None);
        timings.record(ms(3));
        assert_eq!(timings.measure(), measure(ms(3), 1));
        // A chunk that waited behind a large one looks slow: it changes
        // nothing while a quicker one is among the last few.
        timings.record(ms(1));
        timings.record(ms(50));
        assert_eq!(timings.measure(), measure(ms(1), 3));
        // Items that turned slow show once the quick chunk is out of the window.
        for n in 0..MEASURE_WINDOW {
            timings.record(ms(40));
            let least = if n + 2 < MEASURE_WINDOW {
                ms(1)
            } else {
                ms(40)
            };
            assert_eq!(timings.measure().map(|m| m.per_item), Some(least), "{n}");
        }
    }
}
