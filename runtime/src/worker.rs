//! The worker side: a constructor that diverts a marked child before `main`,
//! and the loop that runs registered jobs.
//!
//! A worker is the caller's own executable started again with
//! [`WORKER_ENV`] set to the path of a one-shot socket. The constructor runs
//! before `main` (before the test harness, too), so the user writes no
//! `init()` line and the worker never runs the user's `main` body. It only
//! ever runs functions found in the link-time registry, whatever it is sent.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use ipc_channel::ipc::{self, IpcSender};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::wire::{Failure, FailureKind, FromWorker, Payload, ToWorker};

/// The environment variable that turns a start of the executable into a worker.
pub(crate) const WORKER_ENV: &str = "__PROCPOOL_WORKER_SOCKET";
/// The secret a worker shows its parent, so no other process can pose as it.
pub(crate) const TOKEN_ENV: &str = "__PROCPOOL_WORKER_TOKEN";

/// The pid of the process that started a worker or cluster worker.
pub(crate) const PARENT_ENV: &str = "__PROCPOOL_PARENT_PID";

/// Has the kernel send `signal` to this process when its parent dies, and
/// tells whether the parent is still alive, that is, still the process
/// whose pid the parent passed in [`PARENT_ENV`] (read by the caller).
///
/// The parent may be killed with SIGKILL, which runs no clean-up; the check
/// after the request closes the race where it died before. It compares
/// with the parent's own pid rather than with 1, because the parent may
/// itself be pid 1 (a container's entry point).
pub(crate) fn tie_to_parent(signal: nix::sys::signal::Signal, parent: Option<String>) -> bool {
    let _ = nix::sys::prctl::set_pdeathsig(signal);
    let ppid = nix::unistd::getppid().as_raw();
    match parent.and_then(|pid| pid.parse::<i32>().ok()) {
        Some(parent) => ppid == parent,
        None => ppid != 1,
    }
}

/// Exit code of a worker that could not connect back to its parent.
const EXIT_BOOTSTRAP_FAILED: i32 = 86;

static BOOTSTRAP_RAN: AtomicBool = AtomicBool::new(false);
static PROCESS_NAME: OnceLock<String> = OnceLock::new();

/// Whether this binary's start-up hook ran. Reading it from `Pool`
/// construction also makes the linker keep the object file holding the hook.
pub(crate) fn bootstrap_ran() -> bool {
    BOOTSTRAP_RAN.load(Ordering::Acquire)
}

/// The name given to this process by its parent, if it is a worker.
pub(crate) fn process_name() -> Option<&'static str> {
    PROCESS_NAME.get().map(String::as_str)
}

#[ctor::ctor(unsafe)]
fn procpool_bootstrap() {
    BOOTSTRAP_RAN.store(true, Ordering::Release);
    #[cfg(feature = "cluster")]
    crate::cluster::bootstrap();
    let Some(socket) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    // SAFETY: constructors run before `main`, while the process has one
    // thread, so nothing can read the environment concurrently. Removing the
    // marker lets jobs start pools and processes of their own.
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let parent = std::env::var(PARENT_ENV).ok();
    unsafe {
        std::env::remove_var(WORKER_ENV);
        std::env::remove_var(TOKEN_ENV);
        std::env::remove_var(PARENT_ENV);
    }
    let code = match socket.into_string() {
        Ok(socket) => serve(socket, token, parent),
        Err(_) => {
            eprintln!("procpool worker: {WORKER_ENV} is not valid UTF-8; exiting");
            EXIT_BOOTSTRAP_FAILED
        }
    };
    // Never fall through into `main`: that is how fork bombs start.
    std::process::exit(code);
}

/// Connects to the parent and serves tasks until told to stop or the parent goes away.
fn serve(socket: String, token: String, parent: Option<String>) -> i32 {
    if !tie_to_parent(nix::sys::signal::Signal::SIGKILL, parent) {
        return EXIT_BOOTSTRAP_FAILED;
    }
    let replies = match IpcSender::<FromWorker>::connect(socket) {
        Ok(sender) => sender,
        Err(err) => {
            eprintln!("procpool worker: cannot connect to the parent's socket: {err}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let (tasks_tx, tasks) = match ipc::channel::<ToWorker>() {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("procpool worker: cannot create a channel: {err}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let hello = FromWorker::Hello {
        pid: std::process::id(),
        tasks: tasks_tx,
        token,
    };
    if replies.send(hello).is_err() {
        return EXIT_BOOTSTRAP_FAILED;
    }
    install_panic_hook();
    keep_freed_memory();
    let own_pid = std::process::id();

    // A closed channel means the parent is gone or done with us: exit quietly.
    while let Ok(message) = tasks.recv() {
        let (reply, exit) = match message {
            ToWorker::Init { name, initializer } => {
                let _ = PROCESS_NAME.set(name);
                let failure = initializer.and_then(|(job, arg)| run_task(0, &job, 1, &arg).1);
                match failure {
                    None => (FromWorker::Ready, None),
                    // The parent gives up on this worker; exit once it knows why.
                    Some(failure) => (FromWorker::Failed { task: 0, failure }, Some(1)),
                }
            }
            ToWorker::Run {
                task,
                job,
                count,
                items,
                last,
            } => {
                let (reply, failure) = run_task(task, &job, count, &items);
                (reply, last.then_some(i32::from(failure.is_some())))
            }
            ToWorker::Exit => break,
        };
        if std::process::id() != own_pid {
            // A job forked and its child returned here: only the worker
            // itself may answer, or the parent would read two replies.
            // SAFETY: `_exit` ends this process at once; nothing of the
            // worker's state is shared with it.
            unsafe { libc::_exit(0) };
        }
        if replies.send(reply).is_err() {
            break;
        }
        if let Some(code) = exit {
            return code;
        }
    }
    0
}

/// Runs task number `task`; the reply, and the first failure in it.
fn run_task(task: u64, job: &str, count: u64, items: &[u8]) -> (FromWorker, Option<Failure>) {
    match run_chunk(job, count, items) {
        Ok((output, failure)) => (
            FromWorker::Done {
                task,
                items: Payload::new(output),
            },
            failure,
        ),
        Err(failure) => (
            FromWorker::Failed {
                task,
                failure: failure.clone(),
            },
            Some(failure),
        ),
    }
}

/// Runs `job` over a chunk of `count` encoded items, looked up in the
/// registry only: whatever a message names, nothing else can run. `Ok` holds
/// one encoded outcome per item and the first item's failure; `Err` means
/// no item ran (unknown job, undecodable chunk).
pub(crate) fn run_chunk(
    job: &str,
    count: u64,
    items: &[u8],
) -> Result<(Vec<u8>, Option<Failure>), Failure> {
    let registry = crate::job::registry()
        .map_err(|err| Failure::new(FailureKind::UnknownJob, err.to_string()))?;
    let entry = registry
        .get(job)
        .copied()
        .ok_or_else(|| Failure::new(FailureKind::UnknownJob, job))?;
    let count = usize::try_from(count)
        .map_err(|_| Failure::new(FailureKind::DecodeArguments, "item count too large"))?;
    let mut output = Vec::new();
    let failed = (entry.invoke)(count, items, &mut output)?;
    Ok((output, failed))
}

/// Prepares this process to run jobs for a parent or a broker: panics are
/// kept for replies instead of printed, freed memory is kept, and
/// `current_process().name()` says `name`.
#[cfg(feature = "cluster")]
pub(crate) fn become_worker(name: String) {
    let _ = PROCESS_NAME.set(name);
    install_panic_hook();
    keep_freed_memory();
}

/// Tells glibc's allocator to keep freed memory instead of returning it to
/// the kernel after every task.
///
/// A worker allocates and frees the same large buffers (decoded items, the
/// encoded reply) task after task. By default glibc serves blocks over
/// 128 KiB with `mmap` and trims the heap top, so every task paid a page
/// fault per 4 KiB again: measured, 4 400 faults per `map` of 10⁶ integers,
/// nearly all in workers. Like a Python worker, a procpool worker now keeps
/// its peak heap; `max_memory_per_child` bounds it.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called once,
    // before the worker runs any job.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the panic message and location for the reply instead of printing
/// it: the caller gets it in `Error::Panicked`, and stderr is not flooded.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
        let text = match info.location() {
            Some(at) => format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column()),
            None => message.to_owned(),
        };
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
    }));
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}

/// Runs `f` over a chunk. Called by the code `#[pool_job]` generates.
///
/// All items are decoded before any runs, so a chunk with an undecodable
/// item has no side effects. Each item's outcome is encoded separately: a
/// panic or an unserializable result fails that item only.
#[doc(hidden)]
pub fn invoke<T, R>(
    count: usize,
    input: &[u8],
    output: &mut Vec<u8>,
    f: impl Fn(T) -> R,
) -> Result<Option<Failure>, Failure>
where
    T: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let mut items = Vec::with_capacity(count.min(input.len()));
    let mut reader = codec::Reader::new(input);
    for index in 0..count {
        let item = reader.item::<T>().map_err(|message| {
            Failure::new(
                FailureKind::DecodeArguments,
                format!("item {index} of the chunk: {message}"),
            )
        })?;
        items.push(item);
    }
    reader
        .finish()
        .map_err(|message| Failure::new(FailureKind::DecodeArguments, message))?;
    // Results take at least a byte each; reserving avoids regrowing a large buffer.
    output.reserve(2 * count);
    let mut first_failure = None;
    for item in items {
        let outcome = match catch_unwind(AssertUnwindSafe(|| f(item))) {
            Ok(value) => codec::encode_outcome::<R>(Ok(&value), output)
                .map_err(|message| Failure::new(FailureKind::EncodeResult, message)),
            Err(payload) => Err(Failure::new(FailureKind::Panicked, panic_text(&*payload))),
        };
        if let Err(failure) = outcome {
            codec::encode_outcome::<R>(Err(&failure), output)
                .map_err(|message| Failure::new(FailureKind::EncodeResult, message))?;
            first_failure.get_or_insert(failure);
        }
    }
    Ok(first_failure)
}
