//! The start-up hook: a constructor that runs before `main` in every start
//! of the executable and diverts a worker to its loop, so the user writes
//! no `init()` line and a worker never runs the user's `main` body.
//!
//! In a worker (and in the worker template, and a cluster worker) the hook
//! never returns: the process serves and exits. The loader would then
//! never run the constructors placed after procpool's in the executable's
//! `.init_array` (a `ctor` of higher priority or later in link order, a C
//! library's `__attribute__((constructor))`, which goes after every
//! prioritised entry), and a library that sets up its globals in one would
//! misbehave only in workers. So before it serves, the hook runs those
//! itself, once each, in the loader's order and with the loader's
//! arguments (see [`run_later_constructors`]): every constructor of the
//! program has run once, in order, before the first job. They still see
//! the worker marker ([`WORKER_ENV`]), which is removed only after them.
//! In the template they run once, before it checks that it has one thread,
//! so one that starts a thread still makes workers start by exec.
//!
//! The variables it reads are defined in [`crate::sys`], beside the command
//! that sets them; the loops are [`crate::local::worker_loop`], the worker
//! template's [`crate::local::template::run`] (whose forked workers come
//! back here to serve) and, with the `cluster` feature,
//! `crate::cluster::bootstrap`.

use std::ffi::{c_char, c_int};

use crate::local::template::{self, Role};
use crate::local::worker_loop::{self, EXIT_BOOTSTRAP_FAILED};
use crate::sys::{self, PARENT_ENV, WORKER_ENV, WORKER_ON_STDIN, WORKER_TEMPLATE};

/// An `.init_array` entry as glibc calls it: `(argc, argv, envp)`.
type Constructor = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char);

/// procpool's entry in the executable's `.init_array`, at priority 500 (the
/// `ctor` crate's default, so it keeps its place among other crates'
/// constructors). Written by hand rather than with `ctor` for two things:
/// the hook receives the loader's arguments, to pass them on, and its
/// address is known, to find its own entry in the array. `#[used]` keeps it
/// in the link, as `ctor` does with its own entries.
#[used]
#[unsafe(link_section = ".init_array.500")]
static BOOTSTRAP: Constructor = procpool_bootstrap;

/// The hook. A worker serves from here and exits.
///
/// # Safety
/// Called once, by the loader, before `main`, with its arguments.
unsafe extern "C" fn procpool_bootstrap(
    argc: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) {
    sys::mark_bootstrap_ran();
    #[cfg(feature = "cluster")]
    let cluster = crate::cluster::started_as_worker();
    #[cfg(not(feature = "cluster"))]
    let cluster = false;
    let marker = std::env::var_os(WORKER_ENV);
    if marker.is_none() && !cluster {
        return;
    }
    // Under the program's own name, not `exe` (workers forked from the
    // template inherit its name).
    sys::name_after_program();
    // SAFETY: this is the loader's call of the hook, before `main`, with
    // the loader's arguments; this process never returns from the hook
    // (it serves and exits below), so the loader never calls them again.
    unsafe { run_later_constructors(argc, argv, envp) };
    #[cfg(feature = "cluster")]
    crate::cluster::bootstrap();
    let Some(marker) = marker else {
        return;
    };
    let parent = std::env::var(PARENT_ENV).ok();
    // SAFETY: constructors run before `main`, while the process has one
    // thread, so nothing can read the environment concurrently (a
    // constructor that started a thread makes the template refuse to fork,
    // and an exec'd worker's threads are its own constructors'). Removing
    // the markers lets jobs start pools and processes of their own.
    unsafe {
        std::env::remove_var(WORKER_ENV);
        std::env::remove_var(PARENT_ENV);
    }
    let code = if marker == WORKER_ON_STDIN {
        worker_loop::run(parent)
    } else if marker == WORKER_TEMPLATE {
        // Each worker the template forks returns here, with its channel.
        match template::run(parent.clone()) {
            Role::Worker(channel) => worker_loop::run_forked(parent, channel),
            Role::Exit(code) => code,
        }
    } else {
        eprintln!("procpool worker: {WORKER_ENV} is not the channel to the parent; exiting");
        EXIT_BOOTSTRAP_FAILED
    };
    // Never fall through into `main`: that is how fork bombs start.
    std::process::exit(code);
}

/// Calls every entry of the executable's `.init_array` that comes after
/// procpool's own ([`BOOTSTRAP`]), in order, with `argc`, `argv` and
/// `envp`, as the loader would have. Shared libraries' constructors ran
/// before the executable's, and the entries before procpool's have run:
/// with these, every constructor has run once. Finds nothing to run when
/// procpool's entry is not in the array (procpool linked into a shared
/// library, whose own constructors then all ran before it).
///
/// # Safety
/// Called at most once per process, from [`procpool_bootstrap`] as the
/// loader called it, with its arguments, and the process never returns to
/// the loader afterwards (or these constructors would run twice).
unsafe fn run_later_constructors(
    argc: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) {
    // The linker's bounds of the output `.init_array` of the module that
    // holds this code (GNU ld, gold, lld and mold all define them, hidden):
    // the array the loader walks through `DT_INIT_ARRAY`.
    unsafe extern "C" {
        static __init_array_start: u8;
        static __init_array_end: u8;
    }
    let start = (&raw const __init_array_start).cast::<usize>();
    let end = (&raw const __init_array_end).cast::<usize>();
    let own = BOOTSTRAP as usize;
    let entries = (end as usize).saturating_sub(start as usize) / size_of::<usize>();
    let mut after_own = false;
    for index in 0..entries {
        // SAFETY: `index` is within the array the linker bounded, whose
        // entries are pointer-sized and pointer-aligned, relocated by the
        // loader before any constructor runs, and not written after.
        let entry = unsafe { start.add(index).read() };
        if !after_own {
            after_own = entry == own;
            continue;
        }
        // 0 and -1 were end markers of the old `.ctors` layout; skip them
        // should a linker have merged one in.
        if entry == 0 || entry == usize::MAX {
            continue;
        }
        // SAFETY: an `.init_array` entry is the address of a constructor
        // that the loader would call with these arguments (a constructor
        // that takes none ignores them, as the C calling convention
        // allows), and this one has not run: it comes after procpool's.
        unsafe {
            let constructor = std::mem::transmute::<usize, Constructor>(entry);
            constructor(argc, argv, envp);
        }
    }
}
