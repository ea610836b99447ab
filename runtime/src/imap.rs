//! Lazy iteration: `imap` and `imap_unordered`.
//!
//! Unlike Python's `imap`, which reads its whole input before yielding
//! (so an endless input hangs), input is pulled only as results are
//! consumed, with a bounded number of chunks in flight.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::codec::ChunkWriter;
use crate::job::{Decode, Encode};
use crate::progress::Progress;
use crate::transport::{Part, Sink, Task, TaskInfo};
use crate::{Error, Pool};

struct State<R> {
    /// Finished chunks by number, until the iterator takes them.
    finished: HashMap<usize, Vec<Result<R, Error>>>,
    /// Chunk numbers in the order they finished.
    completion: VecDeque<usize>,
    cancelled: bool,
    /// The task polling an [`ImapStream`], woken when a chunk arrives.
    waker: Option<Waker>,
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
        let mut state = self.lock();
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

impl<R: Send + 'static> Sink for Stream<R> {
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>) {
        // A lost task fails each of its items, so the output stays aligned with the input.
        let mut items = Vec::with_capacity(task.count);
        let decoded = outcome.and_then(|bytes| {
            self.decode
                .outcomes(self.job, task.first, task.count, bytes, &mut items)
        });
        if let Err(error) = decoded {
            // Items after an undecodable one (or all, for a lost task) fail with it.
            items.resize_with(task.count, || Err(error.clone()));
        }
        self.progress
            .advance(task.count.saturating_sub(task.reported));
        self.store(task.chunk, items);
    }

    fn deliver_parts(&self, chunk: TaskInfo, parts: Vec<Part>) {
        let mut items = Vec::with_capacity(chunk.count);
        for part in parts {
            let start = items.len();
            let decoded = part.outcome.and_then(|bytes| {
                self.decode
                    .outcomes(self.job, part.first, part.count, &bytes, &mut items)
            });
            if let Err(error) = decoded {
                items.resize_with(start + part.count, || Err(error.clone()));
            }
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
    encode: Encode<I::Item>,
    stream: Arc<Stream<R>>,
    chunksize: usize,
    max_in_flight: usize,
    in_flight: usize,
    next_chunk: usize,
    next_item: usize,
    /// The next chunk to yield, when ordered.
    next_to_yield: usize,
    ordered: bool,
    ready: VecDeque<Result<R, Error>>,
}

impl<R, I: Iterator> std::fmt::Debug for Imap<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("job", &self.job)
            .field("chunksize", &self.chunksize)
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
        chunksize: usize,
        ordered: bool,
        encode: Encode<I::Item>,
        decode: Decode<R>,
    ) -> Self {
        Imap {
            pool,
            job,
            input: Some(input),
            encode,
            stream: Arc::new(Stream {
                job,
                decode,
                progress: Progress::new(pool.shows_progress(), job, None),
                state: Mutex::new(State {
                    finished: HashMap::new(),
                    completion: VecDeque::new(),
                    cancelled: false,
                    waker: None,
                }),
                arrived: Condvar::new(),
            }),
            chunksize: chunksize.max(1),
            // One chunk running and one queued per worker keeps every worker busy.
            max_in_flight: 2 * pool.processes().max(1),
            in_flight: 0,
            next_chunk: 0,
            next_item: 0,
            next_to_yield: 0,
            ordered,
            ready: VecDeque::new(),
        }
    }

    /// An iterator that yields `error` once, reading no input.
    pub(crate) fn failed(
        pool: &'pool Pool,
        job: &'static str,
        input: I,
        error: Error,
        encode: Encode<I::Item>,
        decode: Decode<R>,
    ) -> Self {
        let mut imap = Imap::new(pool, job, input, 1, true, encode, decode);
        imap.input = None;
        imap.ready.push_back(Err(error));
        imap
    }

    /// Pulls input until enough chunks are in flight or the input ends.
    fn top_up(&mut self) {
        while self.in_flight < self.max_in_flight {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let first = self.next_item;
            let mut items = ChunkWriter::<()>::default();
            let mut bad_item = None;
            while items.len() < self.chunksize {
                let Some(item) = input.next() else {
                    self.input = None;
                    break;
                };
                if let Err(message) = self.encode.push(&mut items, &item) {
                    bad_item = Some(Error::Serialization {
                        job: self.job.to_owned(),
                        direction: format!("serialize argument {}", first + items.len()),
                        message,
                    });
                    break;
                }
            }
            if items.len() > 0 {
                self.submit(first, items.len(), items.finish());
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

    fn submit(&mut self, first: usize, count: usize, items: Vec<u8>) {
        let chunk = self.next_chunk;
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
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            self.top_up();
            if self.in_flight == 0 {
                return None;
            }
            let items = self.take_chunk();
            self.ready.extend(items);
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
            if let Some(item) = imap.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            imap.top_up();
            if imap.in_flight == 0 {
                return Poll::Ready(None);
            }
            let stream = Arc::clone(&imap.stream);
            let mut state = stream.lock();
            match imap.try_take_chunk(&mut state) {
                Some(items) => imap.ready.extend(items),
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
