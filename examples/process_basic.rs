//! Three processes that each sleep a second and say who they are: the
//! `multiprocessing.Process` program of the Python tutorial.
//!
//! Python:
//! ```python
//! import multiprocessing, time, os
//!
//! def worker(i):
//!     time.sleep(1)
//!     print(f"Process_{i}, Name: {multiprocessing.current_process().name}, PID: {os.getpid()}")
//!
//! if __name__ == "__main__":
//!     print(f"Main process, Name: {multiprocessing.current_process().name}, PID: {os.getpid()}")
//!     ps = [multiprocessing.Process(target=worker, args=(i,)) for i in range(3)]
//!     for p in ps: p.start()
//!     for p in ps: p.join()
//!     print("All Done.")
//! ```
//!
//! `Process::spawn` is Python's constructor and `start()` in one call. The
//! three processes run at the same time, so the program takes about one
//! second, and their lines come in any order.

use std::time::Duration;

use procpool::{Process, current_process, pool_job};

#[pool_job]
fn worker(i: u32) {
    std::thread::sleep(Duration::from_secs(1));
    let me = current_process();
    println!("Process_{i}, Name: {}, PID: {}", me.name(), me.pid());
}

fn main() -> Result<(), procpool::Error> {
    let me = current_process();
    println!("Main process, Name: {}, PID: {}", me.name(), me.pid());
    let processes = (0..3)
        .map(|i| Process::spawn(worker, i))
        .collect::<Result<Vec<_>, _>>()?;
    for mut process in processes {
        process.join()?;
    }
    println!("All Done.");
    Ok(())
}
