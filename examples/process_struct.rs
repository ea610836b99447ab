//! The class-based variant of the `Process` program: the Python tutorial
//! subclasses `multiprocessing.Process` and overrides `run()`.
//!
//! Python:
//! ```python
//! import multiprocessing, time, os
//!
//! class MyProcess(multiprocessing.Process):
//!     def __init__(self, i):
//!         super().__init__()
//!         self.i = i
//!
//!     def run(self):
//!         time.sleep(1)
//!         print(f"Process_{self.i}, Name: {self.name}, PID: {os.getpid()}")
//!
//! if __name__ == "__main__":
//!     print(f"Main process, Name: {multiprocessing.current_process().name}, PID: {os.getpid()}")
//!     ps = [MyProcess(i) for i in range(3)]
//!     for p in ps: p.start()
//!     for p in ps: p.join()
//!     print("All Done.")
//! ```
//!
//! Rust has no inheritance, so there is nothing to subclass. It would not
//! help anyway: the new process is a fresh start of this executable, not a
//! copy of the parent's memory, so the only things that reach it are plain
//! data and the name of a registered function. The Rust shape says exactly
//! that: the process's state is a serde struct, `run` is a `#[pool_job]`
//! that takes the struct by value, and `MyProcess::start` hands one to the
//! other. Inside `run`, Python's `self.name` is `current_process().name()`.

use std::time::Duration;

use procpool::{Process, current_process, pool_job};
use serde::{Deserialize, Serialize};

/// What Python keeps in the subclass's attributes.
#[derive(Debug, Serialize, Deserialize)]
struct MyProcess {
    i: u32,
}

impl MyProcess {
    fn new(i: u32) -> Self {
        MyProcess { i }
    }

    /// Python's `start()`: sends a copy of `self` to a new process that runs [`run`].
    fn start(self) -> Result<Process<()>, procpool::Error> {
        Process::spawn(run, self)
    }
}

/// Python's `run(self)`, executed in the new process.
#[pool_job]
fn run(this: MyProcess) {
    std::thread::sleep(Duration::from_secs(1));
    let me = current_process();
    println!("Process_{}, Name: {}, PID: {}", this.i, me.name(), me.pid());
}

fn main() -> Result<(), procpool::Error> {
    let me = current_process();
    println!("Main process, Name: {}, PID: {}", me.name(), me.pid());
    let processes = (0..3)
        .map(|i| MyProcess::new(i).start())
        .collect::<Result<Vec<_>, _>>()?;
    for mut process in processes {
        process.join()?;
    }
    println!("All Done.");
    Ok(())
}
