//! The pool's and `Process`'s behaviour with real worker processes, one
//! module per concern, in one test binary: they share no process-wide
//! state (each test builds its own pool; a test that changes the process,
//! its limits or environment lives in a binary of its own, or runs in a
//! child process), so one binary links procpool once for all of them.
//!
//! Jobs are registered under their module path (`pool::basics::square`),
//! so modules may use the same function names.

mod adaptive_chunks;
mod basics;
mod cancel;
mod fidelity;
mod one_item;
mod process;
mod stats;
mod streams;
mod timeouts;
mod worker_state;
