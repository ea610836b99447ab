//! One call's results as they come back, and the handle the caller waits on.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::transport::{Sink, TaskInfo};
use crate::wire::Failure;
use crate::{Error, codec};

/// How a finished call turns its items into the value the caller gets.
pub(crate) trait Finish<R>: Send + Sync + 'static {
    type Output: Send + 'static;
    fn finish(items: Vec<R>) -> Self::Output;
}

/// `map`-like calls: every item, in input order.
pub(crate) struct All;
impl<R: Send + 'static> Finish<R> for All {
    type Output = Vec<R>;
    fn finish(items: Vec<R>) -> Vec<R> {
        items
    }
}

/// `apply`: the single item.
pub(crate) struct One;
impl<R: Send + 'static> Finish<R> for One {
    type Output = R;
    fn finish(mut items: Vec<R>) -> R {
        match items.pop() {
            Some(item) => item,
            None => unreachable!("an apply call is sealed with exactly one item"),
        }
    }
}

struct State<R> {
    /// Decoded items of each chunk, by chunk number.
    chunks: Vec<Option<Vec<R>>>,
    submitted: usize,
    received: usize,
    sealed: bool,
    error: Option<Error>,
    taken: bool,
    waker: Option<Waker>,
}

impl<R> State<R> {
    fn done(&self) -> bool {
        self.error.is_some() || (self.sealed && self.received == self.submitted)
    }
}

/// Collects the chunks of one call. Shared by the caller and the backend.
pub(crate) struct Call<R, M> {
    job: &'static str,
    state: Mutex<State<R>>,
    ready: Condvar,
    finish: PhantomData<fn() -> M>,
}

impl<R, M> Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    pub(crate) fn new(job: &'static str) -> Arc<Self> {
        Arc::new(Call {
            job,
            state: Mutex::new(State {
                chunks: Vec::new(),
                submitted: 0,
                received: 0,
                sealed: false,
                error: None,
                taken: false,
                waker: None,
            }),
            ready: Condvar::new(),
            finish: PhantomData,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
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
        self.notify(state);
    }

    /// Fails the call from the caller's side (e.g. an argument would not serialize).
    pub(crate) fn abandon(&self, error: Error) {
        let mut state = self.lock();
        if state.error.is_none() {
            state.error = Some(error);
        }
        state.sealed = true;
        self.notify(state);
    }

    fn notify(&self, mut state: MutexGuard<'_, State<R>>) {
        if state.done() {
            let waker = state.waker.take();
            drop(state);
            self.ready.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn decode(&self, task: TaskInfo, bytes: &[u8]) -> Result<Vec<R>, Error> {
        let mut items = Vec::with_capacity(task.count);
        let mut rest = bytes;
        for offset in 0..task.count {
            let index = task.first + offset;
            let (item, tail) =
                codec::decode_one::<Result<R, Failure>>(rest).map_err(|message| {
                    Error::Serialization {
                        job: self.job.to_owned(),
                        direction: format!("decode the result of item {index}"),
                        message,
                    }
                })?;
            rest = tail;
            items.push(item.map_err(|failure| failure.into_error(self.job, index))?);
        }
        Ok(items)
    }

    fn is_done(&self) -> bool {
        self.lock().done()
    }

    fn succeeded(&self) -> Option<bool> {
        let state = self.lock();
        state.done().then_some(state.error.is_none())
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.lock();
        while !state.done() {
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
        debug_assert!(state.done());
        if let Some(error) = state.error.clone() {
            return Err(error);
        }
        if state.taken {
            return Err(Error::Ipc("this result was already taken".into()));
        }
        state.taken = true;
        let chunks = std::mem::take(&mut state.chunks);
        drop(state);
        let mut items = Vec::new();
        for chunk in chunks {
            items.extend(chunk.into_iter().flatten());
        }
        Ok(M::finish(items))
    }

    fn poll_done(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if state.done() {
            return true;
        }
        match &mut state.waker {
            Some(existing) if existing.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        false
    }
}

impl<R, M> Sink for Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    fn deliver(&self, task: TaskInfo, outcome: Result<Vec<u8>, Error>) {
        // Decode outside the lock: drivers decode their chunks in parallel.
        let decoded = outcome.and_then(|bytes| self.decode(task, &bytes));
        let mut state = self.lock();
        state.received += 1;
        match decoded {
            Ok(items) => {
                if state.chunks.len() <= task.chunk {
                    state.chunks.resize_with(task.chunk + 1, || None);
                }
                state.chunks[task.chunk] = Some(items);
            }
            Err(error) => {
                if state.error.is_none() {
                    state.error = Some(error);
                }
            }
        }
        self.notify(state);
    }

    fn cancelled(&self) -> bool {
        self.lock().error.is_some()
    }
}

/// The object-safe face of a [`Call`], so `AsyncResult` names only its output type.
trait Pending<T>: Send + Sync {
    fn is_done(&self) -> bool;
    fn succeeded(&self) -> Option<bool>;
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    fn take(&self) -> Result<T, Error>;
    fn poll_done(&self, waker: &Waker) -> bool;
}

impl<R, M> Pending<M::Output> for Call<R, M>
where
    R: DeserializeOwned + Send + 'static,
    M: Finish<R>,
{
    fn is_done(&self) -> bool {
        Call::is_done(self)
    }
    fn succeeded(&self) -> Option<bool> {
        Call::succeeded(self)
    }
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        Call::wait_until(self, deadline)
    }
    fn take(&self) -> Result<M::Output, Error> {
        Call::take(self)
    }
    fn poll_done(&self, waker: &Waker) -> bool {
        Call::poll_done(self, waker)
    }
}

/// The result of a call that runs in the background, like Python's `AsyncResult`.
///
/// Returned by [`Pool::map_async`](crate::Pool::map_async),
/// [`Pool::starmap_async`](crate::Pool::starmap_async) and
/// [`Pool::apply_async`](crate::Pool::apply_async). Wait for it with
/// [`get`](AsyncResult::get), or `.await` it under any executor: waiting
/// in a future does not block a thread.
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

    /// `None` while the call runs; then whether it succeeded (Python's `successful()`,
    /// which raises instead of returning `None`).
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
