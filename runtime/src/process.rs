//! Handles to worker processes: start one, talk to it, watch it die, reap it.
//!
//! Every child is reaped by the handle that owns it (on drop at the latest),
//! so no zombie outlives its handle.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};
use ipc_channel::{IpcError, TryRecvError};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::error::ExitCause;
use crate::wire::{FromWorker, ToWorker};
use crate::{Error, worker};
use serde_bytes::ByteBuf;

/// How often a waiting parent looks at a child that has not answered yet.
const POLL: Duration = Duration::from_millis(2);
/// How long a worker may take to exit after its channel closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Why a conversation with a worker ended early.
#[derive(Debug)]
pub(crate) enum Lost {
    /// The worker process is gone (or unreachable) and has been reaped.
    Died(ExitCause),
    /// The caller asked to stop waiting.
    Aborted,
    /// No answer within the time limit; the worker has been killed and reaped.
    TimedOut,
    /// The worker said something out of turn (described); it cannot be trusted further.
    Protocol(String),
}

/// Which thread starts a child process.
///
/// Linux sends `PR_SET_PDEATHSIG` when the *thread* that forked the child
/// exits, not the process, so the forking thread must outlive the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForkFrom {
    /// The calling thread, which outlives the child (a pool's driver
    /// threads do: they stop their worker before they end). Drivers start
    /// their workers in parallel this way.
    ThisThread,
    /// One thread that lives as long as the program, for callers that may
    /// end first (a `Process` started from a short-lived thread).
    LongLivedThread,
}

/// A job run once in every new worker before it takes tasks.
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) job: &'static str,
    /// The encoded argument.
    pub(crate) arg: Vec<u8>,
}

/// Where another thread can find a worker's pid to kill it.
///
/// The owning [`WorkerProcess`] holds the lock while it reaps and clears the
/// pid before releasing it, so [`PidSlot::kill`] never signals a pid that
/// was reaped and possibly reused.
#[derive(Debug, Default)]
pub(crate) struct PidSlot(Mutex<Option<u32>>);

impl PidSlot {
    /// Sends SIGKILL to the registered worker, if any.
    pub(crate) fn kill(&self) {
        let pid = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A running worker process connected over ipc-channel.
pub(crate) struct WorkerProcess {
    child: Child,
    pid: u32,
    tasks: IpcSender<ToWorker>,
    replies: IpcReceiver<FromWorker>,
    reaped: Option<ExitCause>,
    slot: Option<Arc<PidSlot>>,
}

impl WorkerProcess {
    /// Starts the current executable as a worker named `name` and waits until
    /// it is connected and initialised. Fails (never hangs) if the child dies
    /// first, does not connect within `timeout`, or `abort` becomes true.
    pub(crate) fn spawn(
        name: &str,
        timeout: Duration,
        abort: &AtomicBool,
        initializer: Option<&Initializer>,
        fork_from: ForkFrom,
    ) -> Result<Self, Error> {
        if !worker::bootstrap_ran() {
            return Err(Error::Spawn(
                "procpool's start-up hook did not run in this executable, so a worker could \
                 not tell it is a worker; this happens when the linker dropped procpool's \
                 constructor (link procpool normally, without `-C link-dead-code=no` tricks, \
                 and do not strip .init_array)"
                    .into(),
            ));
        }
        let (server, socket) = new_private_server()?;
        let token = secret_token()?;
        let mut command = Command::new("/proc/self/exe");
        if let Some(arg0) = std::env::args_os().next() {
            command.arg0(arg0);
        }
        command
            .env(worker::WORKER_ENV, &socket)
            .env(worker::TOKEN_ENV, &token)
            .env(worker::PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null());
        let child = match fork_from {
            ForkFrom::ThisThread => command.spawn(),
            ForkFrom::LongLivedThread => spawn_from_long_lived_thread(command),
        }
        .map_err(|e| {
            Error::Spawn(format!(
                "cannot start /proc/self/exe as a worker process: {e}"
            ))
        })?;

        // `accept` has no timeout, so it runs on its own thread while this
        // one watches the child and the clock.
        let (accepted_tx, accepted) = mpsc::channel();
        let acceptor = thread::Builder::new()
            .name("procpool-accept".into())
            .spawn(move || {
                let _ = accepted_tx.send(server.accept());
            })
            .map_err(|e| Error::Spawn(format!("cannot start a thread: {e}")))?;

        let mut pending = Pending {
            child: Some(child),
            socket: &socket,
            acceptor: Some(acceptor),
        };
        let deadline = Instant::now() + timeout;
        let (replies, hello) = loop {
            match accepted.recv_timeout(POLL) {
                Ok(Ok(pair)) => break pair,
                Ok(Err(err)) => {
                    return Err(pending.fail(format!("the bootstrap handshake failed: {err:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(pending.fail("the bootstrap thread ended unexpectedly".into()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(cause) = pending.exited() {
                        return Err(pending.fail(format!(
                            "the worker process {cause} before connecting back (its stderr, \
                             above, may say why)"
                        )));
                    }
                    if abort.load(Ordering::Acquire) {
                        return Err(pending.fail("the pool was terminated".into()));
                    }
                    if Instant::now() >= deadline {
                        return Err(pending.fail(format!(
                            "the worker did not connect back within {timeout:?}"
                        )));
                    }
                }
            }
        };
        let (pid, tasks) = match accept_hello(hello, &token) {
            Ok(accepted) => accepted,
            Err(why) => return Err(pending.fail(why.into())),
        };
        let child = pending.disarm();
        let mut worker = WorkerProcess {
            child,
            pid,
            tasks,
            replies,
            reaped: None,
            slot: None,
        };
        let init = ToWorker::Init {
            name: name.to_owned(),
            initializer: initializer
                .map(|init| (init.job.to_owned(), ByteBuf::from(init.arg.clone()))),
        };
        // An initializer may legitimately take long (loading a model, say):
        // only the connection is bounded by the start-up timeout then.
        let init_deadline = if initializer.is_some() {
            None
        } else {
            Some(deadline)
        };
        let reply = worker.call(init, init_deadline, abort).map_err(|lost| {
            Error::Spawn(match lost {
                Lost::Died(cause) => format!("the worker process {pid} {cause} while starting"),
                Lost::TimedOut => format!("the worker did not start within {timeout:?}"),
                Lost::Aborted => "the worker start was interrupted".to_owned(),
                Lost::Protocol(violation) => format!("the worker broke the protocol: {violation}"),
            })
        })?;
        match reply {
            FromWorker::Ready => Ok(worker),
            FromWorker::Failed { failure, .. } => Err(Error::InitializerFailed {
                job: initializer
                    .map(|init| init.job)
                    .unwrap_or_default()
                    .to_owned(),
                message: failure
                    .into_error(initializer.map(|init| init.job).unwrap_or_default(), 0)
                    .to_string(),
            }),
            other => Err(Error::Spawn(format!(
                "the worker sent an unexpected reply: {other:?}"
            ))),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Publishes this worker's pid in `slot` until it is reaped.
    pub(crate) fn register(&mut self, slot: Arc<PidSlot>) {
        *slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.pid);
        self.slot = Some(slot);
    }

    /// Sends one message and waits for the reply. `deadline` bounds the wait
    /// (the worker is killed when it passes); `abort` is checked while waiting.
    pub(crate) fn call(
        &mut self,
        message: ToWorker,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<FromWorker, Lost> {
        self.send(message)?;
        self.recv(deadline, abort)
    }

    /// Sends one message without waiting for a reply.
    pub(crate) fn send(&mut self, message: ToWorker) -> Result<(), Lost> {
        if self.tasks.send(message).is_err() {
            return Err(Lost::Died(self.reap()));
        }
        Ok(())
    }

    /// Waits for the next reply; when `deadline` passes the worker is
    /// killed and the wait fails with [`Lost::TimedOut`].
    pub(crate) fn recv(
        &mut self,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<FromWorker, Lost> {
        match self.recv_until(deadline, abort)? {
            Some(reply) => Ok(reply),
            None => {
                self.kill_and_reap();
                Err(Lost::TimedOut)
            }
        }
    }

    /// Waits for the next reply until `deadline`; `Ok(None)` when it passed
    /// (the worker is left running).
    pub(crate) fn recv_until(
        &mut self,
        deadline: Option<Instant>,
        abort: &AtomicBool,
    ) -> Result<Option<FromWorker>, Lost> {
        loop {
            let wait = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.min(Duration::from_millis(100))
                }
                None => Duration::from_millis(100),
            };
            match self.replies.try_recv_timeout(wait) {
                Ok(reply) => return Ok(Some(reply)),
                Err(TryRecvError::Empty) => {
                    if abort.load(Ordering::Acquire) {
                        self.kill_and_reap();
                        return Err(Lost::Aborted);
                    }
                }
                Err(TryRecvError::IpcError(IpcError::Disconnected)) => {
                    return Err(Lost::Died(self.reap()));
                }
                Err(TryRecvError::IpcError(_)) => {
                    // A reply we cannot decode means the worker is not
                    // speaking our protocol: do not trust it further.
                    self.kill_and_reap();
                    return Err(Lost::Died(self.reaped.unwrap_or(ExitCause::Unknown)));
                }
            }
        }
    }

    /// How the process ended, if it has, without reaping it (so its pid stays
    /// reserved and signals cannot reach a stranger).
    pub(crate) fn peek_exit(&self) -> Option<ExitCause> {
        if let Some(cause) = self.reaped {
            return Some(cause);
        }
        let pid = Pid::from_raw(i32::try_from(self.pid).ok()?);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitCause::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(ExitCause::Signal(signal as i32)),
            Ok(_) => None,
            Err(_) => Some(ExitCause::Unknown),
        }
    }

    /// Resident memory of the process (`VmRSS` in `/proc/<pid>/status`).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Sends `signal` unless the process has already been reaped.
    pub(crate) fn signal(&self, signal: Signal) {
        if self.reaped.is_none()
            && let Ok(pid) = i32::try_from(self.pid)
        {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits for the process to end by itself (no grace limit) and reaps it.
    pub(crate) fn wait_exit(&mut self) -> ExitCause {
        if let Some(cause) = self.reaped {
            return cause;
        }
        let cause = self
            .child
            .wait()
            .map(ExitCause::from_status)
            .unwrap_or(ExitCause::Unknown);
        self.reaped = Some(cause);
        cause
    }

    /// Asks the worker to exit and reaps it; kills it if it does not comply quickly.
    pub(crate) fn shutdown(mut self) {
        if self.tasks.send(ToWorker::Exit).is_ok() {
            self.reap();
        } else {
            self.kill_and_reap();
        }
    }

    fn kill_and_reap(&mut self) -> ExitCause {
        if self.reaped.is_none() {
            let _ = self.child.kill();
        }
        self.reap()
    }

    /// Waits for the child to end, killing it if it lingers after its channel closed.
    fn reap(&mut self) -> ExitCause {
        if let Some(cause) = self.reaped {
            return cause;
        }
        let slot = self.slot.take();
        let mut registered = slot
            .as_ref()
            .map(|slot| slot.0.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = Instant::now() + EXIT_GRACE;
        // An exiting process closes its end of the channel first: wait for
        // that without sleeping, then for the exit itself in short steps.
        while let Ok(_) | Err(TryRecvError::Empty) = self
            .replies
            .try_recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if Instant::now() >= deadline {
                break;
            }
        }
        let mut pause = Duration::from_micros(20);
        let cause = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break ExitCause::from_status(status),
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(POLL);
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    break self
                        .child
                        .wait()
                        .map(ExitCause::from_status)
                        .unwrap_or(ExitCause::Unknown);
                }
                Err(_) => break ExitCause::Unknown,
            }
        };
        self.reaped = Some(cause);
        if let Some(pid) = registered.as_deref_mut() {
            *pid = None;
        }
        cause
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// The worker's pid and task sender, if its first message is a `Hello`
/// carrying the secret this parent gave it.
fn accept_hello(
    hello: FromWorker,
    token: &str,
) -> Result<(u32, IpcSender<ToWorker>), &'static str> {
    match hello {
        FromWorker::Hello {
            pid,
            tasks,
            token: theirs,
        } if theirs == token => Ok((pid, tasks)),
        FromWorker::Hello { .. } => {
            Err("a process other than the worker connected to the bootstrap socket; refusing it")
        }
        _ => Err("the worker sent an unexpected first message"),
    }
}

/// A one-shot server whose directory and socket only this user can reach.
///
/// ipc-channel creates both with the process umask (often 0755); tighten
/// them before any child exists. The secret token closes the short window
/// between `bind` and `chmod`.
fn new_private_server() -> Result<(IpcOneShotServer<FromWorker>, String), Error> {
    use std::os::unix::fs::PermissionsExt;
    let (server, socket) = IpcOneShotServer::<FromWorker>::new()
        .map_err(|e| Error::Spawn(format!("cannot create the bootstrap socket: {e}")))?;
    let path = std::path::Path::new(&socket);
    let private = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    path.parent()
        .map_or(Ok(()), |dir| private(dir, 0o700))
        .and_then(|()| private(path, 0o600))
        .map_err(|e| {
            Error::Spawn(format!(
                "cannot restrict the bootstrap socket {socket}: {e}"
            ))
        })?;
    Ok((server, socket))
}

/// 128 random bits, in hex: what a worker must present to be accepted.
/// It reaches the child through its environment, which only this user can
/// read (`/proc/<pid>/environ` is mode 0400).
fn secret_token() -> Result<String, Error> {
    random_hex()
        .map_err(|e| Error::Spawn(format!("cannot read /dev/urandom for a worker token: {e}")))
}

/// 128 bits from the kernel's random source, as 32 hex digits.
pub(crate) fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut random| random.read_exact(&mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts `command` from one thread that lives as long as the program.
///
/// Linux sends `PR_SET_PDEATHSIG` when the *thread* that forked the child
/// exits, not the process. Forking from the caller's thread would kill a
/// worker or `Process` as soon as a short-lived thread that started it ends.
fn spawn_from_long_lived_thread(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Request>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("procpool-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(requests))
    });
    let Some(spawner) = spawner else {
        return Err(std::io::Error::other(
            "cannot start procpool's spawner thread",
        ));
    };
    let (reply, response) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, reply));
    if sent.is_err() {
        return Err(std::io::Error::other("procpool's spawner thread is gone"));
    }
    response
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("procpool's spawner thread is gone")))
}

/// A child started but not yet connected: on failure it is killed, reaped,
/// and the accept thread is released by connecting to its socket ourselves.
struct Pending<'a> {
    child: Option<Child>,
    socket: &'a str,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Pending<'_> {
    fn exited(&mut self) -> Option<ExitCause> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(ExitCause::from_status(status)),
            _ => None,
        }
    }

    fn fail(&mut self, message: String) -> Error {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(acceptor) = self.acceptor.take() {
            if !acceptor.is_finished()
                && let Ok(unblock) = IpcSender::<FromWorker>::connect(self.socket.to_owned())
            {
                let _ = unblock.send(FromWorker::Abort);
            }
            let _ = acceptor.join();
        }
        Error::Spawn(message)
    }

    fn disarm(mut self) -> Child {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        match self.child.take() {
            Some(child) => child,
            None => unreachable!("disarm is called once, on a pending child"),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.child.is_some() || self.acceptor.is_some() {
            let _ = self.fail(String::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    static NEVER: AtomicBool = AtomicBool::new(false);

    #[test]
    fn bootstrap_socket_is_private_to_this_user() {
        let (_server, socket) = new_private_server().unwrap();
        let socket = std::path::Path::new(&socket);
        let dir_mode = std::fs::metadata(socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700, "directory mode {dir_mode:o}");
        let socket_mode = std::fs::metadata(socket).unwrap().permissions().mode();
        assert_eq!(socket_mode & 0o777, 0o600, "socket mode {socket_mode:o}");
    }

    #[test]
    fn only_the_right_token_is_accepted() {
        let hello = |token: &str| FromWorker::Hello {
            pid: 42,
            tasks: ipc_channel::ipc::channel().unwrap().0,
            token: token.to_owned(),
        };
        let secret = secret_token().unwrap();
        assert_eq!(accept_hello(hello(&secret), &secret).unwrap().0, 42);
        let impostor = accept_hello(hello("guessed"), &secret).unwrap_err();
        assert!(impostor.contains("other than the worker"), "{impostor}");
        assert!(accept_hello(hello(""), &secret).is_err());
        assert!(accept_hello(FromWorker::Ready, &secret).is_err());
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (secret_token().unwrap(), secret_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn garbage_from_the_parent_makes_the_worker_exit_cleanly() {
        let mut worker = WorkerProcess::spawn(
            "garbage-test",
            Duration::from_secs(10),
            &NEVER,
            None,
            ForkFrom::ThisThread,
        )
        .unwrap();
        let raw: IpcSender<String> = worker.tasks.clone().to_opaque().to();
        raw.send("not a ToWorker message".repeat(10)).unwrap();
        let never = AtomicBool::new(false);
        match worker.recv(Some(Instant::now() + Duration::from_secs(10)), &never) {
            Err(Lost::Died(cause)) => assert_eq!(cause, ExitCause::Code(0)),
            other => panic!("expected a clean exit, got {other:?}"),
        }
    }

    #[test]
    fn unknown_job_gets_an_error_reply() {
        let mut worker = WorkerProcess::spawn(
            "unknown-job-test",
            Duration::from_secs(10),
            &NEVER,
            None,
            ForkFrom::ThisThread,
        )
        .unwrap();
        let run = ToWorker::Run {
            task: 1,
            job: "no::such::job".into(),
            count: 1,
            items: crate::wire::Payload::new(vec![1, 2, 3]),
            last: false,
        };
        match worker.call(run, Some(Instant::now() + Duration::from_secs(10)), &NEVER) {
            Ok(FromWorker::Failed { task: 1, failure }) => {
                let error = failure.into_error("no::such::job", 0);
                assert!(matches!(error, Error::UnknownJob(ref job) if job == "no::such::job"));
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
        // The worker is still serving.
        let run = ToWorker::Run {
            task: 2,
            job: "still::unknown".into(),
            count: 0,
            items: crate::wire::Payload::new(Vec::new()),
            last: false,
        };
        assert!(matches!(
            worker.call(run, None, &NEVER),
            Ok(FromWorker::Failed { task: 2, .. })
        ));
    }
}
