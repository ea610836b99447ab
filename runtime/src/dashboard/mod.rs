//! The live dashboard (cargo feature `dashboard`): a small HTTP server on
//! threads of its own that serves a page, the JSON the page polls, and
//! `/metrics` in the Prometheus text format. See
//! [`PoolBuilder::dashboard`](crate::PoolBuilder::dashboard) and the guide's
//! dashboard page.
//!
//! The server is `tiny_http`: synchronous (no async runtime), small
//! (its dependencies are `ascii`, `chunked_transfer`, `httpdate` and `log`),
//! and widely used. It gets a `std::net::TcpListener` bound here, so a
//! bind failure is an [`Error`] from `build()`, and the listening socket
//! (like every socket std accepts on it) is close-on-exec.
//!
//! Read-only by construction: the server only ever calls the `snapshot`
//! closure it was given, which copies counters; nothing from a request
//! reaches the pool, and no job argument or result is ever in a snapshot
//! (only job names, pids, counts and durations).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::stats::{CallStats, PoolStats};

mod metrics;
#[cfg(feature = "cluster")]
pub(crate) use metrics::{head as metric_head, label as metric_label};

/// The pages and their assets, embedded in the crate (nothing is downloaded).
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
/// What both pages share: helpers and charts, and the style.
const COMMON: &str = include_str!("common.js");
const STYLE: &str = include_str!("page.css");
/// The fleet's page (`procpool-inspect --serve`).
#[cfg(feature = "cluster")]
pub(crate) const FLEET_PAGE: &str = include_str!("fleet.html");
#[cfg(feature = "cluster")]
pub(crate) const FLEET_SCRIPT: &str = include_str!("fleet.js");

/// What the page and `/metrics` show of a pool at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) processes: usize,
    pub(crate) uptime: Duration,
    pub(crate) stats: PoolStats,
    pub(crate) calls: Vec<CallStats>,
}

/// Takes a snapshot; `None` once the pool is gone (the server then stops).
pub(crate) type Source = Box<dyn Fn() -> Option<Snapshot> + Send + Sync + 'static>;

/// Renders a body from fresh data; `None` once the data's owner is gone.
pub(crate) type Render = Box<dyn Fn() -> Option<String> + Send + 'static>;

/// What a server serves: a page, its script, the JSON it polls and
/// `/metrics` (the pool's, or a fleet's).
pub(crate) struct Site {
    pub(crate) page: &'static str,
    pub(crate) script: &'static str,
    pub(crate) json: Render,
    pub(crate) metrics: Render,
}

impl Site {
    /// A pool's site over its snapshots.
    pub(crate) fn pool(source: Source) -> Site {
        let source = std::sync::Arc::new(source);
        let for_metrics = std::sync::Arc::clone(&source);
        Site {
            page: PAGE,
            script: SCRIPT,
            json: Box::new(move || Some(to_json(&source()?))),
            metrics: Box::new(move || Some(metrics::render(&for_metrics()?))),
        }
    }
}

/// A listening socket, bound before the pool starts its workers.
#[derive(Debug)]
pub(crate) struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

/// Binds `addr` ("127.0.0.1:0": port 0 picks a free port).
pub(crate) fn bind(addr: &str) -> Result<Bound, Error> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|err| {
            Error::system(
                format!("cannot serve the dashboard: `{addr}` is not an address to listen on (use one such as \"127.0.0.1:0\")"),
                err,
            )
        })?
        .collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(|err| {
        Error::system(
            format!(
                "cannot serve the dashboard on {addr} (is the port taken? port 0 picks a free one)"
            ),
            err,
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|err| Error::system("cannot read the dashboard's listening address", err))?;
    Ok(Bound { listener, addr })
}

/// How long a pool's drop waits for its dashboard's thread to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A running dashboard: stops its server when dropped (with the pool's
/// last handle).
pub(crate) struct Dashboard {
    url: String,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Disconnected when the server's thread ends.
    ended: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").field("url", &self.url).finish()
    }
}

impl Dashboard {
    /// Serves `site` on `bound` from a thread of its own.
    pub(crate) fn start(bound: Bound, site: Site) -> Result<Dashboard, Error> {
        let url = match bound.addr {
            SocketAddr::V4(v4) => format!("http://{}:{}/", v4.ip(), v4.port()),
            SocketAddr::V6(v6) => format!("http://[{}]:{}/", v6.ip(), v6.port()),
        };
        let server = tiny_http::Server::from_listener(bound.listener, None).map_err(|err| {
            Error::system(
                "cannot start the dashboard's server",
                std::io::Error::other(err.to_string()),
            )
        })?;
        let server = Arc::new(server);
        let hosts = Hosts::for_addr(bound.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("procpool-dashboard".into())
            .spawn({
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                move || {
                    let _ending = ending;
                    serve(&server, &stop, &site, &hosts);
                }
            })
            .map_err(|err| Error::system("cannot start the dashboard's thread", err))?;
        Ok(Dashboard {
            url,
            server,
            stop,
            thread: Some(thread),
            ended: std::sync::Mutex::new(ended),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            // The server's own thread may hold the pool's last handle for
            // a moment (taking a snapshot): it must not wait for itself.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            // A client that stopped reading can hold the thread in a
            // write: the pool's drop waits a moment, never for ever (the
            // thread then ends after that answer, closing the socket).
            let ended = self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recv_timeout(STOP_WAIT);
            match ended {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => log::warn!(
                    "procpool: the dashboard at {} is still answering a request; \
                     it stops after it",
                    self.url
                ),
                _ => {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// The server's loop: one request at a time (a snapshot is quick), until
/// the pool is dropped. A failure is logged and ends the loop; a panic in
/// here is caught and logged too, never reaching the pool.
fn serve(server: &tiny_http::Server, stop: &AtomicBool, site: &Site, hosts: &Hosts) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(err) => {
                if !stop.load(Ordering::Acquire) {
                    log::warn!("procpool: the dashboard stopped: {err}");
                }
                return;
            }
        };
        if stop.load(Ordering::Acquire) {
            return;
        }
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            respond(request, site, hosts)
        }));
        match answered {
            Ok(true) => {}
            Ok(false) => return,
            Err(panic) => {
                log::error!(
                    "procpool: the dashboard stopped: it panicked: {}",
                    crate::error::panic_message(&*panic)
                );
                return;
            }
        }
    }
}

/// The `Host` values a dashboard on a loopback address answers: a page
/// elsewhere that points its own name at 127.0.0.1 (DNS rebinding) sends
/// its name, and is refused. On other addresses, any (the operator chose
/// to listen there, under whatever names the machine has).
#[derive(Debug)]
struct Hosts(Option<Vec<String>>);

impl Hosts {
    fn for_addr(addr: SocketAddr) -> Hosts {
        if !addr.ip().is_loopback() {
            return Hosts(None);
        }
        let port = addr.port();
        Hosts(Some(
            ["127.0.0.1", "localhost", "[::1]"]
                .iter()
                .map(|name| format!("{name}:{port}"))
                .chain(std::iter::once(match addr {
                    SocketAddr::V4(v4) => format!("{}:{port}", v4.ip()),
                    SocketAddr::V6(v6) => format!("[{}]:{port}", v6.ip()),
                }))
                .collect(),
        ))
    }

    fn allows(&self, host: Option<&str>) -> bool {
        match (&self.0, host) {
            (None, _) => true,
            (Some(allowed), Some(host)) => allowed.iter().any(|a| a.eq_ignore_ascii_case(host)),
            // HTTP/1.0 without a Host: not a browser's request.
            (Some(_), None) => true,
        }
    }
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Answer {
    fn ok(content_type: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            content_type,
            body: body.into(),
            allow: false,
        }
    }

    fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow: status == 405,
        }
    }
}

/// What to answer for `method` on `url` (its path; any query is ignored),
/// or `None` when the pool is gone.
fn route(method: &tiny_http::Method, url: &str, site: &Site) -> Option<Answer> {
    use tiny_http::Method;
    if !matches!(method, Method::Get | Method::Head) {
        return Some(Answer::status(
            405,
            "the dashboard is read-only: only GET and HEAD are served",
        ));
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    Some(match path {
        "/" | "/index.html" => Answer::ok("text/html; charset=utf-8", site.page),
        "/page.js" => Answer::ok("text/javascript; charset=utf-8", site.script),
        "/common.js" => Answer::ok("text/javascript; charset=utf-8", COMMON),
        "/page.css" => Answer::ok("text/css; charset=utf-8", STYLE),
        "/api/stats" => Answer::ok("application/json", (site.json)()?),
        "/metrics" => Answer::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            (site.metrics)()?,
        ),
        _ => Answer::status(
            404,
            "not found: the dashboard serves /, /api/stats and /metrics",
        ),
    })
}

/// Answers one request; false once the pool is gone.
fn respond(request: tiny_http::Request, site: &Site, hosts: &Hosts) -> bool {
    let host = request
        .headers()
        .iter()
        .find(|header| header.field.equiv("Host"))
        .map(|header| header.value.as_str().to_owned());
    let (answer, live) = if !hosts.allows(host.as_deref()) {
        let refused = "this dashboard listens on a loopback address and answers only \
                       requests for it (Host: 127.0.0.1, localhost or [::1] with its port)";
        (Answer::status(403, refused), true)
    } else {
        match route(request.method(), request.url(), site) {
            Some(answer) => (answer, true),
            None => (Answer::status(503, "the pool is gone"), false),
        }
    };
    let mut response =
        tiny_http::Response::from_string(answer.body).with_status_code(answer.status);
    let mut headers = vec![
        ("Content-Type", answer.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        // Everything comes from this server; nothing is fetched elsewhere.
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    ];
    if answer.allow {
        headers.push(("Allow", "GET, HEAD"));
    }
    for (name, value) in headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response = response.with_header(header);
        }
    }
    if let Err(err) = request.respond(response) {
        // A browser that went away: not the dashboard's failure.
        log::debug!("procpool: the dashboard could not answer a request: {err}");
    }
    live
}

/// `s` as a JSON string.
pub(crate) fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A finite number as JSON (seconds, shares).
pub(crate) fn json_f64(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x:.6}");
    } else {
        out.push('0');
    }
}

/// The JSON the page polls (`/api/stats`).
pub(crate) fn to_json(snapshot: &Snapshot) -> String {
    let stats = &snapshot.stats;
    let mut out = String::with_capacity(512 + 256 * stats.workers.len());
    let _ = write!(out, "{{\"processes\":{},\"uptime_s\":", snapshot.processes);
    json_f64(&mut out, snapshot.uptime.as_secs_f64());
    let counters = [
        ("tasks_done", stats.tasks_done),
        ("tasks_failed", stats.tasks_failed),
        ("tasks_retried", stats.tasks_retried),
        ("items_done", stats.items_done),
        ("workers_started", stats.workers_started),
        ("workers_replaced", stats.workers_replaced),
        ("workers_died", stats.workers_died),
        ("workers_timed_out", stats.workers_timed_out),
        ("workers_broke_protocol", stats.workers_broke_protocol),
        ("workers_retired", stats.workers_retired),
    ];
    for (name, value) in counters {
        let _ = write!(out, ",\"{name}\":{value}");
    }
    out.push_str(",\"busy_s\":");
    json_f64(&mut out, metrics::busy_seconds(stats));
    out.push_str(",\"workers\":[");
    for (slot, worker) in stats.workers.iter().enumerate() {
        if slot > 0 {
            out.push(',');
        }
        let state = match (worker.pid, worker.running) {
            (None, _) => "starting",
            (Some(_), Some(_)) => "busy",
            (Some(_), None) => "idle",
        };
        let _ = write!(out, "{{\"slot\":{slot},\"pid\":");
        match worker.pid {
            Some(pid) => {
                let _ = write!(out, "{pid}");
            }
            None => out.push_str("null"),
        }
        let _ = write!(out, ",\"state\":\"{state}\",\"job\":");
        match worker.running {
            Some(job) => json_string(&mut out, job),
            None => out.push_str("null"),
        }
        out.push_str(",\"running_s\":");
        json_f64(&mut out, worker.running_for.as_secs_f64());
        let _ = write!(out, ",\"tasks\":{},\"busy_s\":", worker.tasks);
        json_f64(&mut out, worker.busy.as_secs_f64());
        out.push_str(",\"idle_s\":");
        json_f64(&mut out, worker.idle.as_secs_f64());
        out.push_str(",\"utilization\":");
        json_f64(&mut out, worker.utilization());
        out.push('}');
    }
    out.push_str("],\"calls\":[");
    for (index, call) in snapshot.calls.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"job\":");
        json_string(&mut out, call.job);
        let _ = write!(out, ",\"done\":{},\"total\":", call.done);
        match call.total {
            Some(total) => {
                let _ = write!(out, "{total}");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"age_s\":");
        json_f64(&mut out, call.age.as_secs_f64());
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WorkerStats;

    pub(super) fn sample() -> Snapshot {
        let busy = WorkerStats {
            pid: Some(41),
            tasks: 3,
            busy: Duration::from_secs(2),
            idle: Duration::from_secs(1),
            running: Some("my::job \"quoted\"</script>"),
            running_for: Duration::from_millis(1500),
        };
        let stats = PoolStats {
            items_done: 12,
            tasks_done: 3,
            workers_died: 1,
            workers: vec![busy, WorkerStats::default()],
            ..PoolStats::default()
        };
        Snapshot {
            processes: 2,
            uptime: Duration::from_secs(3),
            stats,
            calls: vec![CallStats {
                job: "my::job",
                done: 5,
                total: Some(10),
                age: Duration::from_secs(1),
            }],
        }
    }

    #[test]
    fn json_escapes_names_and_shows_every_slot() {
        let json = to_json(&sample());
        assert!(json.contains("\"pid\":41"), "{json}");
        assert!(
            json.contains("\"pid\":null,\"state\":\"starting\""),
            "{json}"
        );
        assert!(json.contains("\"state\":\"busy\""), "{json}");
        assert!(
            json.contains(r#""job":"my::job \"quoted\"\u003c/script\u003e""#),
            "{json}"
        );
        assert!(json.contains("\"items_done\":12"), "{json}");
        assert!(json.contains("\"done\":5,\"total\":10"), "{json}");
        // Busy time so far: 2 s done plus 1.5 s of the running task.
        assert!(json.contains("\"busy_s\":3.500000"), "{json}");
    }

    #[test]
    fn a_taken_port_is_an_error_that_says_so() {
        let first = bind("127.0.0.1:0").unwrap();
        let taken = first.addr.to_string();
        let err = bind(&taken).unwrap_err();
        assert!(
            err.to_string().contains("cannot serve the dashboard on"),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let err = bind("not an address").unwrap_err();
        assert!(
            err.to_string().contains("not an address to listen on"),
            "{err}"
        );
    }

    #[test]
    fn only_reads_are_served() {
        let site = Site::pool(Box::new(|| Some(sample())));
        let answer = route(&tiny_http::Method::Post, "/api/stats", &site).unwrap();
        assert_eq!(answer.status, 405);
        assert!(answer.allow);
        let answer = route(&tiny_http::Method::Get, "/api/stats?x=1", &site).unwrap();
        assert_eq!(answer.status, 200);
        let answer = route(&tiny_http::Method::Get, "/etc/passwd", &site).unwrap();
        assert_eq!(answer.status, 404);
        let gone = Site::pool(Box::new(|| None));
        assert!(route(&tiny_http::Method::Get, "/metrics", &gone).is_none());
        // The page itself needs no pool.
        assert!(route(&tiny_http::Method::Get, "/", &gone).is_some());
    }

    #[test]
    fn on_loopback_only_its_own_names_are_answered() {
        let hosts = Hosts::for_addr("127.0.0.1:8123".parse().unwrap());
        assert!(hosts.allows(Some("127.0.0.1:8123")));
        assert!(hosts.allows(Some("LOCALHOST:8123")));
        assert!(hosts.allows(Some("[::1]:8123")));
        assert!(!hosts.allows(Some("rebound.example:8123")));
        assert!(!hosts.allows(Some("127.0.0.1:80")));
        let anywhere = Hosts::for_addr("0.0.0.0:8123".parse().unwrap());
        assert!(anywhere.allows(Some("build-7.internal:8123")));
    }

    #[test]
    fn the_listening_socket_is_close_on_exec() {
        let bound = bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&bound.listener);
        let flags = rustix::io::fcntl_getfd(fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}
