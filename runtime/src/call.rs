//! One call's results as they come back, and the handle the caller waits on.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::progress::Progress;
use crate::transport::{Sink, TaskInfo};
use crate::{Error, codec};

/// How a finished call turns its items into the value the caller gets.
pub(crate) trait Finish<R>: Send + Sync + 'static {
    type Output: Send + 'static;
    fn finish(items: Vec<R>) -> Result<Self::Output, Error>;
}

/// `map`-like calls: every item, in input order.
pub(crate) struct All;
impl<R: Send + 'static> Finish<R> for All {
    type Output = Vec<R>;
    fn finish(items: Vec<R>) -> Result<Vec<R>, Error> {
        Ok(items)
    }
}

/// `apply`: the single item.
pub(crate) struct One;
impl<R: Send + 'static> Finish<R> for One {
    type Output = R;
    fn finish(mut items: Vec<R>) -> Result<R, Error> {
        items
            .pop()
            .ok_or_else(|| Error::Ipc("the worker's reply held no result".into()))
    }
}

type Callback<T> = Box<dyn FnOnce(Result<&T, &Error>) + Send>;

/// A finished call's result, as waiters see it.
enum Outcome<T> {
    Value(T),
    Failed(Error),
    /// The value was moved out by `get_timeout` (the call still succeeded).
    Taken,
}

impl<T> Outcome<T> {
    fn from_result(result: Result<T, Error>) -> Self {
        match result {
            Ok(value) => Outcome::Value(value),
            Err(error) => Outcome::Failed(error),
        }
    }
}

/// Decodes a task's reply (one `Result<R, Failure>` per item) and hands
/// each item's outcome, as the caller sees it, to `each`. Stops at the first
/// `Err` that `each` returns, or when the reply cannot be decoded.
pub(crate) fn decode_items<R: DeserializeOwned + 'static>(
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
    mut each: impl FnMut(Result<R, Error>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut reader = codec::Reader::new(bytes);
    for offset in 0..task.count {
        let index = task.first + offset;
        let item = reader
            .outcome::<R>()
            .map_err(|message| Error::Serialization {
                job: job.to_owned(),
                direction: format!("decode the result of item {index}"),
                message,
            })?;
        each(item.map_err(|failure| failure.into_error(job, index)))?;
    }
    Ok(())
}

struct State<R, T> {
    /// Decoded items of each chunk, by chunk number.
    chunks: Vec<Option<Vec<R>>>,
    submitted: usize,
    received: usize,
    sealed: bool,
    /// The result is decided; later chunks are ignored and queued ones skipped.
    finished: bool,
    /// Published after the callbacks ran; what waiters wait for.
    outcome: Option<Outcome<T>>,
    waker: Option<Waker>,
    callbacks: Vec<Callback<T>>,
}

/// Collects the chunks of one call. Shared by the caller and the backend.
pub(crate) struct Call<R, M: Finish<R>> {
    job: &'static str,
    progress: Progress,
    state: Mutex<State<R, M::Output>>,
    ready: Condvar,
    finish: PhantomData<fn() -> M>,
}

impl<R, M> Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    pub(crate) fn new(job: &'static str, progress: Progress) -> Arc<Self> {
        Arc::new(Call {
            job,
            progress,
            state: Mutex::new(State {
                chunks: Vec::new(),
                submitted: 0,
                received: 0,
                sealed: false,
                finished: false,
                outcome: None,
                waker: None,
                callbacks: Vec::new(),
            }),
            ready: Condvar::new(),
            finish: PhantomData,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<R, M::Output>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more task before it is handed to the backend.
    pub(crate) fn expect_chunk(&self) {
        self.lock().submitted += 1;
    }

    /// No more tasks will be added.
    pub(crate) fn seal(&self) {
        let mut state = self.lock();
        state.sealed = true;
        self.complete_if_done(state);
    }

    /// Fails the call from the caller's side (e.g. an argument would not serialize).
    pub(crate) fn abandon(&self, error: Error) {
        let state = self.lock();
        self.fail(state, error);
    }

    fn fail(&self, mut state: MutexGuard<'_, State<R, M::Output>>, error: Error) {
        if !state.finished {
            state.chunks.clear();
            self.complete(state, Err(error));
        }
    }

    fn complete_if_done(&self, mut state: MutexGuard<'_, State<R, M::Output>>) {
        if state.finished || !state.sealed || state.received < state.submitted {
            return;
        }
        let chunks = std::mem::take(&mut state.chunks);
        let mut items = Vec::with_capacity(chunks.iter().flatten().map(Vec::len).sum());
        for chunk in chunks.into_iter().flatten() {
            items.extend(chunk);
        }
        self.complete(state, M::finish(items));
    }

    /// Decides the result, runs the callbacks, then publishes it and wakes
    /// every waiter. Callbacks run without the lock held, so they may use
    /// this call's handle.
    fn complete(
        &self,
        mut state: MutexGuard<'_, State<R, M::Output>>,
        result: Result<M::Output, Error>,
    ) {
        state.finished = true;
        self.progress.finish();
        let callbacks = std::mem::take(&mut state.callbacks);
        drop(state);
        for callback in callbacks {
            // A panicking callback must not keep the outcome from its
            // waiters, nor take down the thread that delivers results (in a
            // cluster pool, the only one). The panic hook has reported it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                callback(result.as_ref());
            }));
        }
        let mut state = self.lock();
        state.outcome = Some(Outcome::from_result(result));
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R, M> Sink for Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>) {
        // Decode outside the lock: drivers decode their chunks in parallel.
        let decoded = outcome.and_then(|bytes| {
            let mut items = Vec::with_capacity(task.count);
            decode_items::<R>(self.job, task, bytes, |item| {
                items.push(item?);
                Ok(())
            })?;
            Ok(items)
        });
        let mut state = self.lock();
        state.received += 1;
        if state.finished {
            return;
        }
        match decoded {
            Ok(items) => {
                self.progress.advance(items.len());
                if state.chunks.len() <= task.chunk {
                    state.chunks.resize_with(task.chunk + 1, || None);
                }
                state.chunks[task.chunk] = Some(items);
                self.complete_if_done(state);
            }
            Err(error) => self.fail(state, error),
        }
    }

    fn cancelled(&self) -> bool {
        self.lock().finished
    }
}

/// The error for a second take of a successful result.
fn taken() -> Error {
    Error::Misuse(
        "this call's value was already returned by an earlier get_timeout; a value is \
         returned once (keep it, or clone it)"
            .into(),
    )
}

/// The object-safe face of a [`Call`], so `AsyncResult` names only its output type.
trait Pending<T>: Send + Sync {
    fn is_done(&self) -> bool;
    fn succeeded(&self) -> Option<bool>;
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    fn take(&self) -> Result<T, Error>;
    fn poll_done(&self, waker: &Waker) -> bool;
    fn on_complete(&self, callback: Callback<T>);
}

impl<R, M> Pending<M::Output> for Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    fn is_done(&self) -> bool {
        self.lock().outcome.is_some()
    }

    fn succeeded(&self) -> Option<bool> {
        self.lock()
            .outcome
            .as_ref()
            .map(|outcome| !matches!(outcome, Outcome::Failed(_)))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.lock();
        while state.outcome.is_none() {
            state = match deadline {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    fn take(&self) -> Result<M::Output, Error> {
        let mut state = self.lock();
        match state.outcome.as_mut() {
            None => Err(Error::Misuse(
                "the result was taken before it was ready".into(),
            )),
            Some(Outcome::Failed(error)) => Err(error.clone()),
            Some(Outcome::Taken) => Err(taken()),
            Some(value) => match std::mem::replace(value, Outcome::Taken) {
                Outcome::Value(value) => Ok(value),
                _ => Err(taken()),
            },
        }
    }

    fn poll_done(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return true;
        }
        match &mut state.waker {
            Some(existing) if existing.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        false
    }

    fn on_complete(&self, callback: Callback<M::Output>) {
        let mut state = self.lock();
        if !state.finished {
            state.callbacks.push(callback);
            return;
        }
        // Already finished: wait for publication (callbacks of others may be
        // running), then call back here with the published outcome.
        while state.outcome.is_none() {
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match state.outcome.as_ref() {
            Some(Outcome::Value(value)) => callback(Ok(value)),
            Some(Outcome::Failed(error)) => callback(Err(error)),
            _ => {}
        }
    }
}

/// The result of a call that runs in the background, like Python's `AsyncResult`.
///
/// Returned by [`Pool::map_async`](crate::Pool::map_async),
/// [`Pool::starmap_async`](crate::Pool::starmap_async) and
/// [`Pool::apply_async`](crate::Pool::apply_async). Wait for it with
/// [`get`](AsyncResult::get), or `.await` it under any executor: waiting
/// in a future does not block a thread.
///
/// Python's `callback` / `error_callback` are
/// [`on_success`](AsyncResult::on_success) and
/// [`on_error`](AsyncResult::on_error).
///
/// ```
/// use procpool::{pool_job, Pool};
/// use std::time::Duration;
///
/// #[pool_job]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let pool = Pool::with_processes(2)?;
/// let mut pending = pool.map_async(square, 0..4)?;
/// pending.wait_timeout(Duration::from_secs(10));
/// assert!(pending.ready());
/// assert_eq!(pending.successful(), Some(true));
/// assert_eq!(pending.get()?, vec![0, 1, 4, 9]);
/// # Ok(())
/// # }
/// ```
#[must_use = "an AsyncResult does nothing unless you wait for it"]
pub struct AsyncResult<T> {
    call: Arc<dyn Pending<T>>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.call.is_done())
            .finish()
    }
}

impl<T: Send + 'static> AsyncResult<T> {
    pub(crate) fn new<R, M>(call: Arc<Call<R, M>>) -> Self
    where
        R: DeserializeOwned + Send + 'static,
        M: Finish<R, Output = T>,
    {
        AsyncResult { call }
    }

    /// Whether the result (or an error) has arrived.
    pub fn ready(&self) -> bool {
        self.call.is_done()
    }

    /// `None` while the call runs; then whether it succeeded (Python's
    /// `successful()`, which raises instead of returning `None`).
    pub fn successful(&self) -> Option<bool> {
        self.call.succeeded()
    }

    /// Blocks until the result (or an error) has arrived.
    pub fn wait(&self) {
        self.call.wait_until(None);
    }

    /// Blocks for at most `timeout`; returns whether the result has arrived.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.call.wait_until(Some(Instant::now() + timeout))
    }

    /// Waits for the call and returns its value, or the first error.
    pub fn get(self) -> Result<T, Error> {
        self.call.wait_until(None);
        self.call.take()
    }

    /// Waits at most `timeout`. Returns [`Error::Timeout`] if the result has
    /// not arrived: the call keeps running and this handle stays usable, so a
    /// later `get` or `get_timeout` still returns the value.
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, Error> {
        if self.call.wait_until(Some(Instant::now() + timeout)) {
            self.call.take()
        } else {
            Err(Error::Timeout(timeout))
        }
    }

    /// Runs `callback` with the value when the call succeeds (Python's `callback`).
    ///
    /// It runs in this process, on the pool's thread that received the last
    /// result, or at once on this thread if the result is already there.
    /// `get` still returns the value afterwards. Keep it short, as in
    /// Python: that pool thread feeds a worker meanwhile, and a callback that
    /// waits for more work from the same pool can wait forever. A panic in a
    /// callback run by the pool's thread is reported by the panic hook and
    /// otherwise ignored: waiters still get the outcome.
    pub fn on_success(self, callback: impl FnOnce(&T) + Send + 'static) -> Self {
        self.call.on_complete(Box::new(move |outcome| {
            if let Ok(value) = outcome {
                callback(value);
            }
        }));
        self
    }

    /// Runs `callback` with the error when the call fails (Python's
    /// `error_callback`), on the same thread rules as [`on_success`](AsyncResult::on_success).
    pub fn on_error(self, callback: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.call.on_complete(Box::new(move |outcome| {
            if let Err(error) = outcome {
                callback(error);
            }
        }));
        self
    }
}

impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.call.poll_done(cx.waker()) {
            Poll::Ready(self.call.take())
        } else {
            Poll::Pending
        }
    }
}
