//! An in-process backend for unit tests: the pool's logic (`pool`, `call`,
//! `imap`) without processes, with tasks answered in any order, lost, or
//! answered with garbage on purpose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, Task};
use crate::{Error, Pool, pool_job};

/// How the fake answers one task.
enum Answer {
    /// Runs the job here, as a worker would.
    Run,
    /// Loses the task with this error.
    Lose(Error),
    /// Replies with these bytes instead of encoded outcomes.
    Garbage(Vec<u8>),
}

type Script = dyn Fn(&Task) -> Answer + Send + Sync;

struct Fake {
    /// Tasks held back until `release`; `None` answers each as it comes.
    held: Option<Mutex<Vec<Task>>>,
    script: Box<Script>,
    closed: AtomicBool,
}

impl Fake {
    fn answer(&self, task: Task) {
        match (self.script)(&task) {
            Answer::Run => match crate::worker::run_chunk(task.job, task.count as u64, &task.items)
            {
                Ok((output, _)) => task.sink.deliver(task.info(), Ok(&output)),
                Err(failure) => {
                    let error = failure.into_error(task.job, task.first);
                    task.fail(error);
                }
            },
            Answer::Lose(error) => task.fail(error),
            Answer::Garbage(bytes) => task.sink.deliver(task.info(), Ok(&bytes)),
        }
    }

    /// Answers the held tasks, last submitted first.
    fn release_reversed(&self) {
        let held = self
            .held
            .as_ref()
            .map(|held| std::mem::take(&mut *held.lock().unwrap()));
        for task in held.into_iter().flatten().rev() {
            self.answer(task);
        }
    }
}

/// Lets the test keep a handle on the fake the pool owns.
struct Shared(Arc<Fake>);

impl Backend for Shared {
    fn submit(&self, task: Task) -> Result<(), Error> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match &self.0.held {
            Some(held) => held.lock().unwrap().push(task),
            None => self.0.answer(task),
        }
        Ok(())
    }
    fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
    }
    fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
    fn join(&self) -> Result<(), Error> {
        self.close();
        Ok(())
    }
    fn terminate(&self) {
        self.close();
    }
    fn processes(&self) -> usize {
        2
    }
}

fn fake_pool(
    hold: bool,
    script: impl Fn(&Task) -> Answer + Send + Sync + 'static,
) -> (Pool, Arc<Fake>) {
    let fake = Arc::new(Fake {
        held: hold.then(Mutex::default),
        script: Box::new(script),
        closed: AtomicBool::new(false),
    });
    (
        Pool::from_backend(Box::new(Shared(Arc::clone(&fake)))),
        fake,
    )
}

#[pool_job]
fn double(x: u64) -> u64 {
    2 * x
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn map_puts_chunks_answered_in_reverse_back_in_order() {
    let (pool, fake) = fake_pool(true, |_| Answer::Run);
    let mut call = pool.chunksize(3).map_async(double, 0..10).unwrap();
    assert!(!call.ready());
    fake.release_reversed();
    assert_eq!(
        call.get_timeout(WAIT).unwrap(),
        (0..10).map(|x| 2 * x).collect::<Vec<_>>()
    );
}

#[test]
fn a_lost_chunk_fails_a_map_but_only_its_own_items_in_imap() {
    let lose_second = |task: &Task| match task.chunk {
        1 => Answer::Lose(Error::Ipc("lost on purpose".into())),
        _ => Answer::Run,
    };
    let (pool, _) = fake_pool(false, lose_second);
    let err = pool.chunksize(2).map(double, 0..6).unwrap_err();
    assert_eq!(err, Error::Ipc("lost on purpose".into()));
    let items: Vec<_> = pool.chunksize(2).imap(double, 0..6).collect();
    let ok: Vec<_> = items.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, true, true]);
    assert_eq!(items[4], Ok(8));
}

#[test]
fn an_undecodable_reply_is_a_serialization_error_never_a_value() {
    let (pool, _) = fake_pool(false, |_| Answer::Garbage(vec![0xff, 0xff, 0xff]));
    match pool.apply(double, 1) {
        Err(Error::Serialization { direction, .. }) => {
            assert!(direction.contains("item 0"), "{direction}")
        }
        other => panic!("expected a Serialization error, got {other:?}"),
    }
    // Too few outcomes for the chunk: also refused.
    let (pool, _) = fake_pool(false, |_| Answer::Garbage(Vec::new()));
    assert!(matches!(
        pool.chunksize(4).map(double, 0..4),
        Err(Error::Serialization { .. })
    ));
}

#[test]
fn a_value_is_returned_once_and_a_second_take_is_misuse() {
    let (pool, _) = fake_pool(false, |_| Answer::Run);
    let mut call = pool.apply_async(double, 21).unwrap();
    assert_eq!(call.get_timeout(WAIT).unwrap(), 42);
    match call.get_timeout(WAIT) {
        Err(Error::Misuse(message)) => assert!(message.contains("already"), "{message}"),
        other => panic!("expected Misuse, got {other:?}"),
    }
}

#[test]
fn callbacks_run_once_with_the_outcome() {
    let (pool, fake) = fake_pool(true, |_| Answer::Run);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ok, failed) = (Arc::clone(&seen), Arc::clone(&seen));
    let call = pool
        .chunksize(1)
        .map_async(double, 0..3)
        .unwrap()
        .on_success(move |values| ok.lock().unwrap().push(format!("ok {values:?}")))
        .on_error(move |err| failed.lock().unwrap().push(format!("err {err}")));
    fake.release_reversed();
    assert_eq!(call.get().unwrap(), vec![0, 2, 4]);
    assert_eq!(*seen.lock().unwrap(), vec!["ok [0, 2, 4]".to_owned()]);
}
