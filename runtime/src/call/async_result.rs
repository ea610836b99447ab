//! [`AsyncResult`]: the caller's handle on a call that runs in the
//! background (Python's `AsyncResult`), also a `Future`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{Call, Callback, Finish, Outcome};
use crate::Error;

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
    /// Fails the call with `Error::Cancelled` unless it has finished, so its
    /// queued tasks are skipped. When `unless_callbacks`, a call with
    /// callbacks is left to run: someone still wants its outcome.
    fn cancel(&self, unless_callbacks: bool);
}

impl<R, M> Pending<M::Output> for Call<R, M>
where
    R: Send + 'static,
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
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return false;
            }
            state = self.sleep(state, left);
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
            state = self.sleep(state, None);
        }
        match state.outcome.as_ref() {
            Some(Outcome::Value(value)) => callback(Ok(value)),
            Some(Outcome::Failed(error)) => callback(Err(error)),
            _ => {}
        }
    }

    fn cancel(&self, unless_callbacks: bool) {
        let state = self.lock();
        if unless_callbacks && !state.callbacks.is_empty() {
            return;
        }
        // `fail` does nothing once the call has finished; otherwise the
        // backends see `cancelled()` and skip the call's queued tasks.
        let job = self.job.to_owned();
        self.fail(state, Error::Cancelled { job });
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
/// **Cancellation.** Dropping an `AsyncResult` before its result arrived
/// cancels the call, and so does [`cancel`](AsyncResult::cancel): its tasks
/// that have not started are skipped, so they no longer hold up later
/// calls. A task already running in a worker finishes, and its result is
/// discarded. A future that owns the handle cancels it when dropped, so
/// `tokio::time::timeout(d, pool.map_async(job, items)?)` leaves no work
/// behind. A handle with a callback ([`on_success`](AsyncResult::on_success),
/// [`on_error`](AsyncResult::on_error)) is not cancelled by a drop: its
/// callback still runs when the call ends (Python's fire-and-forget
/// `apply_async(f, callback=cb)`).
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
        R: Send + 'static,
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
    /// `Duration::MAX` waits as long as [`wait`](AsyncResult::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.call.wait_until(crate::deadline::after(timeout))
    }

    /// Waits for the call and returns its value, or the first error.
    pub fn get(self) -> Result<T, Error> {
        self.call.wait_until(None);
        self.call.take()
    }

    /// Waits at most `timeout`. Returns [`Error::Timeout`] if the result has
    /// not arrived: the call keeps running and this handle stays usable, so a
    /// later `get` or `get_timeout` still returns the value. `Duration::MAX`
    /// waits as long as [`get`](AsyncResult::get).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, Error> {
        if self.call.wait_until(crate::deadline::after(timeout)) {
            self.call.take()
        } else {
            Err(Error::Timeout(timeout))
        }
    }

    /// Cancels the call: its tasks that have not started are skipped, those
    /// running finish and their results are discarded. Then the call has
    /// failed with [`Error::Cancelled`] (its `on_error` callbacks run with
    /// it), unless its result had already arrived, which stays. Dropping
    /// the handle does the same.
    pub fn cancel(&self) {
        self.call.cancel(false);
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

impl<T> Drop for AsyncResult<T> {
    fn drop(&mut self) {
        self.call.cancel(true);
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
