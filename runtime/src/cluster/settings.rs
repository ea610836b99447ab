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
    /// More seed nodes of the Redis Cluster (`seeds=host:port,...`), tried
    /// after the URL's own host, with its credentials and TLS settings.
    pub(crate) seeds: Vec<(String, u16)>,
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
                          tls_ca, tls_cert, tls_key, tls_insecure, key, unserved, no_workers, cluster, seeds";

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
        let mut settings = Settings::defaults();
        let mut url_key = None;
        let mut presence = None;
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (key, value) in pairs {
            match key.as_str() {
                "key" => url_key = Some(value),
                "presence" => presence = Some(parse_seconds(&key, &value).map_err(invalid)?),
                _ => settings.set(&key, &value).map_err(invalid)?,
            }
        }
        settings.presence = presence.unwrap_or(settings.presence.min(settings.ttl));
        settings.check(&parsed).map_err(invalid)?;
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

    /// Every setting at its default.
    fn defaults() -> Settings {
        Settings {
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
            seeds: Vec::new(),
            auth: Auth::new(None),
        }
    }

    /// Sets the parameter `key` (all but `key` and `presence`) from `value`.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let seconds = || parse_seconds(key, value);
        match key {
            "queue" => self.queue = queue_name(value)?,
            "visibility" => self.visibility = seconds()?,
            "ttl" => self.ttl = seconds()?,
            "reconnect" => self.reconnect = seconds()?,
            "unserved" => self.unserved = seconds()?,
            "no_workers" => self.no_workers = Some(seconds()?),
            "max_payload" => self.max_payload = parse_number(key, value)?,
            "window" => self.window = parse_number(key, value)?,
            "max_deliveries" => self.max_deliveries = parse_number(key, value)?,
            "tls_ca" => self.tls_ca = Some(PathBuf::from(value)),
            "tls_cert" => self.tls_cert = Some(PathBuf::from(value)),
            "tls_key" => self.tls_key = Some(PathBuf::from(value)),
            "cluster" => self.cluster = parse_bool(key, value)?,
            "seeds" => self.seeds = parse_seeds(value)?,
            "tls_insecure" => self.tls_insecure = parse_bool(key, value)?,
            other => {
                return Err(format!(
                    "unknown parameter `{other}`; procpool understands {PARAMETERS}"
                ));
            }
        }
        Ok(())
    }

    /// Checks that the settings read from `parsed` agree with each other.
    fn check(&self, parsed: &url::Url) -> Result<(), String> {
        if self.ttl <= self.reconnect {
            return Err(format!(
                "ttl ({:?}) must be longer than reconnect ({:?}): a caller that reconnects \
                 within `reconnect` still needs its keys",
                self.ttl, self.reconnect
            ));
        }
        if self.presence < MIN_PRESENCE || self.presence > self.ttl {
            return Err(format!(
                "presence ({:?}) must be at least {MIN_PRESENCE:?} and at most ttl ({:?})",
                self.presence, self.ttl
            ));
        }
        if self.visibility < MIN_VISIBILITY {
            return Err(format!(
                "visibility must be at least {MIN_VISIBILITY:?}: below that, tasks are taken \
                 from live workers"
            ));
        }
        if self.max_deliveries == 0 || self.max_payload == 0 || self.window == 0 {
            return Err("max_deliveries, max_payload and window must be at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(
                "tls_cert and tls_key go together (a client certificate and its key)".into(),
            );
        }
        let uses_files = self.tls_ca.is_some() || self.tls_cert.is_some();
        if (uses_files || self.tls_insecure) && parsed.scheme() != "rediss" {
            return Err("tls_ca, tls_cert, tls_key and tls_insecure need a rediss:// URL".into());
        }
        if !self.seeds.is_empty() && !self.cluster {
            return Err(
                "seeds names more nodes of a Redis Cluster: add cluster=true to the URL".into(),
            );
        }
        // The redis crate reads `#insecure` as "check no certificate": a
        // fragment is easy to miss in a URL, so only the parameter says it.
        if let Some(fragment) = parsed.fragment() {
            return Err(format!(
                "the URL ends in `#{fragment}`; procpool takes no fragment. To turn the \
                 server's certificate checks off (anyone on the network path can then read \
                 and change the traffic), say tls_insecure=true"
            ));
        }
        Ok(())
    }
}

fn invalid(why: String) -> Error {
    Error::Config(format!("invalid cluster URL: {why}"))
}

/// `seeds=host:port,host:port,...`: more nodes of a Redis Cluster to ask
/// when the URL's own host is unreachable. An IPv6 address goes in
/// brackets (`[::1]:7000`); the port is required.
pub(crate) fn parse_seeds(value: &str) -> Result<Vec<(String, u16)>, String> {
    let bad = |seed: &str, why: &str| {
        format!("seeds: `{seed}` {why}; write seeds=host:port,host:port (IPv6 as [::1]:7000)")
    };
    let mut seeds = Vec::new();
    for seed in value.split(',') {
        let Some((host, port)) = seed.rsplit_once(':') else {
            return Err(bad(seed, "has no port"));
        };
        let port: u16 = match port.parse() {
            Ok(port) if port > 0 => port,
            _ => return Err(bad(seed, "has no valid port (1 to 65535)")),
        };
        let host = match host.strip_prefix('[') {
            Some(v6) => match v6.strip_suffix(']') {
                Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => host,
                _ => return Err(bad(seed, "is not a bracketed IPv6 address")),
            },
            None => host,
        };
        // What `url` accepts as a host (no `:`, `/`, `@`, spaces, ...).
        let valid = !host.is_empty()
            && (host.starts_with('[')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
        if !valid {
            return Err(bad(seed, "has no valid host name"));
        }
        seeds.push((host.to_owned(), port));
    }
    Ok(seeds)
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
            ("redis://h?seeds=a:1", "add cluster=true"),
            ("redis://h?cluster=true&seeds=a", "has no port"),
            ("redis://h?cluster=true&seeds=a:0", "no valid port"),
            ("redis://h?cluster=true&seeds=a:1,", "has no port"),
            ("redis://h?cluster=true&seeds=a%2Fb:1", "no valid host"),
            ("redis://h?cluster=true&seeds=[zz]:1", "bracketed IPv6"),
        ] {
            let err = Settings::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(err.starts_with("invalid pool configuration: invalid cluster URL"));
        }
    }

    #[test]
    fn seeds_name_more_nodes_of_a_redis_cluster() {
        let s = Settings::parse(
            "redis://:pw@10.0.0.1:7000/0?cluster=true&seeds=10.0.0.2:7001,node-3.example:7002,[::1]:7003",
        )
        .unwrap();
        assert_eq!(
            s.seeds,
            vec![
                ("10.0.0.2".to_owned(), 7001),
                ("node-3.example".to_owned(), 7002),
                ("[::1]".to_owned(), 7003)
            ]
        );
        assert_eq!(s.redis_url, "redis://:pw@10.0.0.1:7000/0");
        assert!(
            Settings::parse("redis://h?cluster=true")
                .unwrap()
                .seeds
                .is_empty()
        );
    }

    proptest::proptest! {
        /// Whatever the text, `parse_seeds` answers without panicking, and
        /// every seed it accepts makes a URL with that host and port.
        #[test]
        fn any_seeds_text_is_refused_or_gives_usable_addresses(text in "\\PC{0,40}") {
            if let Ok(seeds) = parse_seeds(&text) {
                for (host, port) in seeds {
                    let mut url = url::Url::parse("redis://h:1/0").unwrap();
                    proptest::prop_assert!(url.set_host(Some(&host)).is_ok(), "{host}");
                    proptest::prop_assert!(url.set_port(Some(port)).is_ok());
                }
            }
        }

        /// Well-formed lists read back exactly.
        #[test]
        fn well_formed_seeds_read_back(
            seeds in proptest::collection::vec(("[a-z0-9][a-z0-9.-]{0,20}", 1u16..), 1..5)
        ) {
            let text: Vec<String> = seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            proptest::prop_assert_eq!(parse_seeds(&text.join(",")).unwrap(), seeds);
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
