//! The caller's side of a cluster pool: tasks go into the queue's stream,
//! and one collector thread reads this caller's results stream.
//!
//! Each task gets a sequence number. A result whose number is not pending
//! any more (a task that ran twice because its first worker was presumed
//! dead) is dropped, so the caller receives every result exactly once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;

use super::auth::{Presence, ResultFields, TaskFields};
use super::link::{Link, is_connection_error};
use super::protocol::{self, Clock, Entry, GROUP, Keys, Refusal, TASK_LIFETIME};
use super::settings::Settings;
use crate::Error;
use crate::backend::{Backend, Task};

/// How long the collector blocks in one `XREAD`.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How many results the collector takes per read, at most.
const READ_BATCH: usize = 256;
/// How many bytes of results one read may bring, at most (with results of
/// `max_payload` bytes each).
const READ_BYTES: usize = 256 << 20;
/// How often the caller checks that Redis still holds its pending tasks.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// How often the tasks of calls that ended early are taken off the queue.
const WITHDRAW_EVERY: Duration = Duration::from_secs(1);
/// Chunks are cut past this many bytes: Redis holds a task up to three
/// times while it passes (the command being read, the stream entry, the
/// reply to a worker), so large chunks make large memory peaks, while
/// tasks of a few MiB already cost little per byte.
const CHUNK_BYTES: usize = 4 << 20;
/// How often the caller checks that some live worker can run each job it
/// has tasks queued for.
const SERVED_EVERY: Duration = Duration::from_secs(2);
/// How old a published watermark must be before the claims below it are
/// removed: a worker trusts a presence it read for up to a second, so it
/// never relies on a claim removed under a watermark it has not seen yet.
const PRUNE_AFTER: Duration = Duration::from_secs(3);
/// How long a job waits with no live worker able to run it before the
/// caller says so (or `unserved`, if shorter): long enough that a caller
/// built just before its workers says nothing.
const NOTICE_UNSERVED: Duration = Duration::from_secs(10);

/// Since when a job with queued tasks has had no live worker able to run
/// it, and whether that was said.
struct Unserved {
    since: Instant,
    /// No worker of the queue alive at all (rather than none with this job).
    none_alive: bool,
    reported: bool,
}

struct Pending {
    /// The task, its items taken out to be sent.
    task: Task,
    /// Its stream and entry id once sent, to withdraw it on `terminate`.
    entry: Option<(String, String)>,
    /// Its bytes, while they count towards the window (sent, or being sent).
    in_flight: usize,
    /// The task as sent, kept while it is in Redis (so at most `window`
    /// bytes of them, and one larger task), to send it again if a worker
    /// drops it unrun (see [`Shared::resend`]).
    sent: Option<Queued>,
    /// How many times it was sent again.
    resent: u64,
}

/// A task waiting in this process for room in the window.
struct Queued {
    seq: u64,
    job: &'static str,
    count: usize,
    stream: String,
    items: Vec<u8>,
    /// When the task stops being valid (signed with it).
    expires_ms: u64,
    tag: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Tasks not sent yet because the window was full, in order.
    backlog: VecDeque<Queued>,
    /// Bytes of tasks sent to Redis whose results did not come back yet.
    in_flight: usize,
    next_seq: u64,
    /// Every task numbered below this is settled (see [`State::low`]).
    low: u64,
    /// Settled tasks whose claims in Redis were not removed yet.
    settled: Vec<u64>,
    closed: bool,
}

impl State {
    /// Removes a pending task, freeing its room in the window.
    fn take(&mut self, seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&seq)?;
        self.in_flight -= pending.in_flight;
        self.settled.push(seq);
        Some(pending)
    }

    /// Removes every pending task, and forgets the tasks not sent yet.
    fn take_all(&mut self) -> Vec<Pending> {
        self.in_flight = 0;
        self.backlog.clear();
        self.settled.extend(self.pending.keys().copied());
        self.pending.drain().map(|(_, p)| p).collect()
    }

    /// The watermark: the lowest task number still pending, or the next
    /// one. Every task below it is settled (its result came, or its call
    /// ended), so workers drop any task numbered below it unrun. Numbers
    /// only grow, so this moves forward only, in O(1) amortized.
    fn low(&mut self) -> u64 {
        while self.low < self.next_seq && !self.pending.contains_key(&self.low) {
            self.low += 1;
        }
        self.low
    }

    /// Whether a task of `bytes` may go to Redis now: the window always
    /// takes one task, however large, so that no call waits forever.
    fn admits(&self, bytes: usize, window: usize) -> bool {
        self.in_flight == 0 || self.in_flight + bytes <= window
    }
}

/// Where the collector is in this caller's results stream.
struct Reader {
    results: String,
    /// The id of the last result read.
    last: String,
    /// How many results one read takes at most.
    batch: usize,
}

struct Shared {
    settings: Settings,
    keys: Keys,
    caller: String,
    /// Job name → its id on this queue, and its signature (see [`Keys::job_id`]).
    job_ids: Mutex<HashMap<&'static str, (String, &'static str)>>,
    /// The connection tasks are added through.
    submitter: Mutex<Link>,
    state: Mutex<State>,
    /// Signalled whenever a pending task leaves the table.
    settled: Condvar,
    /// Set by `terminate` (and so by drop): the collector ends, and a
    /// submit that has not sent its task yet gives up.
    stop: AtomicBool,
    /// The workers alive at the last count (see `count_workers`).
    live_workers: AtomicUsize,
    /// The builder's `task_timeout`, in milliseconds (0: none); workers
    /// enforce it.
    timeout_ms: u64,
    /// Redis' clock, which signed expiries follow.
    clock: Clock,
    /// The longest time this caller went without refreshing its presence,
    /// if it was longer than `presence` (the process was stopped or
    /// starved): said in the errors of tasks lost meanwhile.
    stalled: Mutex<Option<Duration>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map or flag updates: a panic cannot
    // leave them half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct ClusterBackend {
    shared: Arc<Shared>,
    collector: Mutex<Option<JoinHandle<()>>>,
    presence: Mutex<Option<JoinHandle<()>>>,
    /// The number of workers chunks are sized for, if the builder said;
    /// otherwise the live workers are counted.
    processes: Option<usize>,
}

impl ClusterBackend {
    /// Connects, announces this caller and starts collecting. `processes`
    /// is only a hint for chunk sizes; by default the live workers are counted.
    pub(crate) fn start(
        url: &str,
        processes: Option<usize>,
        task_timeout: Option<Duration>,
    ) -> Result<Self, Error> {
        let settings = Settings::parse(url)?;
        crate::job::registry()?;
        let caller = protocol::random_id()?;
        let keys = Keys::new(&settings);
        let mut link = Link::open(&settings, format!("procpool-caller-{caller}"))?;
        let seen = link
            .query::<u64>(
                redis::cmd("ZCOUNT")
                    .arg(keys.workers())
                    .arg(fresh_since(&settings))
                    .arg("+inf"),
            )
            .map_err(|err| link.error("cannot count the workers", &err))?;
        if let Some(warning) = link.eviction_risk() {
            eprintln!("procpool: {warning}");
        }
        let collector_link = link.sibling(format!("procpool-caller-{caller}-results"));
        let presence_link = link.sibling(format!("procpool-caller-{caller}-presence"));
        let shared = Arc::new(Shared {
            settings,
            keys,
            caller,
            job_ids: Mutex::new(HashMap::new()),
            submitter: Mutex::new(link),
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            stop: AtomicBool::new(false),
            live_workers: AtomicUsize::new(seen as usize),
            // A limit past u64::MAX ms (`Duration::MAX`) is none at all.
            timeout_ms: task_timeout
                .and_then(|t| u64::try_from(t.as_millis()).ok())
                .map_or(0, |ms| ms.max(1)),
            clock: Clock::default(),
            stalled: Mutex::new(None),
        });
        // Workers skip the tasks of a caller whose presence key is gone, so
        // it must exist before the first task.
        {
            let mut link = lock(&shared.submitter);
            let result = link.run(|conn| shared.announce(conn, 0));
            result.map_err(|err| link.error("cannot register the caller", &err))?;
        }
        let collector = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("procpool-cluster-results".into())
                .spawn(move || shared.collect(collector_link))
                .map_err(|e| Error::system("cannot start the cluster pool's results thread", e))?
        };
        // A thread of its own, so that a slow callback on the collector
        // thread never lets the presence key expire.
        let presence = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("procpool-cluster-presence".into())
                .spawn(move || shared.keep_present(presence_link))
        };
        let presence = match presence {
            Ok(handle) => handle,
            Err(e) => {
                shared.stop.store(true, Ordering::Release);
                let _ = collector.join();
                return Err(Error::system(
                    "cannot start the cluster pool's presence thread",
                    e,
                ));
            }
        };
        Ok(ClusterBackend {
            shared,
            collector: Mutex::new(Some(collector)),
            presence: Mutex::new(Some(presence)),
            processes,
        })
    }
}

/// The time (ms since the epoch) from which a worker's last heartbeat
/// shows it alive: three missed beats (a beat every third of the
/// visibility timeout), and a second for a busy Redis.
fn fresh_since(settings: &Settings) -> u64 {
    let window = settings.visibility + Duration::from_secs(1);
    protocol::now_ms().saturating_sub(window.as_millis() as u64)
}

/// Creates the tasks stream `stream` and its group if they do not exist
/// yet, waiting up to half a minute for a Redis that is not ready (loading
/// its data). The group starts at the stream's beginning, so tasks added
/// before any worker came are delivered.
pub(crate) fn ensure_group(link: &mut Link, stream: &str) -> Result<(), redis::RedisError> {
    let created = link.run_retrying(Some(Duration::from_secs(30)), &|| false, |conn| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(conn)
    });
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

impl Shared {
    /// Adds to `pipe` the command that marks this caller present for
    /// another `presence`: the value says until when (Redis' clock) and the
    /// watermark, signed with the key, so that nobody without it can revive
    /// a caller that is gone or lower its watermark. Returns the watermark.
    fn mark_present(&self, pipe: &mut redis::Pipeline) -> u64 {
        let presence = self.settings.presence.as_millis().max(1) as u64;
        let low = lock(&self.state).low();
        let value = self.settings.auth.presence_value(
            &self.settings.queue,
            &self.caller,
            Presence {
                expires_ms: self.clock.now() + presence,
                low,
            },
        );
        pipe.cmd("SET")
            .arg(self.keys.caller(&self.caller))
            .arg(value)
            .arg("PX")
            .arg(presence)
            .ignore();
        low
    }

    /// Marks this caller present, keeps its results, claims and the
    /// streams holding its tasks for one more `ttl`, and removes the claims
    /// of settled tasks numbered below `prune_below` (a watermark published
    /// at least [`PRUNE_AFTER`] ago). Returns the watermark it published.
    fn announce(
        &self,
        conn: &mut dyn redis::ConnectionLike,
        prune_below: u64,
    ) -> redis::RedisResult<u64> {
        self.clock.learn(protocol::redis_time_ms(conn)?);
        let ttl = self.settings.ttl.as_millis().max(1) as u64;
        let (streams, prune, about): (HashSet<String>, Vec<u64>, protocol::CallerAbout) = {
            let state = lock(&self.state);
            let about = protocol::CallerAbout {
                host: crate::sys::host_name(),
                pid: std::process::id(),
                in_redis: state.pending.values().filter(|p| p.entry.is_some()).count() as u64,
                backlog: state.backlog.len() as u64,
            };
            let streams = state
                .pending
                .values()
                .filter_map(|p| Some(p.entry.as_ref()?.0.clone()))
                .collect();
            let prune = state
                .settled
                .iter()
                .copied()
                .filter(|seq| *seq < prune_below)
                .collect();
            (streams, prune, about)
        };
        let now = protocol::now_ms();
        let presence = self.settings.presence.as_millis() as u64;
        let mut pipe = redis::pipe();
        let low = self.mark_present(&mut pipe);
        pipe.cmd("SET")
            .arg(self.keys.about(&self.caller))
            .arg(about.encode())
            .arg("PX")
            .arg(presence.max(1))
            .ignore();
        let claims = self.keys.claims(&self.caller);
        if !prune.is_empty() {
            pipe.cmd("HDEL").arg(&claims).arg(&prune).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&claims)
            .arg(ttl)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.keys.results(&self.caller))
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.callers())
            .arg(now)
            .arg(&self.caller)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.callers())
            .arg("-inf")
            .arg(now.saturating_sub(presence))
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.keys.callers())
            .arg(ttl)
            .ignore();
        for stream in streams {
            pipe.cmd("PEXPIRE").arg(stream).arg(ttl).ignore();
        }
        pipe.query::<()>(conn)?;
        if !prune.is_empty() {
            lock(&self.state).settled.retain(|seq| *seq >= prune_below);
        }
        Ok(low)
    }

    /// The presence thread: announces this caller four times per
    /// `presence` until the backend is dropped. Once it stops (the process
    /// died), workers start none of its tasks after `presence`, and every
    /// key it kept alive expires `ttl` later.
    fn keep_present(&self, mut link: Link) {
        let period = self.settings.presence / 4;
        // The watermarks published, and when: claims are removed only
        // below one that every worker has seen (see PRUNE_AFTER).
        let mut published: VecDeque<(Instant, u64)> = VecDeque::new();
        let mut prune_below = 0;
        let mut last = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let gap = last.elapsed();
            last = Instant::now();
            if gap > self.settings.presence {
                let mut stalled = lock(&self.stalled);
                *stalled = Some(stalled.map_or(gap, |longest| longest.max(gap)));
            }
            while let Some((at, low)) = published.front()
                && at.elapsed() >= PRUNE_AFTER
            {
                prune_below = *low;
                published.pop_front();
            }
            if let Ok(low) = link.run(|conn| self.announce(conn, prune_below)) {
                published.push_back((Instant::now(), low));
            }
            let announced = Instant::now();
            while announced.elapsed() < period && !self.stop.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(20).min(period));
            }
        }
    }

    /// The collector thread: reads results until the backend is dropped.
    fn collect(&self, mut link: Link) {
        let mut reader = Reader {
            results: self.keys.results(&self.caller),
            last: "0-0".to_owned(),
            // At most 256 MiB of results in one reply.
            batch: (READ_BYTES / self.settings.max_payload).clamp(1, READ_BATCH),
        };
        let mut withdrawn = Instant::now();
        let mut reconciled = Instant::now();
        let mut reconcile_owed = false;
        let mut served = Instant::now();
        let mut unserved: HashMap<&'static str, Unserved> = HashMap::new();
        let mut generation = None;
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            if withdrawn.elapsed() >= WITHDRAW_EVERY {
                self.withdraw_cancelled(&mut link);
                withdrawn = Instant::now();
            }
            if served.elapsed() >= SERVED_EVERY {
                self.count_workers(&mut link);
                self.check_served(&mut link, &mut unserved);
                served = Instant::now();
            }
            self.feed(&mut link);
            match self.read(&mut link, &mut reader, Some(READ_BLOCK)) {
                Ok(_) => {
                    down_since = None;
                    // A new connection, whichever command made it: Redis may
                    // have restarted meanwhile, so look for lost tasks. Look
                    // now and then anyway: a flush or an eviction loses
                    // tasks without dropping connections.
                    if generation
                        .replace(link.generation())
                        .is_some_and(|g| g != link.generation())
                    {
                        reconcile_owed = true;
                    }
                    if (reconcile_owed || reconciled.elapsed() >= RECONCILE_EVERY)
                        && self.reconcile(&mut link, &mut reader)
                    {
                        reconcile_owed = false;
                        reconciled = Instant::now();
                    }
                }
                Err(err) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.settings.reconnect {
                        // Results stay in Redis; only the calls waiting now
                        // give up, with the reason.
                        self.fail_all(&link.error(
                            &format!(
                                "lost the connection for {:?} (the URL's reconnect setting) \
                                 while results were pending",
                                self.settings.reconnect
                            ),
                            &err,
                        ));
                        down_since = None;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Reads the next results (waiting up to `block` for one), hands them
    /// to their calls and deletes them; returns how many were read.
    fn read(
        &self,
        link: &mut Link,
        reader: &mut Reader,
        block: Option<Duration>,
    ) -> Result<usize, redis::RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(reader.batch);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&reader.results).arg(&reader.last);
        let entries = protocol::read_reply(link.query::<redis::Value>(&cmd)?);
        if let Some(entry) = entries.last() {
            reader.last.clone_from(&entry.id);
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        for entry in entries {
            if self.authentic(link, &entry) {
                self.receive(link, entry);
            }
        }
        if !ids.is_empty() {
            // Read already; deleting only keeps the stream short.
            let _ = link.query::<()>(redis::cmd("XDEL").arg(&reader.results).arg(&ids));
        }
        Ok(ids.len())
    }

    /// After an outage: fails the pending tasks that Redis no longer holds.
    ///
    /// A worker deletes a task in the same transaction that stores its
    /// result. So a pending task whose entry is gone has its result waiting
    /// in the results stream, unless Redis lost data (a restart without
    /// persistence, a flush, a failover) or a worker dropped it because
    /// this caller's presence had expired. The entries are looked up first,
    /// then every waiting result is read; what is still pending then is lost.
    /// Returns whether the check was completed.
    fn reconcile(&self, link: &mut Link, reader: &mut Reader) -> bool {
        let sent: Vec<(u64, (String, String))> = lock(&self.state)
            .pending
            .iter()
            .filter_map(|(seq, pending)| Some((*seq, pending.entry.clone()?)))
            .collect();
        if sent.is_empty() {
            return true;
        }
        let Some(present) = entries_present(link, &sent) else {
            return false;
        };
        let gone: Vec<u64> = sent
            .iter()
            .zip(present)
            .filter_map(|((seq, _), present)| (!present).then_some(*seq))
            .collect();
        if gone.is_empty() {
            return true;
        }
        // A copy of a task (added again by someone else) may hold its claim
        // and run, while workers dropped this caller's own entry as the
        // copy: the task is not lost while the entry holding its claim is
        // in the stream. Looked up before the results are read, so a copy
        // that finishes meanwhile has its result read below.
        let Some(moved) = self.claimed_elsewhere(link, &sent, &gone) else {
            return false;
        };
        loop {
            match self.read(link, reader, None) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        let lost: Vec<Pending> = self.settle(|state| {
            for (seq, entry) in &moved {
                if let Some(pending) = state.pending.get_mut(seq) {
                    pending.entry = Some(entry.clone());
                }
            }
            gone.iter()
                .filter(|seq| !moved.iter().any(|(moved, _)| moved == *seq))
                .filter_map(|seq| state.take(*seq))
                .collect()
        });
        let stalled = *lock(&self.stalled);
        for Pending { task, .. } in lost {
            let why = match stalled {
                // A worker may have run it and its result expired unread.
                Some(gap) if gap >= self.settings.ttl => format!(
                    "this caller went {gap:?} without refreshing its presence (the process \
                     was stopped or starved), longer than `ttl` ({:?}): the task may have run, \
                     and its result expired unread, or Redis lost data",
                    self.settings.ttl
                ),
                _ => "Redis lost data (a restart without persistence, a flush, an eviction, \
                      a failover). Enable Redis persistence (appendonly yes), keep procpool's \
                      keys from eviction"
                    .to_owned(),
            };
            let error = Error::Cluster(format!(
                "job `{}`: the task for items {}..{} is no longer in Redis ({}) and no result \
                 came back; it may have run: {why}. Run the call again",
                task.job,
                task.first,
                task.first + task.count,
                self.settings.display
            ));
            task.fail(error);
        }
        true
    }

    /// Of the tasks `gone` (their entries among `sent` are no longer in
    /// Redis), those whose claim another entry of the same stream holds and
    /// that entry is still there (running or waiting), with that entry; or
    /// `None` if Redis cannot say now.
    fn claimed_elsewhere(
        &self,
        link: &mut Link,
        sent: &[(u64, (String, String))],
        gone: &[u64],
    ) -> Option<Vec<(u64, (String, String))>> {
        let claims = self.keys.claims(&self.caller);
        let gone: Vec<&(u64, (String, String))> =
            sent.iter().filter(|(seq, _)| gone.contains(seq)).collect();
        let mut pipe = redis::pipe();
        for (seq, _) in &gone {
            pipe.cmd("HGET").arg(&claims).arg(*seq);
        }
        let holders: Vec<Option<String>> = link.run(|conn| pipe.query(conn)).ok()?;
        let mut moved = Vec::new();
        for ((seq, (stream, id)), holder) in gone.into_iter().zip(holders) {
            let Some(holder) = holder.filter(|holder| holder != id) else {
                continue;
            };
            let found: Vec<redis::Value> = link
                .query(redis::cmd("XRANGE").arg(stream).arg(&holder).arg(&holder))
                .ok()?;
            if !found.is_empty() {
                moved.push((*seq, (stream.clone(), holder)));
            }
        }
        Some(moved)
    }

    /// Whether a result carries a valid tag for a task pending under its
    /// number. One that does not is dropped (never delivered, also not as an
    /// error), counted in the queue's `stats` and logged; the call goes on
    /// waiting for its real result.
    fn authentic(&self, link: &mut Link, entry: &Entry) -> bool {
        let auth = &self.settings.auth;
        if !auth.keyed() {
            return true;
        }
        let Some(seq) = entry.number("seq") else {
            return true; // Dropped by `receive` anyway.
        };
        let job = match lock(&self.state).pending.get(&seq) {
            Some(pending) => pending.task.job,
            None => return true, // Not pending: dropped by `receive` anyway.
        };
        let (kind, value) = match (entry.field("ok"), entry.field("err")) {
            (Some(value), _) => ("ok", value),
            (None, Some(value)) => ("err", value),
            (None, None) => ("", &[][..]),
        };
        let fields = ResultFields {
            queue: &self.settings.queue,
            caller: &self.caller,
            seq,
            job,
            kind,
            value,
        };
        if auth.result_valid(&fields, entry.field("tag")) {
            return true;
        }
        super::warn(format_args!(
            "procpool cluster caller {}: dropped result {} for task {seq} (job `{job}`): its tag \
             does not match this queue's key; someone without the key wrote to {}",
            self.caller,
            entry.id,
            self.keys.results(&self.caller)
        ));
        let _ = link.query::<()>(
            redis::cmd("HINCRBY")
                .arg(self.keys.stats())
                .arg("forged_results")
                .arg(1),
        );
        false
    }

    /// Hands one result to its call, unless it was delivered already, or
    /// sends its task again if a worker dropped it unrun while this caller
    /// counted as gone.
    fn receive(&self, link: &mut Link, mut entry: Entry) {
        let Some(seq) = entry.number("seq") else {
            return;
        };
        let abandoned = entry.field("ok").is_none()
            && entry.field("err").is_some_and(|bytes| {
                matches!(
                    postcard::from_bytes::<Refusal>(bytes),
                    Ok(Refusal::Abandoned)
                )
            });
        if abandoned && self.resend(link, seq) {
            return;
        }
        let Some(Pending { task, .. }) = self.settle(|state| state.take(seq)) else {
            return; // A duplicate from a re-run task, or a terminated call.
        };
        let outcome = match (entry.take("ok"), entry.take("err")) {
            (Some(items), _) => Ok(items),
            (None, Some(bytes)) => Err(match postcard::from_bytes::<Refusal>(&bytes) {
                Ok(refusal) => refusal.into_error(task.job, task.first, task.count),
                Err(e) => Error::Cluster(format!("cannot decode a worker's refusal: {e}")),
            }),
            (None, None) => Err(Error::Cluster(format!(
                "result {} has neither `ok` nor `err`",
                entry.id
            ))),
        };
        task.sink
            .deliver(task.info(), outcome.as_deref().map_err(Error::clone));
    }

    /// Applies `f` to the state and wakes `join` if nothing is pending any more.
    fn settle<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = lock(&self.state);
        let value = f(&mut state);
        if state.pending.is_empty() {
            self.settled.notify_all();
        }
        value
    }

    /// Removes the tasks of calls nobody waits for (a dropped `imap`) from
    /// the queue, so workers do not run them.
    fn withdraw_cancelled(&self, link: &mut Link) {
        let entries: Vec<(String, String)> = self.settle(|state| {
            let cancelled: Vec<u64> = state
                .pending
                .iter()
                .filter(|(_, p)| p.task.sink.cancelled())
                .map(|(seq, _)| *seq)
                .collect();
            cancelled
                .iter()
                .filter_map(|seq| state.take(*seq))
                .filter_map(|p| p.entry)
                .collect()
        });
        if !entries.is_empty() {
            let _ = link.run(|conn| withdraw(&mut redis::pipe(), &entries).query::<()>(conn));
        }
    }

    /// This queue's id and the signature of `job`, registered in this program.
    fn job_id(&self, job: &'static str) -> Result<(String, &'static str), Error> {
        let mut ids = lock(&self.job_ids);
        if let Some(found) = ids.get(job) {
            return Ok(found.clone());
        }
        let signature = crate::job::registry()?
            .get(job)
            .map(|entry| entry.signature)
            .ok_or_else(|| Error::Registry(format!("job `{job}` is not registered")))?;
        let found = (self.keys.job_id(job, signature), signature);
        ids.insert(job, found.clone());
        Ok(found)
    }

    /// Watches the jobs this caller has tasks queued for: once no live
    /// worker could run one for a while, says so (through `log`, or on
    /// stderr), and `inspect` shows it (the caller describes its jobs in
    /// the queue's `jobs` hash). If workers are alive but none can run it
    /// for `unserved` seconds, its calls fail with `Error::Registry`: they
    /// would otherwise wait forever. With no worker alive at all, calls wait
    /// for one (autoscaling may be starting them), unless the URL sets
    /// `no_workers`: then they fail with `Error::Cluster` after that long.
    fn check_served(&self, link: &mut Link, unserved: &mut HashMap<&'static str, Unserved>) {
        let mut jobs: HashMap<&'static str, usize> = HashMap::new();
        for pending in lock(&self.state).pending.values() {
            if pending.entry.is_some() {
                *jobs.entry(pending.task.job).or_default() += 1;
            }
        }
        unserved.retain(|job, _| jobs.contains_key(job));
        if jobs.is_empty() {
            return;
        }
        let jobs: Vec<(&'static str, String, &'static str, usize)> = jobs
            .into_iter()
            .filter_map(|(job, tasks)| {
                let (id, signature) = self.job_id(job).ok()?;
                Some((job, id, signature, tasks))
            })
            .collect();
        let fresh = fresh_since(&self.settings);
        let mut pipe = redis::pipe();
        pipe.cmd("ZCOUNT")
            .arg(self.keys.workers())
            .arg(fresh)
            .arg("+inf");
        for (_, id, _, _) in &jobs {
            pipe.cmd("ZCOUNT")
                .arg(self.keys.serves(id))
                .arg(fresh)
                .arg("+inf");
        }
        for (job, id, signature, _) in &jobs {
            // What the job id stands for, for `inspect`, also when no
            // worker ever described it.
            pipe.cmd("HSETNX")
                .arg(self.keys.jobs())
                .arg(id)
                .arg(format!("{job}: {signature}"))
                .ignore();
        }
        let Ok(counts) = link.run(|conn| pipe.query::<Vec<u64>>(conn)) else {
            return;
        };
        let alive = counts.first().copied().unwrap_or(0);
        for ((job, id, signature, tasks), serving) in
            jobs.into_iter().zip(counts.into_iter().skip(1))
        {
            if serving > 0 {
                unserved.remove(job);
                continue;
            }
            let none_alive = alive == 0;
            let watch = unserved.entry(job).or_insert_with(|| Unserved {
                since: Instant::now(),
                none_alive,
                reported: false,
            });
            if watch.none_alive != none_alive {
                // Workers came or went: the other limit applies, from now.
                *watch = Unserved {
                    since: Instant::now(),
                    none_alive,
                    reported: false,
                };
            }
            let limit = if none_alive {
                self.settings.no_workers
            } else {
                Some(self.settings.unserved)
            };
            let notice = limit.map_or(NOTICE_UNSERVED, |limit| limit.min(NOTICE_UNSERVED));
            if !watch.reported && watch.since.elapsed() >= notice {
                watch.reported = true;
                let why = if none_alive {
                    "no worker of the queue is alive".to_owned()
                } else {
                    format!("{alive} workers are alive, but none can run it")
                };
                let then = match limit {
                    Some(limit) => format!("its calls fail after {limit:?} of this"),
                    None => "its calls wait for a worker (set the URL's `no_workers` to fail \
                             them instead)"
                        .to_owned(),
                };
                super::warn(format_args!(
                    "procpool cluster caller {}: {tasks} tasks of job `{job}: {signature}` on \
                     queue `{}` have waited {:.1?}: {why}; {then}",
                    self.caller,
                    self.settings.queue,
                    watch.since.elapsed(),
                ));
            }
            let Some(limit) = limit else { continue };
            if watch.since.elapsed() < limit {
                continue;
            }
            unserved.remove(job);
            let error = if none_alive {
                Error::Cluster(format!(
                    "no worker of queue `{queue}` ({display}) was alive to run job \
                     `{job}: {signature}` for {limit:?} (the URL's `no_workers` setting). \
                     Start workers for this queue (procpool::cluster::run_workers), or leave \
                     `no_workers` out to let calls wait for them",
                    queue = self.settings.queue,
                    display = self.settings.display,
                ))
            } else {
                let (others, same) = self.other_versions(link, job, signature, &id, fresh);
                if same {
                    // The job as this caller has it, under another id: the
                    // workers' key differs (or one side has none), or their
                    // procpool release signs tasks differently.
                    Error::Registry(format!(
                        "no worker of queue `{queue}` ({display}) can run job `{job}: {signature}`: \
                         {alive} workers are alive and some have this very job, but their `key` \
                         differs from this caller's (or one side has none), or they run a procpool \
                         release with another task format, so they never see this caller's tasks, \
                         for {secs:?} (the URL's `unserved` setting). Give callers and workers the \
                         same key (the URL's `key` or PROCPOOL_KEY) and the same procpool release",
                        queue = self.settings.queue,
                        display = self.settings.display,
                        secs = self.settings.unserved,
                    ))
                } else {
                    let others = if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (live workers have {})", others.join(", "))
                    };
                    Error::Registry(format!(
                        "no worker of queue `{queue}` ({display}) can run job `{job}: {signature}`: \
                         {alive} workers are alive, but none has this job with these argument and \
                         result types{others}, for {secs:?} (the URL's `unserved` setting). Deploy \
                         workers built with this version of the job, or give each build its own \
                         queue (?queue=name)",
                        queue = self.settings.queue,
                        display = self.settings.display,
                        secs = self.settings.unserved,
                    ))
                }
            };
            let failed: Vec<Pending> = self.settle(|state| {
                let seqs: Vec<u64> = state
                    .pending
                    .iter()
                    .filter(|(_, p)| p.task.job == job)
                    .map(|(seq, _)| *seq)
                    .collect();
                seqs.iter().filter_map(|seq| state.take(*seq)).collect()
            });
            let entries: Vec<(String, String)> =
                failed.iter().filter_map(|p| p.entry.clone()).collect();
            let _ = link.run(|conn| withdraw(&mut redis::pipe(), &entries).query::<()>(conn));
            for pending in failed {
                pending.task.fail(error.clone());
            }
        }
    }

    /// Counts the live workers, which chunk sizes follow.
    fn count_workers(&self, link: &mut Link) {
        let counted = link.query::<u64>(
            redis::cmd("ZCOUNT")
                .arg(self.keys.workers())
                .arg(fresh_since(&self.settings))
                .arg("+inf"),
        );
        if let Ok(count) = counted {
            self.live_workers.store(count as usize, Ordering::Relaxed);
        }
    }

    /// Adds one task to its stream; returns its entry id.
    fn add(
        &self,
        conn: &mut dyn redis::ConnectionLike,
        task: &Queued,
    ) -> redis::RedisResult<String> {
        // Presence first, in the same round trip: a worker never sees this
        // task without it, even right after Redis restarted.
        let mut pipe = redis::pipe();
        self.mark_present(&mut pipe);
        let add = pipe
            .cmd("XADD")
            .arg(&task.stream)
            .arg("*")
            .arg("caller")
            .arg(&self.caller)
            .arg("seq")
            .arg(task.seq)
            .arg("job")
            .arg(task.job)
            .arg("count")
            .arg(task.count)
            .arg("expires")
            .arg(task.expires_ms)
            .arg("items")
            .arg(&task.items);
        if self.timeout_ms > 0 {
            add.arg("timeout").arg(self.timeout_ms);
        }
        if let Some(tag) = &task.tag {
            add.arg("tag").arg(tag);
        }
        // The stream lives on while a caller has tasks in it; once every
        // such caller is gone, it expires, also with no worker.
        add.cmd("PEXPIRE")
            .arg(&task.stream)
            .arg(self.settings.ttl.as_millis().max(1) as u64)
            .ignore();
        let (id,): (String,) = pipe.query(conn)?;
        Ok(id)
    }

    /// Records that `task` went out as entry `id`, or withdraws it if its
    /// call ended meanwhile (terminated, failed): no task nobody waits for.
    fn sent(&self, link: &mut Link, task: Queued, id: String) {
        let withdraw = {
            let mut state = lock(&self.state);
            match state.pending.get_mut(&task.seq) {
                Some(pending) => {
                    pending.entry = Some((task.stream.clone(), id));
                    pending.sent = Some(task);
                    None
                }
                None => Some((task.stream, id)),
            }
        };
        if let Some((stream, id)) = withdraw {
            let _ = link.query::<()>(redis::cmd("XDEL").arg(stream).arg(&id));
        }
    }

    /// Sends task `seq` again after a worker dropped it unrun because this
    /// caller's presence had expired (it was stalled: SIGSTOP, a long
    /// pause, a laptop lid): the task provably did not run, and with this
    /// caller present again it will. Up to `max_deliveries` times per
    /// task; false when the task is not pending or was sent that often
    /// (its call then fails, saying why). A task that Redis cannot take
    /// now waits in the backlog, sent with the others.
    fn resend(&self, link: &mut Link, seq: u64) -> bool {
        let task = {
            let mut state = lock(&self.state);
            let Some(pending) = state.pending.get_mut(&seq) else {
                return false;
            };
            if pending.resent >= self.settings.max_deliveries {
                return false;
            }
            let Some(task) = pending.sent.take() else {
                return false;
            };
            pending.resent += 1;
            task
        };
        match link.run(|conn| self.add(conn, &task)) {
            Ok(id) => self.sent(link, task, id),
            Err(_) => {
                let mut state = lock(&self.state);
                if let Some(pending) = state.pending.get_mut(&seq) {
                    state.in_flight -= std::mem::take(&mut pending.in_flight);
                    state.backlog.push_front(task);
                }
            }
        }
        true
    }

    /// Sends the tasks waiting for room in the window, as room frees up.
    fn feed(&self, link: &mut Link) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                // Tasks of calls that ended meanwhile are dropped unsent.
                while let Some(front) = state.backlog.front()
                    && !state.pending.contains_key(&front.seq)
                {
                    state.backlog.pop_front();
                }
                let Some(front) = state.backlog.front() else {
                    return;
                };
                let bytes = front.items.len();
                if !state.admits(bytes, self.settings.window) {
                    return;
                }
                let task = state.backlog.pop_front();
                if let Some(task) = &task
                    && let Some(pending) = state.pending.get_mut(&task.seq)
                {
                    pending.in_flight = bytes;
                    state.in_flight += bytes;
                }
                task
            };
            let Some(task) = next else { return };
            match link.run(|conn| self.add(conn, &task)) {
                Ok(id) => self.sent(link, task, id),
                Err(_) => {
                    // Tried again on the next round; a Redis down for
                    // `reconnect` fails every pending call meanwhile.
                    let mut state = lock(&self.state);
                    if let Some(pending) = state.pending.get_mut(&task.seq) {
                        state.in_flight -= std::mem::take(&mut pending.in_flight);
                        state.backlog.push_front(task);
                    }
                    return;
                }
            }
        }
    }

    /// The other versions of `job` that live workers have, for the error
    /// message (`` `job: fn(u32) -> u32` ``), and whether live workers have
    /// this very version (`signature`) under another id: another key, or a
    /// release with another task format.
    fn other_versions(
        &self,
        link: &mut Link,
        job: &str,
        signature: &str,
        id: &str,
        fresh: u64,
    ) -> (Vec<String>, bool) {
        let Ok(known) =
            link.query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(self.keys.jobs()))
        else {
            return (Vec::new(), false);
        };
        let mine = format!("{job}: {signature}");
        let mut same = false;
        let mut versions = Vec::new();
        for (other, text) in known {
            let same_name = text.split_once(": ").is_some_and(|(name, _)| name == job);
            if other == id || !same_name {
                continue;
            }
            let live = link
                .query::<u64>(
                    redis::cmd("ZCOUNT")
                        .arg(self.keys.serves(&other))
                        .arg(fresh)
                        .arg("+inf"),
                )
                .unwrap_or(0);
            if live == 0 {
                continue;
            }
            if text == mine {
                same = true;
            } else {
                versions.push(format!("`{text}`"));
            }
        }
        versions.sort();
        (versions, same)
    }

    fn fail_all(&self, error: &Error) {
        let lost: Vec<Pending> = self.settle(|state| state.take_all());
        for pending in lost {
            pending.task.fail(error.clone());
        }
    }
}

impl Backend for ClusterBackend {
    fn submit(&self, mut task: Task) -> Result<(), Error> {
        if !task.attached.is_empty() {
            // A Queue, Pipe, Event or Shared is descriptors on this host.
            return Err(crate::exchange::refused_by_cluster(task.job));
        }
        let shared = &self.shared;
        let limit = shared.settings.max_payload;
        if task.items.len() > limit {
            return Err(Error::PayloadTooLarge {
                job: task.job.to_owned(),
                what: format!(
                    "the task for items {}..{}",
                    task.first,
                    task.first + task.count
                ),
                bytes: task.items.len() as u64,
                limit: limit as u64,
            });
        }
        let (job, count) = (task.job, task.count);
        let stream = shared.keys.tasks(&shared.job_id(job)?.0);
        let items = std::mem::take(&mut task.items);
        let bytes = items.len();
        // Registered before it is sent: its result may come back at once.
        let (seq, queued) = {
            let mut state = lock(&shared.state);
            if state.closed {
                return Err(Error::Closed);
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let expires_ms = shared.clock.now() + TASK_LIFETIME.as_millis() as u64;
            let tag = shared.settings.auth.task_tag(&TaskFields {
                queue: &shared.settings.queue,
                caller: &shared.caller,
                seq,
                job,
                count: count as u64,
                timeout_ms: shared.timeout_ms,
                expires_ms,
                items: &items,
            });
            let queued = Queued {
                seq,
                job,
                count,
                stream,
                items,
                expires_ms,
                tag,
            };
            // Behind the tasks already waiting, or when the window is full,
            // the task waits here: the collector sends it as results free
            // room, so Redis holds at most a window of this caller's input.
            let now = state.backlog.is_empty() && state.admits(bytes, shared.settings.window);
            let in_flight = if now { bytes } else { 0 };
            state.in_flight += in_flight;
            state.pending.insert(
                seq,
                Pending {
                    task,
                    entry: None,
                    in_flight,
                    sent: None,
                    resent: 0,
                },
            );
            if !now {
                state.backlog.push_back(queued);
                return Ok(());
            }
            (seq, queued)
        };
        let mut link = lock(&shared.submitter);
        if shared.stop.load(Ordering::Acquire) {
            // Terminated since the task was registered: it already failed.
            drop(link);
            shared.settle(|state| state.take(seq));
            return Err(Error::Closed);
        }
        let added = link.run_retrying(
            Some(shared.settings.reconnect),
            &|| shared.stop.load(Ordering::Acquire),
            |conn| shared.add(conn, &queued),
        );
        match added {
            Ok(id) => {
                shared.sent(&mut link, queued, id);
                Ok(())
            }
            Err(err) => {
                let error = link.error("cannot add a task to the queue", &err);
                drop(link);
                shared.settle(|state| state.take(seq));
                Err(error)
            }
        }
    }

    fn close(&self) {
        lock(&self.shared.state).closed = true;
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    fn join(&self) -> Result<(), Error> {
        self.close();
        let mut state = lock(&self.shared.state);
        while !state.pending.is_empty() {
            state = self
                .shared
                .settled
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    fn terminate(&self) {
        let shared = &self.shared;
        // A submit retrying against an unreachable Redis gives up, and
        // releases the connection this needs.
        shared.stop.store(true, Ordering::Release);
        let lost: Vec<Pending> = shared.settle(|state| {
            state.closed = true;
            state.take_all()
        });
        // Withdraw what no worker took yet, and say this caller is gone so
        // that workers skip what they took. Best effort: if Redis cannot be
        // reached, those tasks run and their results expire unread.
        let entries: Vec<(String, String)> = lost.iter().filter_map(|p| p.entry.clone()).collect();
        let mut link = lock(&shared.submitter);
        let _ = link.run(|conn| {
            withdraw(&mut redis::pipe(), &entries)
                .cmd("ZREM")
                .arg(shared.keys.callers())
                .arg(&shared.caller)
                .ignore()
                .cmd("DEL")
                .arg(shared.keys.caller(&shared.caller))
                .arg(shared.keys.about(&shared.caller))
                .arg(shared.keys.results(&shared.caller))
                .ignore()
                .query::<()>(conn)
        });
        drop(link);
        for pending in lost {
            let job = pending.task.job.to_owned();
            pending.task.fail(Error::Terminated { job });
        }
    }

    fn processes(&self) -> usize {
        self.processes
            .unwrap_or_else(|| self.shared.live_workers.load(Ordering::Relaxed))
            .max(1)
    }

    fn max_chunk_bytes(&self) -> Option<usize> {
        Some(self.shared.settings.max_payload.min(CHUNK_BYTES))
    }
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        if !self.shared.stop.load(Ordering::Acquire) {
            self.terminate();
        }
        for thread in [lock(&self.collector).take(), lock(&self.presence).take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// Whether each of the task entries `sent` is still in its stream, or
/// `None` if Redis cannot say now. A script answers 0 or 1 per entry, so
/// the tasks' items do not travel back; where scripts are not allowed (an
/// ACL without `EVAL`), the entries are read.
fn entries_present(link: &mut Link, sent: &[(u64, (String, String))]) -> Option<Vec<bool>> {
    const SCRIPT: &str = r"
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = #redis.call('XRANGE', key, ARGV[i], ARGV[i])
end
return found
";
    let mut script = redis::cmd("EVAL");
    script.arg(SCRIPT).arg(sent.len());
    for (_, (stream, _)) in sent {
        script.arg(stream);
    }
    for (_, (_, id)) in sent {
        script.arg(id);
    }
    match link.query::<Vec<i64>>(&script) {
        Ok(found) => return Some(found.into_iter().map(|n| n > 0).collect()),
        Err(err) if is_connection_error(&err) => return None,
        Err(_) => {}
    }
    let mut pipe = redis::pipe();
    for (_, (stream, id)) in sent {
        pipe.cmd("XRANGE").arg(stream).arg(id).arg(id);
    }
    let found = link
        .run(|conn| pipe.query::<Vec<StreamRangeReply>>(conn))
        .ok()?;
    Some(found.iter().map(|entry| !entry.ids.is_empty()).collect())
}

/// Adds to `pipe` what deletes the task entries `entries` (stream, id).
fn withdraw<'p>(
    pipe: &'p mut redis::Pipeline,
    entries: &[(String, String)],
) -> &'p mut redis::Pipeline {
    let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
    for (stream, id) in entries {
        by_stream.entry(stream).or_default().push(id);
    }
    for (stream, ids) in by_stream {
        pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
    }
    pipe
}
