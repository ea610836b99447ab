//! Authenticated queues: the URL's `key` signs every task and every result
//! with HMAC-SHA256, so that a client of the Redis database without the key
//! can neither run jobs nor hand a caller a value.
//!
//! A tag covers every field that decides what runs (queue, caller, task
//! number, job, item count, `task_timeout`, expiry, encoded items) or what is
//! delivered (queue, caller, task number, job, outcome kind and bytes). Each
//! field is length-prefixed, so no two different messages have the same
//! signed bytes.
//!
//! A tag proves who wrote a message, not that it is new. What makes a task
//! run once is in `serve` (a claim per task in Redis); what is signed here
//! for it is the task's expiry and the caller's presence: its expiry and its
//! watermark (every task numbered below it is settled), so that nobody
//! without the key can revive a caller that is gone or reopen its settled
//! tasks.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted: shorter secrets can be guessed offline from
/// one tagged task.
pub(crate) const MIN_KEY_LEN: usize = 16;

/// Signs and checks messages with the queue's key, or does nothing without one.
#[derive(Clone)]
pub(crate) struct Auth {
    mac: Option<HmacSha256>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Auth")
            .field("keyed", &self.mac.is_some())
            .finish()
    }
}

/// What a task's tag covers.
pub(crate) struct TaskFields<'a> {
    pub(crate) queue: &'a str,
    pub(crate) caller: &'a str,
    pub(crate) seq: u64,
    pub(crate) job: &'a str,
    pub(crate) count: u64,
    /// The caller's `task_timeout` in milliseconds, 0 for none.
    pub(crate) timeout_ms: u64,
    /// When the task stops being valid, in ms since the epoch (Redis' clock).
    pub(crate) expires_ms: u64,
    pub(crate) items: &'a [u8],
}

/// What a caller's presence key says, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Presence {
    /// Until when the caller counts as present, in ms since the epoch
    /// (Redis' clock); `u64::MAX` when the value does not say (an unkeyed
    /// caller of an older release).
    pub(crate) expires_ms: u64,
    /// Every task of the caller numbered below this is settled: its result
    /// came back, or the call that sent it ended.
    pub(crate) low: u64,
}

/// The version tag that starts a presence value.
const PRESENCE_FORMAT: &str = "p1";

/// What a result's tag covers.
pub(crate) struct ResultFields<'a> {
    pub(crate) queue: &'a str,
    pub(crate) caller: &'a str,
    pub(crate) seq: u64,
    pub(crate) job: &'a str,
    /// `ok` or `err`.
    pub(crate) kind: &'a str,
    pub(crate) value: &'a [u8],
}

impl Auth {
    pub(crate) fn new(key: Option<&[u8]>) -> Auth {
        Auth {
            // HMAC takes keys of any length, so this cannot fail.
            mac: key.and_then(|key| HmacSha256::new_from_slice(key).ok()),
        }
    }

    pub(crate) fn keyed(&self) -> bool {
        self.mac.is_some()
    }

    /// A short public name for `label` under this key: 16 hex digits of its
    /// HMAC (of its SHA-256 without a key). Queues with different keys get
    /// different names, and the name tells nothing about the key.
    pub(crate) fn derive_id(&self, label: &str) -> String {
        let digest: Vec<u8> = match &self.mac {
            Some(mac) => {
                let mut mac = mac.clone();
                // v2 since tasks carry a signed expiry: keyed callers and
                // workers of older releases use other streams, so neither
                // takes tasks the other cannot check.
                feed(&mut mac, &[b"procpool-id-v2", label.as_bytes()]);
                mac.finalize().into_bytes().to_vec()
            }
            None => Sha256::digest(label.as_bytes()).to_vec(),
        };
        hex(&digest[..8])
    }

    /// The tag a task carries, or `None` without a key.
    pub(crate) fn task_tag(&self, task: &TaskFields<'_>) -> Option<Vec<u8>> {
        let mut mac = self.mac.clone()?;
        feed_task(&mut mac, task);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Whether a task may run: always without a key; with one, only if `tag`
    /// is the task's tag (compared in constant time).
    pub(crate) fn task_valid(&self, task: &TaskFields<'_>, tag: Option<&[u8]>) -> bool {
        let Some(mac) = &self.mac else { return true };
        let Some(tag) = tag else { return false };
        let mut mac = mac.clone();
        feed_task(&mut mac, task);
        mac.verify_slice(tag).is_ok()
    }

    /// The value of `caller`'s presence key: `p1:<expires>:<low>:<tag>`,
    /// the tag (hex) empty without a key.
    pub(crate) fn presence_value(&self, queue: &str, caller: &str, presence: Presence) -> String {
        let tag = match self.mac.clone() {
            Some(mut mac) => {
                feed_presence(&mut mac, queue, caller, presence);
                hex(&mac.finalize().into_bytes())
            }
            None => String::new(),
        };
        format!(
            "{PRESENCE_FORMAT}:{}:{}:{tag}",
            presence.expires_ms, presence.low
        )
    }

    /// What `caller`'s presence key `value` says, or `None` if it does not
    /// prove the caller present: with a key, only a value tagged with it
    /// counts; without one, any value does (an older release writes `1`).
    /// Whether it expired is for the reader to check, on Redis' clock.
    pub(crate) fn presence(&self, queue: &str, caller: &str, value: &[u8]) -> Option<Presence> {
        let parsed = parse_presence(value);
        let Some(mac) = &self.mac else {
            return Some(parsed.map_or(
                Presence {
                    expires_ms: u64::MAX,
                    low: 0,
                },
                |(presence, _)| presence,
            ));
        };
        let (presence, tag) = parsed?;
        let tag = unhex(tag)?;
        let mut mac = mac.clone();
        feed_presence(&mut mac, queue, caller, presence);
        mac.verify_slice(&tag).is_ok().then_some(presence)
    }

    /// The tag a result carries, or `None` without a key.
    pub(crate) fn result_tag(&self, result: &ResultFields<'_>) -> Option<Vec<u8>> {
        let mut mac = self.mac.clone()?;
        feed_result(&mut mac, result);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Whether a result may be delivered: always without a key; with one,
    /// only if `tag` is the result's tag.
    pub(crate) fn result_valid(&self, result: &ResultFields<'_>, tag: Option<&[u8]>) -> bool {
        let Some(mac) = &self.mac else { return true };
        let Some(tag) = tag else { return false };
        let mut mac = mac.clone();
        feed_result(&mut mac, result);
        mac.verify_slice(tag).is_ok()
    }
}

fn feed_task(mac: &mut HmacSha256, task: &TaskFields<'_>) {
    // v2 added the expiry: a task signed by an older release never passes.
    feed(
        mac,
        &[
            b"procpool-task-v2",
            task.queue.as_bytes(),
            task.caller.as_bytes(),
            &task.seq.to_le_bytes(),
            task.job.as_bytes(),
            &task.count.to_le_bytes(),
            &task.timeout_ms.to_le_bytes(),
            &task.expires_ms.to_le_bytes(),
            task.items,
        ],
    );
}

fn feed_presence(mac: &mut HmacSha256, queue: &str, caller: &str, presence: Presence) {
    feed(
        mac,
        &[
            b"procpool-presence-v1",
            queue.as_bytes(),
            caller.as_bytes(),
            &presence.expires_ms.to_le_bytes(),
            &presence.low.to_le_bytes(),
        ],
    );
}

/// `p1:<expires>:<low>:<tag>` → the presence and the tag's text.
fn parse_presence(value: &[u8]) -> Option<(Presence, &str)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != PRESENCE_FORMAT {
        return None;
    }
    let expires_ms = parts.next()?.parse().ok()?;
    let low = parts.next()?.parse().ok()?;
    let tag = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((Presence { expires_ms, low }, tag))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn feed_result(mac: &mut HmacSha256, result: &ResultFields<'_>) {
    feed(
        mac,
        &[
            b"procpool-result-v1",
            result.queue.as_bytes(),
            result.caller.as_bytes(),
            &result.seq.to_le_bytes(),
            result.job.as_bytes(),
            result.kind.as_bytes(),
            result.value,
        ],
    );
}

/// Each part with its length first: `("ab", "c")` and `("a", "bc")` differ.
fn feed(mac: &mut HmacSha256, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task<'a>(items: &'a [u8], caller: &'a str) -> TaskFields<'a> {
        TaskFields {
            queue: "q",
            caller,
            seq: 7,
            job: "app::square",
            count: 2,
            timeout_ms: 0,
            expires_ms: 1_000,
            items,
        }
    }

    #[test]
    fn a_tag_covers_every_field_and_needs_the_key() {
        let auth = Auth::new(Some(b"0123456789abcdef"));
        let tag = auth.task_tag(&task(b"\x01\x02", "c1")).unwrap();
        assert!(auth.task_valid(&task(b"\x01\x02", "c1"), Some(&tag)));
        assert!(!auth.task_valid(&task(b"\x01\x03", "c1"), Some(&tag)));
        assert!(!auth.task_valid(&task(b"\x01\x02", "c2"), Some(&tag)));
        let mut other_seq = task(b"\x01\x02", "c1");
        other_seq.seq = 8;
        assert!(!auth.task_valid(&other_seq, Some(&tag)));
        let mut other_timeout = task(b"\x01\x02", "c1");
        other_timeout.timeout_ms = 1;
        assert!(!auth.task_valid(&other_timeout, Some(&tag)));
        let mut later = task(b"\x01\x02", "c1");
        later.expires_ms = 2_000;
        assert!(!auth.task_valid(&later, Some(&tag)), "the expiry is signed");
        assert!(!auth.task_valid(&task(b"\x01\x02", "c1"), None));
        let other = Auth::new(Some(b"fedcba9876543210"));
        assert!(!other.task_valid(&task(b"\x01\x02", "c1"), Some(&tag)));
        // Without a key nothing is checked, and nothing is signed.
        assert!(Auth::new(None).task_valid(&task(b"", "c"), None));
        assert!(Auth::new(None).task_tag(&task(b"", "c")).is_none());
    }

    #[test]
    fn results_and_tasks_have_distinct_tags() {
        let auth = Auth::new(Some(b"0123456789abcdef"));
        let result = ResultFields {
            queue: "q",
            caller: "c1",
            seq: 7,
            job: "app::square",
            kind: "ok",
            value: b"\x01",
        };
        let tag = auth.result_tag(&result).unwrap();
        assert!(auth.result_valid(&result, Some(&tag)));
        let as_err = ResultFields {
            kind: "err",
            ..result
        };
        assert!(!auth.result_valid(&as_err, Some(&tag)));
    }

    #[test]
    fn presence_values_prove_the_caller_only_with_the_key() {
        let auth = Auth::new(Some(b"0123456789abcdef"));
        let presence = Presence {
            expires_ms: 5_000,
            low: 3,
        };
        let value = auth.presence_value("q", "c1", presence);
        assert!(value.starts_with("p1:5000:3:"));
        assert_eq!(auth.presence("q", "c1", value.as_bytes()), Some(presence));
        // Another caller, queue or key; a raised watermark or expiry; the
        // `1` an older release writes: none counts.
        assert_eq!(auth.presence("q", "c2", value.as_bytes()), None);
        assert_eq!(auth.presence("r", "c1", value.as_bytes()), None);
        let other = Auth::new(Some(b"fedcba9876543210"));
        assert_eq!(other.presence("q", "c1", value.as_bytes()), None);
        let lowered = value.replacen(":3:", ":0:", 1);
        assert_eq!(auth.presence("q", "c1", lowered.as_bytes()), None);
        let longer = value.replacen(":5000:", ":9000:", 1);
        assert_eq!(auth.presence("q", "c1", longer.as_bytes()), None);
        assert_eq!(auth.presence("q", "c1", b"1"), None);
        assert_eq!(auth.presence("q", "c1", b"p1:1:1:zz"), None);
        // Without a key any value counts, and what it says is read.
        let open = Auth::new(None);
        let unsigned = open.presence_value("q", "c1", presence);
        assert_eq!(unsigned, "p1:5000:3:");
        assert_eq!(
            open.presence("q", "c1", unsigned.as_bytes()),
            Some(presence)
        );
        let old = open.presence("q", "c1", b"1").unwrap();
        assert_eq!((old.expires_ms, old.low), (u64::MAX, 0));
    }

    #[test]
    fn derived_ids_depend_on_the_key() {
        let none = Auth::new(None).derive_id("tasks");
        let a = Auth::new(Some(b"0123456789abcdef")).derive_id("tasks");
        let b = Auth::new(Some(b"fedcba9876543210")).derive_id("tasks");
        assert_eq!(none.len(), 16);
        assert!(none != a && a != b);
        assert_eq!(a, Auth::new(Some(b"0123456789abcdef")).derive_id("tasks"));
    }
}
