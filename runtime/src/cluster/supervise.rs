//! Several cluster workers on one host: child processes of the current
//! executable, each serving the queue, restarted when they die.

use std::os::unix::process::CommandExt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::link::Link;
use super::protocol::Keys;
use super::settings::Settings;
use crate::Error;
use crate::error::ExitCause;

/// The environment variable that makes a start of the executable serve a cluster queue.
pub(crate) const CLUSTER_ENV: &str = "__PROCPOOL_CLUSTER_WORKER";
/// The end of the consumer name a supervised worker takes, so the
/// supervisor knows the whole name and can wait for it.
pub(crate) const SUFFIX_ENV: &str = "__PROCPOOL_CLUSTER_SUFFIX";
/// A child that dies sooner than this after its start is restarted only after this long.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long a stopping worker may take to finish its task before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// How long new workers may take to connect before `Workers::start` fails.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Worker processes serving a cluster queue from this host.
///
/// Each is the current executable started again; it never runs your
/// `main`, as with a local [`Pool`](crate::Pool). A worker that dies (a
/// crash, `kill -9`) is replaced within a second; the task it held goes to
/// another worker after the visibility timeout. Dropping the handle, or
/// [`stop`](Workers::stop), asks every worker to finish its current task
/// and exit.
///
/// ```no_run
/// # fn main() -> Result<(), procpool::Error> {
/// let workers = procpool::cluster::Workers::start("redis://127.0.0.1:6379/0", 4)?;
/// println!("serving with pids {:?}", workers.pids());
/// workers.stop()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "dropping Workers stops its worker processes at once; keep it while they should serve"]
pub struct Workers {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    url: String,
    children: Mutex<Vec<Option<Child>>>,
    stop: AtomicBool,
    restarts: AtomicUsize,
}

impl Workers {
    /// Starts `processes` workers serving the queue named by `url` (see
    /// [`PoolBuilder::cluster`](crate::PoolBuilder::cluster) for the URL).
    /// Returns once every worker is connected and serving. Fails at once if
    /// the URL is invalid or Redis cannot be reached from this host, and
    /// with [`Error::Spawn`] if a worker exits or does not connect within
    /// 10 seconds (the others are stopped).
    pub fn start(url: &str, processes: usize) -> Result<Workers, Error> {
        if processes == 0 {
            return Err(Error::Config(
                "cluster workers: processes must be at least 1".into(),
            ));
        }
        if !crate::sys::bootstrap_ran() {
            return Err(Error::Spawn(crate::sys::BOOTSTRAP_MISSING.into()));
        }
        crate::job::registry()?;
        // Reported here, once, rather than by every child in a restart loop.
        let settings = Settings::parse(url)?;
        let link = Link::open(&settings, "procpool-workers-supervisor".into())?;
        let keys = Keys::new(&settings);
        let visibility = settings.visibility;
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            children: Mutex::new((0..processes).map(|_| None).collect()),
            stop: AtomicBool::new(false),
            restarts: AtomicUsize::new(0),
        });
        let (started_tx, started) = mpsc::channel();
        // Children die with the thread that forked them (PR_SET_PDEATHSIG),
        // so one thread forks, watches and reaps them all, for as long as
        // the handle lives.
        let supervisor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("procpool-cluster-supervisor".into())
                .spawn(move || shared.supervise(started_tx, link, (&keys, visibility)))
                .map_err(|e| {
                    Error::system("cannot start the cluster workers' supervisor thread", e)
                })?
        };
        let workers = Workers {
            shared,
            supervisor: Some(supervisor),
        };
        match started.recv() {
            Ok(Ok(())) => Ok(workers),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::Spawn("the supervisor thread ended".into())),
        }
    }

    /// The process ids of the running workers.
    pub fn pids(&self) -> Vec<u32> {
        self.shared.lock().iter().flatten().map(Child::id).collect()
    }

    /// How many workers were started again after they died.
    pub fn restarts(&self) -> usize {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Asks every worker to finish its current task and exit (SIGTERM),
    /// waits for them, and kills those still running after 30 seconds.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Child>>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a worker process; returns it with the consumer name it will use.
    fn spawn(&self) -> Result<(Child, String), Error> {
        let suffix = super::protocol::random_id()?[..8].to_owned();
        let mut command = crate::sys::exe_command();
        command
            .env(CLUSTER_ENV, &self.url)
            .env(SUFFIX_ENV, &suffix)
            // Ctrl-C in a terminal signals the whole foreground group; the
            // supervisor alone should get it and stop each worker once.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| Error::system("cannot start /proc/self/exe as a cluster worker", e))?;
        let name = format!("{}{suffix}", super::serve::name_prefix(child.id()));
        Ok((child, name))
    }

    fn supervise(
        &self,
        started: mpsc::Sender<Result<(), Error>>,
        mut link: Link,
        (keys, visibility): (&Keys, Duration),
    ) {
        let slots = self.lock().len();
        let mut born = vec![Instant::now(); slots];
        let mut ready = Ok(());
        let mut names = vec![String::new(); slots];
        for (slot, name) in names.iter_mut().enumerate() {
            match self.spawn() {
                Ok((child, named)) => {
                    self.lock()[slot] = Some(child);
                    *name = named;
                }
                Err(err) => {
                    ready = Err(err);
                    break;
                }
            }
        }
        if ready.is_ok() {
            ready = self.wait_ready(&mut link, keys, names.clone());
        }
        if ready.is_err() {
            self.stop.store(true, Ordering::Release);
        }
        let _ = started.send(ready);
        drop(started);
        while !self.stop.load(Ordering::Acquire) {
            for (slot, born) in born.iter_mut().enumerate() {
                let mut children = self.lock();
                let exited = match children[slot].as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(ExitCause::from_status(status)),
                    Some(Ok(None)) => None,
                    // Unreadable status, or an empty slot left by a failed start.
                    Some(Err(_)) | None => Some(ExitCause::Unknown),
                };
                let Some(cause) = exited else { continue };
                if born.elapsed() < RESTART_DELAY {
                    continue; // Dying at once: do not restart in a tight loop.
                }
                if let Some(old) = children[slot].take() {
                    eprintln!(
                        "procpool: cluster worker {} {cause}; starting another",
                        old.id()
                    );
                    mark_dead(&mut link, keys, visibility, &names[slot]);
                }
                match self.spawn() {
                    Ok((child, name)) => {
                        children[slot] = Some(child);
                        names[slot] = name;
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => eprintln!("procpool: {}", super::with_causes(&err)),
                }
                *born = Instant::now();
            }
            thread::sleep(POLL);
        }
        self.stop_children();
    }

    /// Waits until every new child has announced itself, under the consumer
    /// name it was given, in the queue's worker set, which it does once
    /// connected and ready to take tasks.
    fn wait_ready(
        &self,
        link: &mut Link,
        keys: &Keys,
        mut waiting: Vec<String>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for child in self.lock().iter_mut().flatten() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Spawn(format!(
                        "cluster worker {} {} before it started serving (its stderr says why)",
                        child.id(),
                        ExitCause::from_status(status)
                    )));
                }
            }
            let members: Vec<String> = link
                .query(redis::cmd("ZRANGE").arg(keys.workers()).arg(0).arg(-1))
                .unwrap_or_default();
            waiting.retain(|name| !members.contains(name));
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Spawn(format!(
                    "{} cluster workers did not connect within {READY_TIMEOUT:?}",
                    waiting.len()
                )));
            }
            thread::sleep(POLL);
        }
    }

    fn stop_children(&self) {
        let mut children: Vec<Child> = self.lock().drain(..).flatten().collect();
        for child in &children {
            // Not reaped yet (`Child` reaps on `wait`): the pid is its own.
            crate::sys::signal_unreaped_child(child.id(), crate::sys::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !children.is_empty() {
            children.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
            if Instant::now() >= deadline {
                for child in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                break;
            }
            thread::sleep(POLL);
        }
    }
}

/// Makes the worker `name`, which exited, count as dead at once (its last
/// heartbeat moved past the limit, if it is still listed: `XX`), so that
/// `inspect` stops listing it alive and the scanner looks at its tasks
/// without waiting for its heartbeat to go stale. Best effort: without
/// Redis, its heartbeat goes stale by itself within the visibility timeout.
fn mark_dead(link: &mut Link, keys: &Keys, visibility: Duration, name: &str) {
    let dead_since =
        super::protocol::now_ms().saturating_sub(2 * visibility.as_millis() as u64 + 1000);
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.workers())
        .arg("XX")
        .arg(dead_since)
        .arg(name)
        .ignore()
        .cmd("HDEL")
        .arg(keys.running())
        .arg(name)
        .ignore();
    let _ = link.run(|conn| pipe.query::<()>(conn));
}
