//! The caller's presence: the key that tells workers this caller is alive
//! (signed, with its watermark), its `about:` key for `inspect`, and the
//! thread that refreshes both and keeps the caller's keys from expiring.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{Shared, lock};
use crate::cluster::auth::Presence;
use crate::cluster::link::Link;
use crate::cluster::protocol;

/// How old a published watermark must be before the claims below it are
/// removed: a worker trusts a presence it read for up to a second, so it
/// never relies on a claim removed under a watermark it has not seen yet.
const PRUNE_AFTER: Duration = Duration::from_secs(3);

impl Shared {
    /// Adds to `pipe` the command that marks this caller present for
    /// another `presence`: the value says until when (Redis' clock) and the
    /// watermark, signed with the key, so that nobody without it can revive
    /// a caller that is gone or lower its watermark. Returns the watermark.
    pub(super) fn mark_present(&self, pipe: &mut redis::Pipeline) -> u64 {
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
    pub(super) fn announce(
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
    pub(super) fn keep_present(&self, mut link: Link) {
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
                *lock(&self.announced_at) = Instant::now();
            }
            let announced = Instant::now();
            while announced.elapsed() < period && !self.stop.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(20).min(period));
            }
        }
    }
}
