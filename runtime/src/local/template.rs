//! The worker template (a fork server, like Python's `forkserver`): one
//! process per program that forks new workers on request, so that a
//! worker starts without the exec, dynamic loading and constructors that
//! cost about 0.6 ms each on the test machine.
//!
//! The template is started the way a worker is (this executable again,
//! with [`WORKER_ENV`] set to [`WORKER_TEMPLATE`] and its socket to the
//! parent as stdin), from the thread that lives as long as the program.
//! It has one thread and holds nothing of procpool's but that socket. For
//! each request, which carries the new worker's end of its channel, it
//! forks with `CLONE_PARENT`: the worker is this process's child, not the
//! template's, so this process opens its pidfd, reaps it and reads how it
//! ended exactly as for a worker started by exec, its pid cannot be reused
//! before this process reaps it, and it dies when the program does (its
//! parent-death signal follows the thread that started the template).
//! The worker closes the template's socket first thing, then serves
//! exactly as an exec'd worker does (`local::worker_loop`), starting with the
//! greeting that carries its pid.
//!
//! A worker forked from the template inherits what the template inherited
//! when it started: environment, working directory, stdout and stderr,
//! ids and resource limits. Python's forkserver stops there; here, a
//! template started under other values of any of these
//! ([`Inherited`]) is replaced before it forks, so workers see what an
//! exec'd worker would. Other attributes (umask, ignored signals, CPU
//! affinity, nice value) are those of when the template started. Workers
//! forked from one template share its address-space layout and the random
//! keys its constructors drew, as forked processes do.
//!
//! A template that dies (killed, say) is reaped at once by a thread of
//! this process that waits on its pidfd (it reaps that one process only,
//! never "any child"), and replaced on the next request; a request it took
//! with it is tried once more. One that does not answer within the
//! caller's `spawn_timeout` is killed. Bytes on its socket that are not a
//! request end the template (see [`run`]), and an answer that is not one
//! of its own makes the caller kill it and try once more with a new one,
//! putting down any worker the broken template may have forked. Where
//! `clone` with `CLONE_PARENT` is refused (a sandbox's seccomp filter), or
//! a constructor started a thread in the template (a fork would copy that
//! thread's locks but not the thread), the program starts every worker by
//! exec from then on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, socketpair};

use crate::Error;
use crate::error::ExitCause;
use crate::local::channel::{self, poll_any};
use crate::local::worker_loop::{self, EXIT_BOOTSTRAP_FAILED};
use crate::sys::{self, Forked, Inherited, WORKER_ENV, WORKER_TEMPLATE};

/// The longest single wait: how often a waiting caller looks at its abort flag.
const STEP: Duration = Duration::from_millis(100);

/// The one request: "fork a worker with the channel end I am passing".
const FORK: &[u8] = b"fork";

/// Whether this program starts workers by exec only: set when the system
/// refused the template's `clone`.
static EXEC_ONLY: AtomicBool = AtomicBool::new(false);

/// The number the next template started by this program gets: its reaper
/// tells by it whether the slot still holds its template or a later one.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The program's template, and whose turn it is to talk to it.
static SERVER: Server = Server {
    slot: Mutex::new(Slot {
        busy: false,
        template: None,
    }),
    turn_over: Condvar::new(),
};

struct Server {
    slot: Mutex<Slot>,
    /// Signalled when a caller is done with the template (to every waiter:
    /// callers and reapers).
    turn_over: Condvar,
}

struct Slot {
    /// A caller is talking to the template (which it took out of `template`).
    busy: bool,
    template: Option<Template>,
}

/// The parent's handle on a running template.
struct Template {
    /// The template process, a child of this one: killed and reaped through it.
    child: Child,
    /// This process's end of the template's socket.
    socket: OwnedFd,
    /// The process that started the template. A process forked from that
    /// one (without exec) finds the handle in its copy of memory but must
    /// not use it: it would share the socket with the real owner.
    owner: u32,
    /// What the template inherited when it started.
    inherited: Inherited,
    /// Whether it has answered a request: only then is a death "between
    /// requests" rather than while starting.
    answered: bool,
    /// Which of this program's templates it is (see [`NEXT_GENERATION`]).
    generation: u64,
}

/// What [`fork_worker`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The worker runs, a child of this process with this pid, not reaped:
    /// the caller owns it from here.
    Forked(u32),
    /// This system does not let the template fork workers: start the
    /// worker by exec instead (and every later one).
    Exec,
    /// The template died after it took the request and before it answered,
    /// so a worker may hold the channel end it was sent. The channel tells:
    /// such a worker greets with its pid, and without one the channel
    /// closes. Then try again with a new channel (a new template starts).
    Unknown,
}

/// How a request to the template ended.
enum Reply {
    /// A worker, child of this process, with this pid.
    Forked(u32),
    /// The template could not fork: this `errno`.
    Refused(Errno),
    /// The template is gone (and reaped): how it ended, and whether it
    /// could have read the request first.
    Died {
        cause: ExitCause,
        took_request: bool,
    },
    /// An answer that is none of the template's (described): something
    /// wrote into its socket, or it is not the template any more.
    Garbled(String),
    /// No answer before the deadline.
    Silent,
    /// The pool was terminated while waiting.
    Aborted,
    /// This process could not talk to the template.
    Io(std::io::Error),
}

/// Asks the program's template to fork a worker whose end of its channel
/// is `theirs`, starting or replacing the template as needed.
///
/// Waits at most until `deadline` (`timeout` is its length, for messages),
/// and stops early when `abort` is set.
pub(crate) fn fork_worker(
    theirs: BorrowedFd<'_>,
    deadline: Instant,
    timeout: Duration,
    abort: &AtomicBool,
) -> Result<Start, Error> {
    if EXEC_ONLY.load(Ordering::Acquire) {
        return Ok(Start::Exec);
    }
    let mut turn = Turn::take(deadline, timeout, abort)?;
    let inherited = Inherited::now();
    let own_pid = std::process::id();
    keep_if_fit(&mut turn, &inherited, own_pid);
    loop {
        let template = match turn.template.as_mut() {
            Some(template) => template,
            None => turn
                .template
                .insert(Template::start(inherited.clone(), own_pid)?),
        };
        let pid = template.child.id();
        let reply = template.request(theirs, deadline, abort);
        if let Some(outcome) = settle(&mut turn, reply, pid, timeout) {
            return outcome;
        }
    }
}

/// Keeps the template of `turn` only if this process started it and it
/// inherited what this process would give a new one now; retires it
/// otherwise, so the next request starts a fresh one.
fn keep_if_fit(turn: &mut Turn, inherited: &Inherited, own_pid: u32) {
    if let Some(template) = turn.template.take() {
        if template.owner != own_pid {
            // Not ours to kill or reap: drop this process's copy of the socket only.
            drop(template.socket);
        } else if template.inherited == *inherited {
            turn.template = Some(template);
        } else {
            template.retire();
        }
    }
}

/// What a request's `reply` from template `pid` means for the worker start:
/// `Some` outcome to return, or `None` to ask again (a template that died
/// between requests is replaced transparently).
fn settle(
    turn: &mut Turn,
    reply: Reply,
    pid: u32,
    timeout: Duration,
) -> Option<Result<Start, Error>> {
    let answered = turn.template.as_ref().is_some_and(|t| t.answered);
    let mark_answered = |turn: &mut Turn| {
        if let Some(template) = turn.template.as_mut() {
            template.answered = true;
        }
    };
    Some(match reply {
        Reply::Forked(worker) => {
            mark_answered(turn);
            if sys::is_unreaped_child(worker) {
                Ok(Start::Forked(worker))
            } else {
                // CLONE_PARENT did not make it our child: nothing here could
                // watch or reap it. It exits when its channel closes, that
                // is when the caller drops it with this error.
                EXEC_ONLY.store(true, Ordering::Release);
                retire(turn);
                Err(Error::Spawn(format!(
                    "the worker template forked process {worker}, which is not a child of this \
                     process; later workers start by exec"
                )))
            }
        }
        Reply::Refused(Errno::NOTSUP) => {
            EXEC_ONLY.store(true, Ordering::Release);
            retire(turn);
            log::debug!(
                "procpool: the worker template has more than one thread (a constructor \
                 started one), so it cannot fork safely; starting workers by exec from now on"
            );
            Ok(Start::Exec)
        }
        Reply::Refused(errno @ (Errno::PERM | Errno::NOSYS | Errno::INVAL)) => {
            EXEC_ONLY.store(true, Ordering::Release);
            retire(turn);
            log::debug!(
                "procpool: this system refused clone(CLONE_PARENT) ({errno}); starting \
                 workers by exec from now on"
            );
            Ok(Start::Exec)
        }
        Reply::Refused(errno) => {
            mark_answered(turn);
            Err(Error::system(
                "could not start a worker process: the worker template could not fork",
                errno.into(),
            ))
        }
        Reply::Died {
            cause,
            took_request,
        } => {
            turn.template = None;
            if !answered {
                // A new template that dies does what a worker started by
                // exec would: reported as such, not tried again.
                Err(Error::Spawn(format!(
                    "the worker template process {pid} {cause} before connecting back (its \
                     stderr, above, may say why)"
                )))
            } else if took_request {
                // Died since its last answer (killed, say) after it took
                // this request: whether it forked is unknown.
                Ok(Start::Unknown)
            } else {
                // Died since its last answer, before this request: replaced,
                // transparently, by the caller's next turn.
                return None;
            }
        }
        Reply::Garbled(why) => {
            // Nothing it says can be trusted, not even whether it forked
            // a worker: killed and reaped, and the caller puts down any
            // worker that greets on this channel, then tries again with
            // a new template.
            log::debug!("procpool: the worker template process {pid} {why}; replacing it");
            retire(turn);
            Ok(Start::Unknown)
        }
        Reply::Silent => {
            retire(turn);
            Err(Error::Spawn(format!(
                "the worker template process {pid} did not connect back within {timeout:?}; \
                 it was killed, and the next worker start begins a new one"
            )))
        }
        Reply::Aborted => {
            retire(turn);
            Err(Error::Spawn("the pool was terminated".into()))
        }
        Reply::Io(err) => {
            retire(turn);
            Err(Error::system(
                "could not start a worker process: the worker template is unreachable",
                err,
            ))
        }
    })
}

/// The reaper of template number `generation`, whose pidfd is `pidfd`:
/// waits for it to exit, then for no caller to be talking to it, and reaps
/// it if the slot still holds it. A caller that met the death first, or
/// replaced the template, has reaped it already and taken it out of the
/// slot: then there is nothing to do. Reaps by the template's handle only,
/// so no other child's status is taken, and after that the handle, and its
/// pid, are gone.
fn reap_when_dead(pidfd: &OwnedFd, generation: u64) {
    loop {
        match channel::wait(pidfd, PollFlags::IN, None) {
            Ok(true) => break,
            Ok(false) => continue,
            // Cannot wait: the next request finds the death instead.
            Err(_) => return,
        }
    }
    let mut slot = lock(&SERVER.slot);
    while slot.busy {
        slot = SERVER
            .turn_over
            .wait(slot)
            .unwrap_or_else(PoisonError::into_inner);
    }
    let ours = slot
        .template
        .as_ref()
        .is_some_and(|template| template.generation == generation);
    if ours && let Some(dead) = slot.template.take() {
        drop(slot);
        log::debug!(
            "procpool: the worker template {} died; the next worker start begins a new one",
            dead.child.id()
        );
        dead.retire();
    }
}

/// Kills and reaps the turn's template, if any.
fn retire(turn: &mut Turn) {
    if let Some(template) = turn.template.take() {
        template.retire();
    }
}

impl Template {
    /// Starts a template process from the thread that lives as long as the
    /// program (the workers it forks have that thread as parent).
    fn start(inherited: Inherited, owner: u32) -> Result<Template, Error> {
        let io = |what: &str, err: std::io::Error| {
            Error::system(
                format!("could not start procpool's worker template: cannot {what}"),
                err,
            )
        };
        let (socket, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)
        .and_then(|(ours, theirs)| Ok((ours, sys::above_stdio(theirs)?)))
        .map_err(|err| io("create its socket", err))?;
        let mut command = sys::exe_command();
        // As for a worker: its socket becomes its stdin, which the template
        // moves away; every other descriptor of procpool's is close-on-exec.
        command
            .env(WORKER_ENV, WORKER_TEMPLATE)
            .stdin(Stdio::from(theirs));
        let child = sys::spawn_from_long_lived_thread(command)
            .map_err(|err| io("start /proc/self/exe", err))?;
        let template = Template {
            child,
            socket,
            owner,
            inherited,
            answered: false,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        };
        template.start_reaper();
        Ok(template)
    }

    /// Starts a thread that reaps the template as soon as it dies (see
    /// [`reap_when_dead`]), so that a killed template does not stay a
    /// zombie until the next worker start. Without its pidfd or its thread
    /// (out of descriptors, say), the next request finds the death, as it
    /// always does.
    fn start_reaper(&self) {
        // Not reaped yet (this handle reaps it), so the pid is still the template's.
        let pidfd = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or(Errno::SRCH)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()));
        let pidfd = match pidfd {
            Ok(pidfd) => pidfd,
            Err(err) => {
                log::debug!("procpool: cannot watch the worker template ({err})");
                return;
            }
        };
        let generation = self.generation;
        let started = std::thread::Builder::new()
            .name("procpool-template-reaper".into())
            .spawn(move || reap_when_dead(&pidfd, generation));
        if let Err(err) = started {
            log::debug!("procpool: cannot start the worker template's reaper ({err})");
        }
    }

    /// Sends one fork request carrying `theirs` and waits for the answer.
    fn request(&mut self, theirs: BorrowedFd<'_>, deadline: Instant, abort: &AtomicBool) -> Reply {
        match sys::send_with_fd(self.socket.as_fd(), FORK, Some(theirs)) {
            Ok(()) => {}
            // Refused: the template's end is closed, so it never saw the request.
            Err(Errno::PIPE | Errno::CONNRESET) => return self.died(false),
            // One request at a time, and each is read before it is
            // answered: a full queue means a template that is stuck.
            Err(Errno::AGAIN) => return Reply::Silent,
            Err(err) => return Reply::Io(err.into()),
        }
        let mut answer = [0u8; 8];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Reply::Silent;
            }
            let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
            match poll_any(&mut fds, Some(left.min(STEP))) {
                Ok(0) => {
                    if abort.load(Ordering::Acquire) {
                        return Reply::Aborted;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) => return Reply::Io(err),
            }
            match sys::recv_with_fd(self.socket.as_fd(), &mut answer, RecvFlags::DONTWAIT) {
                Ok(received) if received.len == 4 && received.fd.is_none() => {
                    let value = i32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]);
                    return match u32::try_from(value) {
                        Ok(pid) if pid > 0 => Reply::Forked(pid),
                        // errno values are 1..=4095 (the kernel's MAX_ERRNO).
                        _ if (-4095..0).contains(&value) => {
                            Reply::Refused(Errno::from_raw_os_error(-value))
                        }
                        _ => {
                            Reply::Garbled(format!("answered {value}, neither a pid nor an errno"))
                        }
                    };
                }
                // End of stream: only the template's exit closes its end.
                Ok(received) if received.len == 0 && received.fd.is_none() => {
                    return self.died(true);
                }
                Ok(received) => {
                    return Reply::Garbled(format!(
                        "sent a malformed answer ({} bytes{})",
                        received.len,
                        if received.fd.is_some() || received.fds_dropped {
                            ", with descriptors"
                        } else {
                            ""
                        }
                    ));
                }
                Err(Errno::AGAIN) => continue,
                Err(Errno::CONNRESET) => return self.died(true),
                Err(err) => return Reply::Io(err.into()),
            }
        }
    }

    /// The template's socket is closed: it exited or is about to.
    fn died(&mut self, took_request: bool) -> Reply {
        Reply::Died {
            cause: self.reap(),
            took_request,
        }
    }

    /// Kills the template, in case it lingers, and reaps it.
    fn reap(&mut self) -> ExitCause {
        let _ = self.child.kill();
        self.child
            .wait()
            .map(ExitCause::from_status)
            .unwrap_or(ExitCause::Unknown)
    }

    /// Kills and reaps the template.
    fn retire(mut self) {
        self.reap();
    }
}

/// The right to talk to the template, one caller at a time; holds the
/// template while it talks, and puts it back when dropped.
struct Turn {
    template: Option<Template>,
}

impl Turn {
    /// Waits for the turn until `deadline`, unless `abort`.
    fn take(deadline: Instant, timeout: Duration, abort: &AtomicBool) -> Result<Turn, Error> {
        let mut slot = lock(&SERVER.slot);
        while slot.busy {
            if abort.load(Ordering::Acquire) {
                return Err(Error::Spawn("the pool was terminated".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Spawn(format!(
                    "the worker did not connect back within {timeout:?}: the worker template \
                     was busy starting other workers all that time"
                )));
            }
            slot = SERVER
                .turn_over
                .wait_timeout(slot, left.min(STEP))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        slot.busy = true;
        Ok(Turn {
            template: slot.template.take(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut slot = lock(&SERVER.slot);
        slot.template = self.template.take();
        slot.busy = false;
        drop(slot);
        SERVER.turn_over.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the template process does next.
pub(crate) enum Role {
    /// Exit with this code (the parent is gone or done).
    Exit(i32),
    /// This process was just forked as a worker: serve on this channel.
    Worker(OwnedFd),
}

/// The template process's loop: takes its socket from stdin, then forks a
/// worker for each request until the parent closes the socket. Returns in
/// each forked worker too, with its channel.
///
/// Anything on the socket that is not a request (bytes something else
/// wrote into it) ends the template: answering it would put an answer in
/// the parent's queue that no request of its asked for, and every later
/// answer would be read for the wrong request. The parent reaps it and
/// starts a new one on its next request.
pub(crate) fn run(parent: Option<String>) -> Role {
    if !sys::tie_to_parent(sys::Signal::KILL, parent) {
        return Role::Exit(EXIT_BOOTSTRAP_FAILED);
    }
    let socket = match worker_loop::take_channel_from_stdin() {
        Ok(socket) => socket,
        Err(why) => {
            eprintln!("procpool worker template: {why}; exiting");
            return Role::Exit(EXIT_BOOTSTRAP_FAILED);
        }
    };
    // A constructor that ran before ours may have started a thread: a fork
    // would copy whatever lock that thread holds, and not the thread. Then
    // every request is refused, and the parent starts workers by exec.
    let one_thread = std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1);
    let mut request = [0u8; 8];
    loop {
        let received = match sys::recv_with_fd(socket.as_fd(), &mut request, RecvFlags::empty()) {
            Ok(received) => received,
            Err(_) => return Role::Exit(EXIT_BOOTSTRAP_FAILED),
        };
        let answer = match received {
            // The parent closed its end: it is done, or gone.
            sys::Received {
                len: 0, fd: None, ..
            } => return Role::Exit(0),
            sys::Received {
                len,
                fd: Some(channel),
                fds_dropped: false,
            } if request.get(..len) == Some(FORK) => {
                if !one_thread {
                    -libc::ENOTSUP
                } else {
                    // SAFETY: this process has one thread (checked above; it
                    // runs in a constructor before `main` and starts none)
                    // and holds no lock here. The worker only closes this
                    // socket, then serves like an exec'd worker: it uses no
                    // pthread mutex of the kinds that check libc's cached
                    // thread id.
                    match unsafe { sys::fork_sibling() } {
                        Ok(Forked::Child) => {
                            drop(socket);
                            return Role::Worker(channel);
                        }
                        Ok(Forked::Parent(pid)) => i32::try_from(pid).unwrap_or(-libc::EOVERFLOW),
                        Err(err) => -err.raw_os_error().unwrap_or(libc::EIO),
                    }
                }
            }
            // The descriptor did not fit under this process's limit.
            sys::Received {
                len,
                fds_dropped: true,
                ..
            } if request.get(..len) == Some(FORK) => -libc::EMFILE,
            _ => {
                eprintln!(
                    "procpool worker template: something other than procpool wrote into its \
                     socket; exiting (the next worker start begins a new template)"
                );
                return Role::Exit(EXIT_BOOTSTRAP_FAILED);
            }
        };
        if sys::send_with_fd(socket.as_fd(), &answer.to_ne_bytes(), None).is_err() {
            return Role::Exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pool, pool_job};

    #[pool_job]
    fn square(x: u64) -> u64 {
        x * x
    }

    /// One start-up: a pool of 2, a map of 10, close, join; how long
    /// building, mapping and closing took.
    fn startup() -> [Duration; 3] {
        let started = Instant::now();
        let pool = Pool::with_processes(2).unwrap();
        let built = started.elapsed();
        assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
        let mapped = started.elapsed();
        pool.close();
        pool.join().unwrap();
        [built, mapped - built, started.elapsed() - mapped]
    }

    /// Not a test but a measurement, run on request (it switches the whole
    /// test process between the template and exec):
    /// `cargo test --release -p procpool --lib -- --ignored --exact local::template::tests::startup_template_against_exec --nocapture`.
    /// The benchmark's startup workload 40 times each way, interleaved;
    /// quartiles of the whole and of each phase.
    #[test]
    #[ignore = "a measurement, run on request"]
    fn startup_template_against_exec() {
        let quartiles = |runs: &[[Duration; 3]], phase: Option<usize>| {
            let mut times: Vec<Duration> = runs
                .iter()
                .map(|run| phase.map_or_else(|| run.iter().sum(), |phase| run[phase]))
                .collect();
            times.sort();
            let at = |q: usize| times[(times.len() - 1) * q / 4].as_secs_f64() * 1e3;
            format!("{:.2}/{:.2}/{:.2}", at(1), at(2), at(3))
        };
        let (mut forked, mut execd) = (Vec::new(), Vec::new());
        startup();
        for _ in 0..40 {
            EXEC_ONLY.store(false, Ordering::Release);
            forked.push(startup());
            EXEC_ONLY.store(true, Ordering::Release);
            execd.push(startup());
        }
        EXEC_ONLY.store(false, Ordering::Release);
        for (how, runs) in [("template", &forked), ("exec", &execd)] {
            eprintln!(
                "{how}: startup {} ms (build {}, map {}, close+join {}), quartiles of 40",
                quartiles(runs, None),
                quartiles(runs, Some(0)),
                quartiles(runs, Some(1)),
                quartiles(runs, Some(2)),
            );
        }
    }
}
