//! The cluster URL: Redis' own URL plus procpool's query parameters.
//!
//! Callers and workers take the same string, so one URL configures both
//! sides of a queue and they cannot disagree on its name.

use std::path::PathBuf;
use std::time::Duration;

use super::auth::{Auth, MIN_KEY_LEN};
use crate::Error;

/// The environment variable that gives the queue's key, so that it stays
/// out of command lines (`ps` shows those to every user of the host).
pub(crate) const KEY_ENV: &str = "PROCPOOL_KEY";

/// Everything a cluster caller or worker reads from its URL.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The URL handed to the redis crate: procpool's parameters removed.
    pub(crate) redis_url: String,
    /// The URL with the password masked, for messages.
    pub(crate) display: String,
    pub(crate) queue: String,
    /// How long a worker's heartbeat (every third of it) may be silent,
    /// plus a second, before its tasks go to another worker; also how long
    /// such a task must have been idle. Read by workers.
    pub(crate) visibility: Duration,
    /// How long a caller's results and the task streams it uses outlive its
    /// last refresh. Longer than `reconnect`: a caller cut off from Redis
    /// for less than that still finds its results.
    pub(crate) ttl: Duration,
    /// How long a caller's presence key outlives its last refresh (four
    /// refreshes per period): workers start none of a caller's tasks once
    /// it is gone. 10 s by default, at most `ttl`.
    pub(crate) presence: Duration,
    /// How many bytes of a caller's tasks may wait in Redis at once; the
    /// rest waits in the caller. Read by callers.
    pub(crate) window: usize,
    /// The largest task or result, in bytes.
    pub(crate) max_payload: usize,
    /// How many times a task may be handed to a worker. Read by workers.
    pub(crate) max_deliveries: u64,
    /// How long a caller keeps trying to reach Redis before its pending
    /// calls fail.
    pub(crate) reconnect: Duration,
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    /// Whether the server's certificate goes unchecked (`tls_insecure=true`):
    /// only when the URL says so, and with a warning.
    pub(crate) tls_insecure: bool,
    /// How long a call waits while workers are alive but none can run its
    /// job, before it fails with `Error::Registry`. Read by callers.
    pub(crate) unserved: Duration,
    /// How long a call waits while no worker of the queue is alive at all
    /// before it fails with `Error::Cluster`; by default it waits (workers
    /// may be starting). Read by callers.
    pub(crate) no_workers: Option<Duration>,
    /// Whether the URL names a seed node of a Redis Cluster.
    pub(crate) cluster: bool,
    /// Signs and checks tasks and results with the queue's key, if any.
    pub(crate) auth: Auth,
}

/// The shortest visibility timeout: a live worker renews its claim every
/// third of it, which must stay well above a round trip to Redis.
const MIN_VISIBILITY: Duration = Duration::from_millis(300);

/// The shortest presence period: a caller refreshes its presence every
/// quarter of it, which must stay well above a round trip to Redis.
const MIN_PRESENCE: Duration = Duration::from_millis(500);

/// procpool's query parameters, with what each means, for error messages.
const PARAMETERS: &str = "queue, visibility, ttl, presence, max_payload, window, max_deliveries, reconnect, \
                          tls_ca, tls_cert, tls_key, tls_insecure, key, unserved, no_workers, cluster";

impl Settings {
    /// Reads `url`, with the key from `PROCPOOL_KEY` if the URL has none.
    pub(crate) fn parse(url: &str) -> Result<Settings, Error> {
        let from_env = std::env::var_os(KEY_ENV)
            .map(|value| {
                value.into_string().map_err(|_| {
                    Error::Config(format!("{KEY_ENV} is not valid UTF-8; use a text key"))
                })
            })
            .transpose()?;
        Settings::parse_with_key(url, from_env)
    }

    /// Reads `url`; `env_key` is the key from the environment, if set.
    pub(crate) fn parse_with_key(url: &str, env_key: Option<String>) -> Result<Settings, Error> {
        let invalid = |why: String| Error::Config(format!("invalid cluster URL: {why}"));
        let mut parsed = url::Url::parse(url).map_err(|e| {
            invalid(format!(
                "{e}; expected redis://[:password@]host[:port][/db][?queue=name] or rediss://..."
            ))
        })?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(invalid(format!(
                "the scheme is `{}`; use redis:// or, for TLS, rediss://",
                parsed.scheme()
            )));
        }
        let mut settings = Settings {
            redis_url: String::new(),
            display: String::new(),
            queue: "default".to_owned(),
            visibility: Duration::from_secs(30),
            ttl: Duration::from_secs(120),
            presence: Duration::from_secs(10),
            max_payload: 64 << 20,
            window: 32 << 20,
            max_deliveries: 3,
            reconnect: Duration::from_secs(60),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_insecure: false,
            unserved: Duration::from_secs(30),
            no_workers: None,
            cluster: false,
            auth: Auth::new(None),
        };
        let mut url_key = None;
        let mut presence = None;
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (key, value) in pairs {
            let seconds = || parse_seconds(&key, &value).map_err(invalid);
            match key.as_str() {
                "queue" => settings.queue = queue_name(&value).map_err(invalid)?,
                "visibility" => settings.visibility = seconds()?,
                "ttl" => settings.ttl = seconds()?,
                "presence" => presence = Some(seconds()?),
                "reconnect" => settings.reconnect = seconds()?,
                "unserved" => settings.unserved = seconds()?,
                "no_workers" => settings.no_workers = Some(seconds()?),
                "max_payload" => {
                    settings.max_payload = parse_number(&key, &value).map_err(invalid)?;
                }
                "window" => settings.window = parse_number(&key, &value).map_err(invalid)?,
                "max_deliveries" => {
                    settings.max_deliveries = parse_number(&key, &value).map_err(invalid)?;
                }
                "tls_ca" => settings.tls_ca = Some(PathBuf::from(value)),
                "tls_cert" => settings.tls_cert = Some(PathBuf::from(value)),
                "tls_key" => settings.tls_key = Some(PathBuf::from(value)),
                "key" => url_key = Some(value),
                "cluster" => settings.cluster = parse_bool(&key, &value).map_err(invalid)?,
                "tls_insecure" => {
                    settings.tls_insecure = parse_bool(&key, &value).map_err(invalid)?;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}`; procpool understands {PARAMETERS}"
                    )));
                }
            }
        }
        if settings.ttl <= settings.reconnect {
            return Err(invalid(format!(
                "ttl ({:?}) must be longer than reconnect ({:?}): a caller that reconnects \
                 within `reconnect` still needs its keys",
                settings.ttl, settings.reconnect
            )));
        }
        settings.presence = presence.unwrap_or(settings.presence.min(settings.ttl));
        if settings.presence < MIN_PRESENCE || settings.presence > settings.ttl {
            return Err(invalid(format!(
                "presence ({:?}) must be at least {MIN_PRESENCE:?} and at most ttl ({:?})",
                settings.presence, settings.ttl
            )));
        }
        if settings.visibility < MIN_VISIBILITY {
            return Err(invalid(format!(
                "visibility must be at least {MIN_VISIBILITY:?}: below that, tasks are taken \
                 from live workers"
            )));
        }
        if settings.max_deliveries == 0 || settings.max_payload == 0 || settings.window == 0 {
            return Err(invalid(
                "max_deliveries, max_payload and window must be at least 1".into(),
            ));
        }
        if settings.tls_cert.is_some() != settings.tls_key.is_some() {
            return Err(invalid(
                "tls_cert and tls_key go together (a client certificate and its key)".into(),
            ));
        }
        let uses_files = settings.tls_ca.is_some() || settings.tls_cert.is_some();
        if (uses_files || settings.tls_insecure) && parsed.scheme() != "rediss" {
            return Err(invalid(
                "tls_ca, tls_cert, tls_key and tls_insecure need a rediss:// URL".into(),
            ));
        }
        // The redis crate reads `#insecure` as "check no certificate": a
        // fragment is easy to miss in a URL, so only the parameter says it.
        if let Some(fragment) = parsed.fragment() {
            return Err(invalid(format!(
                "the URL ends in `#{fragment}`; procpool takes no fragment. To turn the \
                 server's certificate checks off (anyone on the network path can then read \
                 and change the traffic), say tls_insecure=true"
            )));
        }
        let key = match (url_key, env_key) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!(
                    "the URL's key and {KEY_ENV} differ; give the key once (or the same in both)"
                )));
            }
            (a, b) => a.or(b),
        };
        if let Some(key) = &key
            && key.len() < MIN_KEY_LEN
        {
            return Err(invalid(format!(
                "the key is {} bytes long; use at least {MIN_KEY_LEN} random characters \
                 (e.g. `openssl rand -hex 32`)",
                key.len()
            )));
        }
        settings.auth = Auth::new(key.as_deref().map(str::as_bytes));
        parsed.set_query(None);
        if settings.tls_insecure {
            parsed.set_fragment(Some("insecure"));
        }
        settings.redis_url = parsed.to_string();
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        settings.display = parsed.to_string();
        Ok(settings)
    }
}

fn queue_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "queue `{value}`: use 1 to 64 letters, digits, `_`, `-` or `.`"
        ))
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{key}={value}: use true or false")),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key}={value} is not a whole number"))
}

/// Seconds, fractions allowed (`visibility=0.5`), more than zero.
fn parse_seconds(key: &str, value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("{key}={value} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds < 1e9) {
        return Err(format!("{key}={value}: give a number of seconds above 0"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procpool_parameters_are_read_and_removed() {
        let s = Settings::parse(
            "redis://:secret@example.org:6380/2?queue=images&visibility=0.5&ttl=60&max_payload=1000&max_deliveries=5&reconnect=3",
        )
        .unwrap();
        assert_eq!(s.redis_url, "redis://:secret@example.org:6380/2");
        assert_eq!(s.display, "redis://:***@example.org:6380/2");
        assert_eq!(s.queue, "images");
        assert_eq!(s.visibility, Duration::from_millis(500));
        assert_eq!(s.ttl, Duration::from_secs(60));
        assert_eq!(s.max_payload, 1000);
        assert_eq!(s.max_deliveries, 5);
        assert_eq!(s.reconnect, Duration::from_secs(3));
        let s = Settings::parse(
            "redis://h?cluster=true&window=1000&unserved=5&presence=2&no_workers=7.5",
        )
        .unwrap();
        assert_eq!(s.no_workers, Some(Duration::from_millis(7500)));
        assert!(s.cluster);
        assert_eq!(s.window, 1000);
        assert_eq!(s.unserved, Duration::from_secs(5));
        assert_eq!(s.presence, Duration::from_secs(2));
        // Without `presence`, a `ttl` under 10 s sets it.
        let s = Settings::parse("redis://h?ttl=5&reconnect=1").unwrap();
        assert_eq!(s.presence, Duration::from_secs(5));
    }

    #[test]
    fn certificate_checks_are_off_only_when_the_url_says_so() {
        let checked = Settings::parse("rediss://:pw@h:6380/0?queue=q").unwrap();
        assert!(!checked.tls_insecure);
        assert_eq!(checked.redis_url, "rediss://:pw@h:6380/0");
        let unchecked = Settings::parse("rediss://:pw@h:6380/0?tls_insecure=true").unwrap();
        assert!(unchecked.tls_insecure);
        // What the redis crate reads as "check no certificate".
        assert_eq!(unchecked.redis_url, "rediss://:pw@h:6380/0#insecure");
    }

    #[test]
    fn defaults() {
        let s = Settings::parse("redis://127.0.0.1").unwrap();
        assert_eq!(s.queue, "default");
        assert_eq!(s.visibility, Duration::from_secs(30));
        assert_eq!(s.max_payload, 64 << 20);
        assert_eq!(s.max_deliveries, 3);
        assert_eq!(s.ttl, Duration::from_secs(120));
        assert!(s.ttl > s.reconnect);
        // Workers stop starting a dead caller's tasks within 15 s, and a
        // call no worker can run fails within a minute.
        assert_eq!(s.presence, Duration::from_secs(10));
        assert!(s.unserved <= Duration::from_secs(58));
        assert_eq!(s.display, "redis://127.0.0.1");
        assert_eq!(s.no_workers, None, "calls wait for workers by default");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("http://host", "use redis://"),
            ("not a url", "expected redis://"),
            ("redis://h?queue=a%20b", "queue `a b`"),
            ("redis://h?visiblity=2", "unknown parameter `visiblity`"),
            ("redis://h?visibility=0", "above 0"),
            ("redis://h?max_payload=lots", "not a whole number"),
            ("redis://h?max_deliveries=0", "at least 1"),
            ("redis://h?visibility=0.01", "at least 300ms"),
            ("redis://h?ttl=10", "longer than reconnect"),
            ("redis://h?tls_ca=/ca.pem", "rediss://"),
            ("rediss://h?tls_cert=/c.pem", "go together"),
            ("redis://h?key=short", "at least 16"),
            ("redis://h?presence=0.1", "presence"),
            ("redis://h?presence=200", "at most ttl"),
            ("redis://h?cluster=maybe", "use true or false"),
            ("redis://h?window=0", "window must be at least 1"),
            ("redis://h?unserved=-1", "above 0"),
            ("rediss://h#insecure", "say tls_insecure=true"),
            ("rediss://h?queue=q#anything", "takes no fragment"),
            ("redis://h?tls_insecure=true", "rediss://"),
            ("rediss://h?tls_insecure=perhaps", "use true or false"),
        ] {
            let err = Settings::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(err.starts_with("invalid pool configuration: invalid cluster URL"));
        }
    }

    #[test]
    fn the_key_comes_from_the_url_or_the_environment_and_never_shows() {
        let long = "0123456789abcdef0123";
        let from_url = Settings::parse_with_key(&format!("redis://h?key={long}"), None).unwrap();
        let from_env = Settings::parse_with_key("redis://h", Some(long.into())).unwrap();
        let both = Settings::parse_with_key(&format!("redis://h?key={long}"), Some(long.into()));
        assert!(from_url.auth.keyed() && from_env.auth.keyed() && both.is_ok());
        assert_eq!(
            from_url.auth.derive_id("x"),
            from_env.auth.derive_id("x"),
            "the same key either way"
        );
        assert!(!from_url.display.contains(long) && !from_url.redis_url.contains(long));
        assert!(!format!("{from_url:?}").contains(long));
        let differ = Settings::parse_with_key(
            &format!("redis://h?key={long}"),
            Some("another key of enough length".into()),
        );
        assert!(differ.unwrap_err().to_string().contains("differ"));
        assert!(
            !Settings::parse_with_key("redis://h", None)
                .unwrap()
                .auth
                .keyed()
        );
    }
}
