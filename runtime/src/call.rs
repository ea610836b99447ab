//! One call's results as they come back, and the handle the caller waits on.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::backend::{Part, Sink, TaskInfo};
use crate::job::Decode;
use crate::progress::Progress;
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

/// Decodes a task's reply (one outcome per item) and hands each item's
/// outcome, as the caller sees it, to `each`. Stops at the first `Err` that
/// `each` returns, or when the reply cannot be decoded.
pub(crate) fn decode_items<R: DeserializeOwned + 'static>(
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
    mut each: impl FnMut(Result<R, Error>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut reader = codec::ReplyReader::new(bytes).map_err(|p| undecodable(job, task.first, p))?;
    for offset in 0..task.count {
        let index = task.first + offset;
        let item = reader.next::<R>().map_err(|p| undecodable(job, index, p))?;
        each(item.map_err(|failure| failure.into_error(job, index)))?;
    }
    reader
        .finish()
        .map_err(|p| undecodable(job, task.first + task.count, p))
}

/// Decodes every value of a task's reply into `out`, or fails with the
/// first item's error. Replies without failures take the bulk path.
pub(crate) fn decode_values<R: DeserializeOwned + 'static>(
    job: &str,
    task: TaskInfo,
    bytes: &[u8],
    out: &mut Vec<R>,
) -> Result<(), Error> {
    let mut reader = codec::ReplyReader::new(bytes).map_err(|p| undecodable(job, task.first, p))?;
    let start = out.len();
    if !reader
        .values_into(task.count, out)
        .map_err(|p| undecodable(job, task.first + out.len() - start, p))?
    {
        return decode_items(job, task, bytes, |item| {
            out.push(item?);
            Ok(())
        });
    }
    reader
        .finish()
        .map_err(|p| undecodable(job, task.first + task.count, p))
}

/// Items `first..first + count` of a call, as the decoders see them.
fn part(first: usize, count: usize) -> TaskInfo {
    TaskInfo {
        chunk: 0,
        first,
        count,
        reported: 0,
    }
}

/// [`decode_values`] for items `first..first + count`: a job's values
/// decoder (see `job::Decoders`), picked by `#[pool_job]` where `R` is
/// known to be deserializable.
pub(crate) fn decode_values_of<R: DeserializeOwned + 'static>(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: &mut Vec<R>,
) -> Result<(), Error> {
    decode_values(job, part(first, count), bytes, out)
}

/// [`decode_items`] for items `first..first + count`, collecting every
/// item's outcome: a job's outcomes decoder (see `job::Decoders`).
pub(crate) fn decode_outcomes_of<R: DeserializeOwned + 'static>(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: &mut Vec<Result<R, Error>>,
) -> Result<(), Error> {
    decode_items(job, part(first, count), bytes, |item| {
        out.push(item);
        Ok(())
    })
}

/// The error of the first item that failed in a reply (or of the reply
/// itself, if it cannot be read); a reply without failures is not decoded.
fn failed_item<R>(decode: &Decode<R>, job: &str, task: TaskInfo, bytes: &[u8]) -> Option<Error> {
    match codec::ReplyReader::new(bytes) {
        Err(problem) => Some(undecodable(job, task.first, problem)),
        Ok(reader) if reader.all_succeeded() => None,
        Ok(_) => {
            let mut outcomes = Vec::new();
            match decode.outcomes(job, task.first, task.count, bytes, &mut outcomes) {
                Err(error) => Some(error),
                Ok(()) => outcomes.into_iter().find_map(Result::err),
            }
        }
    }
}

fn undecodable(job: &str, index: usize, problem: codec::Problem) -> Error {
    codec::error_for(job, format!("decode the result of item {index}"), problem)
}

/// Some consecutive items of a chunk: their reply, or why they all failed.
type ReplyPart<'a> = (TaskInfo, Result<&'a [u8], &'a Error>);

struct State<R, T> {
    /// The items of every chunk before `next_chunk`, in input order: the
    /// caller's result vector, decoded into straight from the replies.
    items: Vec<R>,
    /// The chunk whose items go after `items`.
    next_chunk: usize,
    /// Replies that arrived before their turn, still encoded (no larger
    /// than their items), so a map's peak memory is its result plus a few
    /// replies, not twice the result.
    early: BTreeMap<usize, Vec<(TaskInfo, Vec<u8>)>>,
    submitted: usize,
    received: usize,
    sealed: bool,
    /// The result is decided; later chunks are ignored and queued ones skipped.
    finished: bool,
    /// Published after the callbacks ran; what waiters wait for.
    outcome: Option<Outcome<T>>,
    waker: Option<Waker>,
    callbacks: Vec<Callback<T>>,
    /// Threads waiting on `ready`: a notification is a system call, and
    /// an `apply` that ran on its caller's thread has nobody to wake.
    sleepers: usize,
}

/// Collects the chunks of one call. Shared by the caller and the backend.
pub(crate) struct Call<R, M: Finish<R>> {
    job: &'static str,
    decode: Decode<R>,
    progress: Progress,
    state: Mutex<State<R, M::Output>>,
    ready: Condvar,
    finish: PhantomData<fn() -> M>,
}

impl<R, M> Call<R, M>
where
    R: Send + 'static,
    M: Finish<R>,
{
    /// A call of about `expected` items.
    pub(crate) fn new(
        job: &'static str,
        decode: Decode<R>,
        progress: Progress,
        expected: usize,
    ) -> Arc<Self> {
        let mut items = Vec::new();
        // Room for the whole result, so it never moves while it grows; the
        // pages are touched only as items arrive. A huge estimate that
        // cannot be allocated just means growing as usual.
        let _ = items.try_reserve_exact(expected);
        Arc::new(Call {
            job,
            decode,
            progress,
            state: Mutex::new(State {
                items,
                next_chunk: 0,
                early: BTreeMap::new(),
                submitted: 0,
                received: 0,
                sealed: false,
                finished: false,
                outcome: None,
                waker: None,
                callbacks: Vec::new(),
                sleepers: 0,
            }),
            ready: Condvar::new(),
            finish: PhantomData,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<R, M::Output>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on `ready` (at most `timeout`), counted in `sleepers`.
    fn sleep<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<R, M::Output>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State<R, M::Output>> {
        state.sleepers += 1;
        let mut state = match timeout {
            None => self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(timeout) => {
                self.ready
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        state.sleepers -= 1;
        state
    }

    /// Wakes the threads waiting on `ready`, if any.
    fn wake(&self, state: &State<R, M::Output>) {
        if state.sleepers > 0 {
            self.ready.notify_all();
        }
    }

    /// Counts one more task before it is handed to the backend.
    pub(crate) fn expect_chunk(&self) {
        self.lock().submitted += 1;
    }

    /// Blocks while `limit` or more of this call's tasks await their
    /// outcome. Returns `false` once the call has finished (failed early):
    /// nothing more needs submitting.
    pub(crate) fn wait_in_flight_below(&self, limit: usize) -> bool {
        let mut state = self.lock();
        while !state.finished && state.submitted - state.received >= limit {
            state = self.sleep(state, None);
        }
        !state.finished
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
            state.items = Vec::new();
            state.early.clear();
            self.complete(state, Err(error));
        }
    }

    fn complete_if_done(&self, mut state: MutexGuard<'_, State<R, M::Output>>) {
        if state.finished || !state.sealed || state.received < state.submitted {
            return;
        }
        // Chunks after a gap in the numbering (a task that was never
        // submitted) still count, in order.
        for (task, payload) in std::mem::take(&mut state.early).into_values().flatten() {
            if let Err(error) =
                self.decode
                    .values(self.job, task.first, task.count, &payload, &mut state.items)
            {
                return self.fail(state, error);
            }
        }
        let items = std::mem::take(&mut state.items);
        self.complete(state, M::finish(items));
    }

    /// Takes one chunk's outcome, in consecutive parts (one, unless its
    /// worker died part-way through it).
    fn accept(&self, chunk: TaskInfo, parts: &[ReplyPart<'_>]) {
        let mut state = self.lock();
        state.received += 1;
        // A blocking map waits for room to submit more (see `wait_in_flight_below`).
        self.wake(&state);
        if state.finished {
            return;
        }
        // A failed item fails the call now, whatever its chunk's turn.
        for (task, outcome) in parts {
            let failure = match outcome {
                Err(error) => Some((*error).clone()),
                Ok(bytes) => failed_item(&self.decode, self.job, *task, bytes),
            };
            if let Some(error) = failure {
                return self.fail(state, error);
            }
        }
        self.progress
            .advance(chunk.count.saturating_sub(chunk.reported));
        // Every part is a reply here: a failed one failed the call above.
        let parts = parts
            .iter()
            .filter_map(|(task, outcome)| outcome.ok().map(|bytes| (*task, bytes)));
        if chunk.chunk != state.next_chunk {
            // Kept until its turn: a copy as large as the reply, which may
            // not fit; that fails the call, not the process.
            let parts: Result<Vec<_>, codec::Problem> = parts
                .map(|(task, bytes)| Ok((task, codec::try_to_vec(bytes)?)))
                .collect();
            match parts {
                Ok(parts) => {
                    state.early.insert(chunk.chunk, parts);
                    return self.complete_if_done(state);
                }
                Err(problem) => {
                    let direction = format!(
                        "keep the results of items {}..{} until their turn",
                        chunk.first,
                        chunk.first + chunk.count
                    );
                    return self.fail(state, codec::error_for(self.job, direction, problem));
                }
            }
        }
        for (task, bytes) in parts {
            if let Err(error) =
                self.decode
                    .values(self.job, task.first, task.count, bytes, &mut state.items)
            {
                return self.fail(state, error);
            }
        }
        state.next_chunk += 1;
        loop {
            let turn = state.next_chunk;
            let Some(early) = state.early.remove(&turn) else {
                break;
            };
            for (task, bytes) in early {
                if let Err(error) =
                    self.decode
                        .values(self.job, task.first, task.count, &bytes, &mut state.items)
                {
                    return self.fail(state, error);
                }
            }
            state.next_chunk += 1;
        }
        self.complete_if_done(state);
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
        self.wake(&state);
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R, M> Sink for Call<R, M>
where
    R: Send + 'static,
    M: Finish<R>,
{
    fn deliver(&self, task: TaskInfo, outcome: Result<&[u8], Error>) {
        self.accept(task, &[(task, outcome.as_ref().map(|bytes| *bytes))]);
    }

    fn deliver_parts(&self, chunk: TaskInfo, parts: Vec<Part>) {
        let parts: Vec<ReplyPart<'_>> = parts
            .iter()
            .map(|part| {
                let info = TaskInfo {
                    first: part.first,
                    count: part.count,
                    ..chunk
                };
                (info, part.outcome.as_deref())
            })
            .collect();
        self.accept(chunk, &parts);
    }

    fn progress(&self, items: usize) {
        self.progress.advance(items);
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
