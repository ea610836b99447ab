//! Delivering a task's outcome to its caller's sink: from the worker's
//! region in place where the sink can take it, or from a private copy;
//! a sink that panics fails the task rather than the driver's thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::{Driver, Sent};
use crate::Error;
use crate::backend::{Sink, Task, TaskInfo};
use crate::error::panic_message;
use crate::failure::Failure;
use crate::sys::InPlace;

impl Driver {
    /// Hands the reply of `sent`, still in its worker's region, to the
    /// task's caller where that caller can take it from there (see
    /// [`Sink::take_in_place`]); `false` if it cannot.
    pub(super) fn take_in_place(&self, sent: &Sent, reply: &InPlace<'_>) -> bool {
        if !sent.task.before.is_empty() {
            return false;
        }
        let mut info = sent.task.info();
        info.reported = sent.reported;
        let sink = &sent.task.sink;
        // Nothing of the user's decodes here (numbers, bytes, strings), but
        // a caller's callback may run as the call completes, and this
        // thread must survive whatever it does.
        match catch_unwind(AssertUnwindSafe(|| sink.take_in_place(info, reply))) {
            Ok(taken) => taken,
            Err(panic) => {
                self.delivery_panicked(sink, info, sent.task.job, &*panic);
                true
            }
        }
    }

    /// Hands a reply (already matched to `task`), or the failure of the
    /// whole task, to the task's caller.
    ///
    /// Delivering decodes the results with the caller's `Deserialize`
    /// impls, which may panic; this thread must survive that and the call
    /// must still end, so the panic fails the task instead.
    pub(super) fn deliver(&self, task: Task, reported: usize, outcome: Result<&[u8], Failure>) {
        let sink = Arc::clone(&task.sink);
        let info = task.info();
        let job = task.job;
        let delivered = catch_unwind(AssertUnwindSafe(move || match outcome {
            Ok(bytes) => task.deliver(Ok(bytes), reported),
            Err(failure) => {
                let error = failure.into_error(task.job, task.first);
                task.deliver(Err(error), reported);
            }
        }));
        if let Err(panic) = delivered {
            self.delivery_panicked(&sink, info, job, &*panic);
        }
    }

    /// Delivering the results of `info` panicked: fails them instead.
    fn delivery_panicked(
        &self,
        sink: &Arc<dyn Sink>,
        info: TaskInfo,
        job: &str,
        panic: &(dyn std::any::Any + Send),
    ) {
        log::error!(
            "procpool: delivering the results of job `{job}` panicked: {}",
            panic_message(panic)
        );
        let error = Error::Serialization {
            job: job.to_owned(),
            direction: format!(
                "decode the results of items {}..{}",
                info.first,
                info.first + info.count
            ),
            message: format!("decoding panicked: {}", panic_message(panic)),
        };
        // Failing needs no decoding; a sink that panics even then has
        // nothing left to tell its caller.
        let _ = catch_unwind(AssertUnwindSafe(|| sink.deliver(info, Err(error))));
    }
}
