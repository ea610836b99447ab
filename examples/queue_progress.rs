//! A `Process` streams its progress to the main process through a `Queue`:
//! the `multiprocessing.Queue` program of the Python tutorial.
//!
//! Python:
//! ```python
//! import multiprocessing
//!
//! def work(queue, steps):
//!     for step in range(1, steps + 1):
//!         queue.put(("progress", step))
//!     queue.put(("done", sum(range(steps + 1))))
//!
//! if __name__ == "__main__":
//!     queue = multiprocessing.Queue()
//!     p = multiprocessing.Process(target=work, args=(queue, 5))
//!     p.start()
//!     while True:
//!         kind, value = queue.get()
//!         print(f"[Main]: {kind} {value}")
//!         if kind == "done":
//!             break
//!     p.join()
//! ```
//!
//! The queue is an argument of the job like any other. Unlike Python's,
//! joining the process before draining the queue cannot deadlock, and a
//! `get` whose producers all died fails instead of waiting for ever.

use procpool::{Process, Queue, pool_job};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Progress(u32),
    Done(u64),
}

#[pool_job]
fn work(queue: Queue<Report>, steps: u32) {
    for step in 1..=steps {
        queue.put(Report::Progress(step)).unwrap();
    }
    queue
        .put(Report::Done((0..=u64::from(steps)).sum()))
        .unwrap();
}

fn main() -> Result<(), procpool::Error> {
    let queue = Queue::new()?;
    let mut process = Process::spawn(work, (queue.clone(), 5))?;
    loop {
        match queue.get()? {
            Report::Progress(step) => println!("[Main]: progress {step}/5"),
            Report::Done(total) => {
                println!("[Main]: done, total {total}");
                break;
            }
        }
    }
    process.join()?;
    Ok(())
}
