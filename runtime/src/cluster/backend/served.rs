//! Whether live workers can run the caller's jobs: the count of live
//! workers (which chunk sizes follow), and the watch over jobs no live
//! worker can run, which says so and, past `unserved` or `no_workers`,
//! fails their calls.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::pending::Pending;
use super::submit::withdraw;
use super::{Shared, fresh_since, lock};
use crate::Error;
use crate::cluster::link::Link;

/// How long a job waits with no live worker able to run it before the
/// caller says so (or `unserved`, if shorter): long enough that a caller
/// built just before its workers says nothing.
const NOTICE_UNSERVED: Duration = Duration::from_secs(10);

/// Since when a job with queued tasks has had no live worker able to run
/// it, and whether that was said.
pub(super) struct Unserved {
    since: Instant,
    /// No worker of the queue alive at all (rather than none with this job).
    none_alive: bool,
    reported: bool,
}

/// A job with tasks in Redis, as the watch sees it.
struct Waiting {
    job: &'static str,
    /// Its id on this queue, and its signature (see `Shared::job_id`).
    id: String,
    signature: &'static str,
    /// How many of its tasks are in Redis.
    tasks: usize,
}

impl Shared {
    /// Watches the jobs this caller has tasks queued for: once no live
    /// worker could run one for a while, says so (through `log`, or on
    /// stderr), and `inspect` shows it (the caller describes its jobs in
    /// the queue's `jobs` hash). If workers are alive but none can run it
    /// for `unserved` seconds, its calls fail with `Error::Registry`: they
    /// would otherwise wait forever. With no worker alive at all, calls wait
    /// for one (autoscaling may be starting them), unless the URL sets
    /// `no_workers`: then they fail with `Error::Cluster` after that long.
    pub(super) fn check_served(
        &self,
        link: &mut Link,
        unserved: &mut HashMap<&'static str, Unserved>,
    ) {
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
        let jobs: Vec<Waiting> = jobs
            .into_iter()
            .filter_map(|(job, tasks)| {
                let (id, signature) = self.job_id(job).ok()?;
                Some(Waiting {
                    job,
                    id,
                    signature,
                    tasks,
                })
            })
            .collect();
        let fresh = fresh_since(&self.settings);
        let Some(counts) = self.count_serving(link, &jobs, fresh) else {
            return;
        };
        let alive = counts.first().copied().unwrap_or(0);
        for (waiting, serving) in jobs.into_iter().zip(counts.into_iter().skip(1)) {
            let job = waiting.job;
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
                self.report_unserved(&waiting, watch.since.elapsed(), alive, limit);
            }
            let Some(limit) = limit else { continue };
            if watch.since.elapsed() < limit {
                continue;
            }
            unserved.remove(job);
            let error = self.unserved_error(link, &waiting, alive, fresh, limit);
            self.fail_job(link, job, &error);
        }
    }

    /// How many workers are alive, then how many of them serve each of
    /// `jobs`; `None` if Redis cannot say now. Also describes each job id
    /// in the queue's `jobs` hash.
    fn count_serving(&self, link: &mut Link, jobs: &[Waiting], fresh: u64) -> Option<Vec<u64>> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZCOUNT")
            .arg(self.keys.workers())
            .arg(fresh)
            .arg("+inf");
        for Waiting { id, .. } in jobs {
            pipe.cmd("ZCOUNT")
                .arg(self.keys.serves(id))
                .arg(fresh)
                .arg("+inf");
        }
        for Waiting {
            job, id, signature, ..
        } in jobs
        {
            // What the job id stands for, for `inspect`, also when no
            // worker ever described it.
            pipe.cmd("HSETNX")
                .arg(self.keys.jobs())
                .arg(id)
                .arg(format!("{job}: {signature}"))
                .ignore();
        }
        link.run(|conn| pipe.query::<Vec<u64>>(conn)).ok()
    }

    /// Says (through `log`, or on stderr) that `waiting`'s tasks have
    /// waited `waited` with no live worker able to run them, and what
    /// happens next: with a `limit`, its calls fail after it.
    fn report_unserved(
        &self,
        waiting: &Waiting,
        waited: Duration,
        alive: u64,
        limit: Option<Duration>,
    ) {
        let Waiting {
            job,
            signature,
            tasks,
            ..
        } = waiting;
        let why = if alive == 0 {
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
        crate::cluster::warn(format_args!(
            "procpool cluster caller {}: {tasks} tasks of job `{job}: {signature}` on \
             queue `{}` have waited {waited:.1?}: {why}; {then}",
            self.caller, self.settings.queue,
        ));
    }

    /// The error for the calls of `waiting`'s job once no live worker
    /// could run it for `limit`: `Cluster` when no worker was alive at
    /// all, `Registry` when live workers lack this version of the job (or
    /// have it under another key).
    fn unserved_error(
        &self,
        link: &mut Link,
        waiting: &Waiting,
        alive: u64,
        fresh: u64,
        limit: Duration,
    ) -> Error {
        let Waiting {
            job, id, signature, ..
        } = waiting;
        if alive == 0 {
            return Error::cluster(format!(
                "no worker of queue `{queue}` ({display}) was alive to run job \
                 `{job}: {signature}` for {limit:?} (the URL's `no_workers` setting). \
                 Start workers for this queue (procpool::cluster::run_workers), or leave \
                 `no_workers` out to let calls wait for them",
                queue = self.settings.queue,
                display = self.settings.display,
            ));
        }
        let (others, same) = self.other_versions(link, job, signature, id, fresh);
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
    }

    /// Fails every pending call of `job` with `error`, and withdraws its
    /// tasks from the queue.
    fn fail_job(&self, link: &mut Link, job: &str, error: &Error) {
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

    /// Counts the live workers, which chunk sizes follow.
    pub(super) fn count_workers(&self, link: &mut Link) {
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
}
