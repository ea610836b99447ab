//! One connection to Redis that comes back by itself after it drops.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Connection, FromRedisValue, RedisError, Value};

use super::protocol::{self, Keys};
use super::settings::Settings;
use crate::{ClusterCause, Error};

/// Longest wait between two attempts to reach Redis again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for its reply (blocking reads ask for less).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A named connection: `CLIENT LIST` shows which process and role holds it.
///
/// With `cluster=true` the URL names seed nodes of a Redis Cluster. Every
/// key of a queue is in one hash slot, so the link connects to the node
/// that owns that slot (asking any node it knows: the seeds, then every
/// node the cluster told it about), and asks again after `MOVED`, a
/// failover or a lost connection: one node serves everything, so pipelines
/// and transactions work as on a single server.
pub(crate) struct Link {
    client: Client,
    /// The cluster's nodes, shared with this link's siblings.
    cluster: Option<Arc<ClusterNodes>>,
    conn: Option<Connection>,
    name: String,
    display: String,
    /// How many connections this link has made: a change means the
    /// connection dropped in between, whichever command noticed it.
    generation: u64,
}

impl Link {
    /// Connects once and fails with a clear error when Redis cannot be
    /// reached or refuses the credentials: start-up errors are reported,
    /// not retried forever.
    pub(crate) fn open(settings: &Settings, name: String) -> Result<Link, Error> {
        let mut link = Link {
            client: client(settings, &settings.redis_url)?,
            cluster: settings
                .cluster
                .then(|| Arc::new(ClusterNodes::new(settings))),
            conn: None,
            name,
            display: settings.display.clone(),
            generation: 0,
        };
        if let Err(err) = link.connection() {
            return Err(link.error("cannot connect", &err));
        }
        if settings.tls_insecure {
            super::warn(format_args!(
                "procpool: {}: the URL says tls_insecure=true, so the certificate of {} is \
                 not checked: anyone on the network path can read and change this traffic, \
                 the queue's key and tasks included. Trust the server's CA with tls_ca instead",
                link.name, link.display
            ));
        }
        Ok(link)
    }

    /// Another connection to the same server, under another name.
    pub(crate) fn sibling(&self, name: String) -> Link {
        Link {
            client: self.client.clone(),
            cluster: self.cluster.clone(),
            conn: None,
            name,
            display: self.display.clone(),
            generation: 0,
        }
    }

    /// How many connections this link has made so far.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn connection(&mut self) -> Result<&mut Connection, RedisError> {
        if self.conn.is_none() {
            let mut conn = match &self.cluster {
                None => self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?,
                Some(nodes) => nodes.connect_to_owner()?,
            };
            conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
            conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
            // The name only helps operators read `CLIENT LIST`: an ACL user
            // without `client|setname` may still use procpool.
            let named = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .query::<()>(&mut conn);
            if let Err(err) = named
                && is_connection_error(&err)
            {
                return Err(err);
            }
            self.generation += 1;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| RedisError::from(std::io::Error::other("no connection")))
    }

    /// Runs `f` once. A failed connection is dropped, so the next call
    /// connects again.
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let outcome = self.connection().and_then(f);
        if let Err(err) = &outcome
            && is_connection_error(err)
        {
            self.conn = None;
        }
        outcome
    }

    /// Runs one command once.
    pub(crate) fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.run(|conn| cmd.query(conn))
    }

    /// Runs `f` until it succeeds, reconnecting with backoff while the
    /// connection is down or Redis is not ready (loading its data, a
    /// failover), for at most `patience` (forever with `None`) or until
    /// `give_up` says so. Other errors (a refused command) return at once.
    pub(crate) fn run_retrying<T>(
        &mut self,
        patience: Option<Duration>,
        give_up: &dyn Fn() -> bool,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut reported = false;
        loop {
            match self.run(&mut f) {
                Ok(value) => {
                    if reported {
                        eprintln!(
                            "procpool: {}: connected to {} again",
                            self.name, self.display
                        );
                    }
                    return Ok(value);
                }
                Err(err) if is_transient(&err) => {
                    let out_of_time = patience.is_some_and(|limit| started.elapsed() >= limit);
                    if out_of_time || give_up() {
                        return Err(err);
                    }
                    if !reported && started.elapsed() >= Duration::from_secs(2) {
                        eprintln!(
                            "procpool: {}: lost the connection to {} ({err}); retrying",
                            self.name, self.display
                        );
                        reported = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// What to tell the user if Redis may evict procpool's keys: a memory
    /// limit with an eviction policy other than `noeviction`. Nothing when
    /// Redis does not say (`CONFIG` denied by an ACL or a managed service).
    pub(crate) fn eviction_risk(&mut self) -> Option<String> {
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory")
            .cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy");
        let (limit, policy): (Vec<String>, Vec<String>) = self.run(|conn| pipe.query(conn)).ok()?;
        let limit: u64 = limit.get(1)?.parse().ok()?;
        let policy = policy.get(1)?;
        if limit == 0 || policy == "noeviction" {
            return None;
        }
        Some(format!(
            "Redis at {} has maxmemory {limit} with maxmemory-policy {policy}: when full, it may \
             evict procpool's keys (task streams, results, presence), and the calls they belong \
             to then fail with Error::Cluster. Set `maxmemory-policy noeviction` (a full Redis \
             then refuses new tasks with an error instead), or use a Redis of its own for \
             procpool",
            self.display
        ))
    }

    /// A caller-facing error for a failed Redis operation: what failed,
    /// the server and what to check, with Redis' error as its source.
    pub(crate) fn error(&self, what: &str, err: &RedisError) -> Error {
        let text = err.to_string();
        let moved = matches!(
            err.retry_method(),
            redis::RetryMethod::MovedRedirect | redis::RetryMethod::AskRedirect
        );
        let hint = if moved || text.contains("CROSSSLOT") {
            "; this server is a node of a Redis Cluster: add cluster=true to the URL"
        } else if err.kind() == redis::ErrorKind::AuthenticationFailed
            || err.to_string().contains("NOAUTH")
            || err.to_string().contains("WRONGPASS")
        {
            "; check the user and password in the URL (redis://user:password@host or redis://:password@host)"
        } else if is_connection_error(err) {
            "; check that redis-server runs there and is reachable from this host"
        } else {
            ""
        };
        Error::cluster_caused(
            format!("{what} ({}){hint}", self.display),
            ClusterCause::redis(err.clone()),
        )
    }
}

/// Whether `err` may go away by itself: the connection dropped, or Redis
/// is loading its data, failing over or otherwise asks to try again later.
pub(crate) fn is_transient(err: &RedisError) -> bool {
    is_connection_error(err)
        || matches!(
            err.retry_method(),
            redis::RetryMethod::WaitAndRetry | redis::RetryMethod::RefreshSlotsAndRetry
        )
}

/// Whether `err` means the connection is unusable (and a new one may work):
/// also when a Redis Cluster moved the queue's slot to another node.
pub(crate) fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || matches!(
            err.retry_method(),
            redis::RetryMethod::MovedRedirect
                | redis::RetryMethod::AskRedirect
                | redis::RetryMethod::RefreshSlotsAndRetry
                | redis::RetryMethod::ReconnectFromInitialConnections
        )
        || slot_moving(err)
}

/// Whether a transaction was aborted because the queue's slot is moving
/// to another node of a Redis Cluster (its commands answered `MOVED`,
/// `ASK` or `TRYAGAIN`): a new connection, to the slot's new owner, works.
fn slot_moving(err: &RedisError) -> bool {
    err.clone().into_server_errors().is_some_and(|errors| {
        errors.iter().any(|(_, error)| {
            matches!(
                error.kind(),
                Some(
                    redis::ServerErrorKind::Moved
                        | redis::ServerErrorKind::Ask
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::ClusterDown
                )
            )
        })
    })
}

/// A node's address: host (an IPv6 address in brackets) and port.
type Node = (String, u16);

/// The nodes of a Redis Cluster a process knows, shared by its links: the
/// URL's host and `seeds` first, then every node (master or replica) that
/// `CLUSTER SLOTS` named. Any of them answers which node owns the queue's
/// slot, so the death of the node in the URL, or of the slot's owner
/// (once a replica took over), stops nothing.
pub(crate) struct ClusterNodes {
    settings: Settings,
    /// A key of the queue: its slot is the queue's.
    slot_key: String,
    /// Asked in this order; one that cannot be reached goes to the back,
    /// so a dead node costs one failed attempt per round, not every one.
    known: Mutex<Vec<Node>>,
}

/// At most this many nodes are remembered (a cluster's masters and replicas).
const MAX_NODES: usize = 64;

impl ClusterNodes {
    fn new(settings: &Settings) -> ClusterNodes {
        let mut known = Vec::new();
        if let Ok(url) = url::Url::parse(&settings.redis_url)
            && let Some(host) = url.host_str()
        {
            known.push((host.to_owned(), url.port().unwrap_or(6379)));
        }
        for seed in &settings.seeds {
            if !known.contains(seed) {
                known.push(seed.clone());
            }
        }
        ClusterNodes {
            settings: settings.clone(),
            slot_key: Keys::new(settings).workers(),
            known: Mutex::new(known),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        // Every critical section is one whole update of the list.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the known nodes in turn which node owns the queue's slot, and
    /// connects there, with the URL's credentials and TLS settings. Each
    /// attempt is bounded by `CONNECT_TIMEOUT`, so one call takes at most
    /// that much per known node (twice: connect, then the reply).
    fn connect_to_owner(&self) -> Result<Connection, RedisError> {
        let candidates = self.known().clone();
        let mut failure = None;
        for node in candidates {
            match self.ask(&node) {
                Ok((owner, learnt)) => {
                    self.learn(&node, learnt);
                    let Some(owner) = owner else {
                        let slot = &self.slot_key;
                        return Err(RedisError::from(std::io::Error::other(format!(
                            "no node of the Redis Cluster owns the slot of {slot} yet"
                        ))));
                    };
                    return self
                        .client(&owner)?
                        .get_connection_with_timeout(CONNECT_TIMEOUT);
                }
                Err(err) => {
                    self.demote(&node);
                    failure = Some(err);
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            RedisError::from(std::io::Error::other(
                "no node of the Redis Cluster is known",
            ))
        }))
    }

    /// `node`'s answer: the address of the slot's owner (if any node owns
    /// it), and every node it named.
    fn ask(&self, node: &Node) -> Result<(Option<Node>, Vec<Node>), RedisError> {
        let mut conn = self
            .client(node)?
            .get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        conn.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&self.slot_key)
            .query(&mut conn)?;
        let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
        Ok(slot_map(slots, slot, &node.0))
    }

    /// Moves `answered` to the front and adds the nodes it named.
    fn learn(&self, answered: &Node, learnt: Vec<Node>) {
        let mut known = self.known();
        known.retain(|node| node != answered);
        known.insert(0, answered.clone());
        for node in learnt {
            if known.len() < MAX_NODES && !known.contains(&node) {
                known.push(node);
            }
        }
    }

    /// Moves `unreachable` to the back.
    fn demote(&self, unreachable: &Node) {
        let mut known = self.known();
        if let Some(at) = known.iter().position(|node| node == unreachable) {
            let node = known.remove(at);
            known.push(node);
        }
    }

    /// A client for `node`: the URL with its host and port.
    fn client(&self, (host, port): &Node) -> Result<Client, RedisError> {
        let fail = |e: String| RedisError::from(std::io::Error::other(e));
        let mut url = url::Url::parse(&self.settings.redis_url).map_err(|e| fail(e.to_string()))?;
        url.set_host(Some(host)).map_err(|e| fail(e.to_string()))?;
        url.set_port(Some(*port))
            .map_err(|()| fail(format!("cannot set port {port}")))?;
        client(&self.settings, url.as_str()).map_err(|e| fail(e.to_string()))
    }
}

/// From a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id, ...],
/// replicas...], ...]`, from a node reached at `asked`): the master that
/// owns `slot`, and every node named. An empty host (or `?`) means "the
/// address you reached me at". Anything malformed is skipped.
pub(crate) fn slot_map(slots: Value, slot: i64, asked: &str) -> (Option<Node>, Vec<Node>) {
    let number = |v: Option<Value>| match v {
        Some(Value::Int(n)) => Some(n),
        _ => None,
    };
    let address = |value: Value| -> Option<Node> {
        let mut parts = protocol::into_items(value).into_iter();
        let host = protocol::text(parts.next()?)?;
        let port = u16::try_from(number(parts.next())?)
            .ok()
            .filter(|p| *p > 0)?;
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // An IPv6 address, as a URL writes it.
        } else {
            host
        };
        Some((host, port))
    };
    let mut owner = None;
    let mut nodes: Vec<Node> = Vec::new();
    for range in protocol::into_items(slots) {
        let mut parts = protocol::into_items(range).into_iter();
        let (Some(start), Some(end)) = (number(parts.next()), number(parts.next())) else {
            continue;
        };
        let named = parts
            .enumerate()
            .filter_map(|(index, value)| Some((index, address(value)?)));
        for (index, node) in named {
            if index == 0 && owner.is_none() && (start..=end).contains(&slot) {
                owner = Some(node.clone());
            }
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    (owner, nodes)
}

fn client(settings: &Settings, url: &str) -> Result<Client, Error> {
    let bad =
        |err: RedisError| Error::Config(format!("invalid cluster URL {}: {err}", settings.display));
    if settings.redis_url.starts_with("rediss://") {
        install_crypto_provider();
    }
    if settings.tls_ca.is_none() && settings.tls_cert.is_none() {
        return Client::open(url).map_err(bad);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the TLS file {} named in the cluster URL: {e}",
                path.display()
            ))
        })
    };
    let root_cert = settings.tls_ca.as_deref().map(read).transpose()?;
    let client_tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(bad)
}

/// rustls needs a process-wide crypto provider. One the program installed
/// serves us too; otherwise procpool installs ring, the one it builds with.
/// (Leaving the choice to rustls' crate features is not enough: a program
/// that also enables aws-lc-rs makes them ambiguous, and rustls panics.)
fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if rustls::crypto::CryptoProvider::get_default().is_some() {
            return;
        }
        // rustls 0.23.48 deprecates this (ring has no post-quantum key
        // exchange) without another way to name ring in 0.23 (0.24 moves
        // it to the `rustls-ring` crate); the lint is allowed here alone,
        // so that builds resolving 0.23.48 stay free of warnings.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        let _ = ring.install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn cluster_slots_give_the_owner_and_every_node() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 7001),
                node("::1", 7004),
            ]),
            // Malformed ranges and nodes are skipped.
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("x", 0)]),
        ]);
        let (owner, nodes) = slot_map(reply.clone(), 6000, "seed.example");
        assert_eq!(owner, Some(("seed.example".to_owned(), 7001)));
        assert_eq!(
            nodes,
            vec![
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.4".to_owned(), 7003),
                ("seed.example".to_owned(), 7001),
                ("[::1]".to_owned(), 7004),
            ]
        );
        // A slot whose master is malformed has no owner (never a replica).
        assert_eq!(slot_map(reply, 12000, "s").0, None);
        assert_eq!(slot_map(Value::Nil, 1, "s"), (None, Vec::new()));
    }

    /// Connecting where nothing listens fails at once with an
    /// `Error::Cluster` whose chain names the server and what to check,
    /// then says the OS error, once.
    #[test]
    fn a_refused_connection_says_the_os_error_once() {
        let port = {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            listener.local_addr().unwrap().port()
        };
        let settings = Settings::parse(&format!("redis://127.0.0.1:{port}/0")).unwrap();
        let Err(err) = Link::open(&settings, "test".to_owned()) else {
            panic!("connected to a port where nothing listens");
        };
        let printed = super::super::with_causes(&err);
        let os = std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
        assert_eq!(printed.matches(&os).count(), 1, "{printed}");
        assert_eq!(printed.matches("cannot connect").count(), 1, "{printed}");
        assert_eq!(printed.matches("redis-server runs").count(), 1, "{printed}");
        assert_eq!(
            printed.matches(&format!("127.0.0.1:{port}")).count(),
            1,
            "{printed}"
        );
        let Error::Cluster {
            source: Some(cause),
            ..
        } = &err
        else {
            panic!("expected Error::Cluster with a cause, got {err:?}");
        };
        let kind = cause.io_error().map(std::io::Error::kind);
        assert_eq!(
            kind,
            Some(std::io::ErrorKind::ConnectionRefused),
            "{printed}"
        );
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            (0i64..20000).prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
            "[a-z0-9.:?]{0,12}".prop_map(Value::SimpleString),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest::proptest! {
        /// Whatever a node answers, reading it never panics, and every
        /// address it yields has a port.
        #[test]
        fn any_cluster_slots_reply_is_read_without_panicking(
            reply in any_value(),
            slot in 0i64..16384,
        ) {
            let (owner, nodes) = slot_map(reply, slot, "asked");
            for (_, port) in owner.iter().chain(&nodes) {
                proptest::prop_assert!(*port > 0);
            }
        }
    }
}
