//! Tasks Redis lost: after a reconnect, and every few seconds, the caller
//! checks that the entries of its pending tasks are still in their
//! streams, and fails the calls of those that are gone without a result
//! (a restart without persistence, a flush, an eviction, a long pause).

use redis::streams::StreamRangeReply;

use super::pending::Pending;
use super::results::Reader;
use super::{Shared, lock};
use crate::Error;
use crate::cluster::link::{Link, is_connection_error};

impl Shared {
    /// After an outage: fails the pending tasks that Redis no longer holds.
    ///
    /// A worker deletes a task in the same transaction that stores its
    /// result. So a pending task whose entry is gone has its result waiting
    /// in the results stream, unless Redis lost data (a restart without
    /// persistence, a flush, a failover) or a worker dropped it because
    /// this caller's presence had expired. The entries are looked up first,
    /// then every waiting result is read; what is still pending then is lost.
    /// Returns whether the check was completed.
    pub(super) fn reconcile(&self, link: &mut Link, reader: &mut Reader) -> bool {
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
        // The longest pause seen, or the one still going on: after a
        // SIGCONT this thread may run before the presence thread has
        // noticed the gap and refreshed.
        let since_announced = lock(&self.announced_at).elapsed();
        let stalled = Some(lock(&self.stalled).map_or(since_announced, |g| g.max(since_announced)));
        for Pending { task, .. } in lost {
            let why = match stalled {
                // A worker may have run it and its result expired unread.
                Some(gap) if gap >= self.settings.ttl => format!(
                    "this caller went {gap:?} without refreshing its presence (the process \
                     was stopped or starved, or could not reach Redis), longer than `ttl` \
                     ({:?}): the task may have run, and its result expired unread, or Redis \
                     lost data",
                    self.settings.ttl
                ),
                _ => "Redis lost data (a restart without persistence, a flush, an eviction, \
                      a failover). Enable Redis persistence (appendonly yes), keep procpool's \
                      keys from eviction"
                    .to_owned(),
            };
            let error = Error::cluster(format!(
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
