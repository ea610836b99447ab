//! The start-up hook: a constructor that runs before `main` in every start
//! of the executable and diverts a worker to its loop, so the user writes
//! no `init()` line and a worker never runs the user's `main` body.
//!
//! The variables it reads are defined in [`crate::sys`], beside the command
//! that sets them; the loops are [`crate::local::serve`], the worker
//! template's [`crate::local::template::run`] (whose forked workers come
//! back here to serve) and, with the `cluster` feature,
//! `crate::cluster::bootstrap`.

use crate::local::serve::{self, EXIT_BOOTSTRAP_FAILED};
use crate::local::template::{self, Role};
use crate::sys::{self, PARENT_ENV, WORKER_ENV, WORKER_ON_STDIN, WORKER_TEMPLATE};

#[ctor::ctor(unsafe)]
fn procpool_bootstrap() {
    sys::mark_bootstrap_ran();
    #[cfg(feature = "cluster")]
    crate::cluster::bootstrap();
    let Some(marker) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let parent = std::env::var(PARENT_ENV).ok();
    // SAFETY: constructors run before `main`, while the process has one
    // thread, so nothing can read the environment concurrently. Removing the
    // markers lets jobs start pools and processes of their own.
    unsafe {
        std::env::remove_var(WORKER_ENV);
        std::env::remove_var(PARENT_ENV);
    }
    let code = if marker == WORKER_ON_STDIN {
        serve::run(parent)
    } else if marker == WORKER_TEMPLATE {
        // Each worker the template forks returns here, with its channel.
        match template::run(parent.clone()) {
            Role::Worker(channel) => serve::run_forked(parent, channel),
            Role::Exit(code) => code,
        }
    } else {
        eprintln!("procpool worker: {WORKER_ENV} is not the channel to the parent; exiting");
        EXIT_BOOTSTRAP_FAILED
    };
    // Never fall through into `main`: that is how fork bombs start.
    std::process::exit(code);
}
