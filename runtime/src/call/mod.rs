//! One call's results as they come back ([`Call`], the backend's sink for
//! its tasks), decoded from each task's reply ([`reply`]), and the handle
//! the caller waits on ([`AsyncResult`], in [`async_result`]).

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

mod async_result;
mod reply;

pub use async_result::AsyncResult;
use reply::failed_item;
pub(crate) use reply::{decode_outcomes_of, decode_values_of};

use crate::backend::{Part, Sink, TaskInfo};
use crate::job::Decode;
use crate::progress::Progress;
use crate::sys::InPlace;
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
        self.next_turn(state);
    }

    /// The chunk whose turn it was is in `items`: appends the chunks that
    /// arrived early and are next, then completes the call if it is done.
    fn next_turn(&self, mut state: MutexGuard<'_, State<R, M::Output>>) {
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

    fn take_in_place(&self, task: TaskInfo, reply: &InPlace<'_>) -> bool {
        if codec::direct_header::<R>().is_none() {
            return false;
        }
        let mut state = self.lock();
        if !state.finished && task.chunk != state.next_chunk {
            // Kept until its turn, as a private copy (`accept`).
            return false;
        }
        let taken = if state.finished {
            Ok(true)
        } else {
            codec::values_in_place(reply, task.count, &mut state.items)
        };
        match taken {
            Ok(false) => false,
            Ok(true) => {
                state.received += 1;
                self.wake(&state);
                if !state.finished {
                    self.progress
                        .advance(task.count.saturating_sub(task.reported));
                    self.next_turn(state);
                }
                true
            }
            Err(problem) => {
                state.received += 1;
                self.wake(&state);
                self.fail(state, reply::undecodable(self.job, task.first, problem));
                true
            }
        }
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
