//! The live dashboard (`PoolBuilder::dashboard`), as a person sees it:
//! the page loaded in headless Chromium (Debian's `chromium`, which
//! `test.sh` installs), and `/metrics` parsed as Prometheus would.
//!
//! Headless Chromium needs no display. No timing is asserted: every wait
//! is a generous bound.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procpool::{Error, Pool, pool_job};

/// How long Chromium may take to load and dump a page on a busy machine.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .dashboard("127.0.0.1:0")
        .build()
        .unwrap()
}

/// A directory of its own for one Chromium run (its profile), removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "procpool-dashboard-{}-{what}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = Scratch::new("profile");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start chromium ({err}): install Debian's `chromium` (./test.sh does)")
        });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = reader.join().unwrap();
            assert!(
                status.success() || !out.is_empty(),
                "chromium failed: {status}"
            );
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium ran longer than {CHROMIUM_LIMIT:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page's DOM after its scripts ran for a while; `every` is its poll
/// interval in ms.
fn dump_dom(url: &str, every: u64) -> String {
    chromium(&format!("{url}?every={every}"), &["--dump-dom"])
}

/// The text of the element with `id` in a dumped DOM (no nested tags).
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    // Counts show with thousands separators (20,024).
    rest[start..end].replace(',', "")
}

/// A plain HTTP/1.0 request: the status code, the headers and the body.
fn http(url: &str, method: &str, path: &str) -> (u16, String, String) {
    let authority = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    http_as(url, method, path, authority)
}

/// Like `http`, with the `Host` header given.
fn http_as(url: &str, method: &str, path: &str, host: &str) -> (u16, String, String) {
    let authority = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// `/metrics` parsed: series (name with labels) → value. Checks the
/// format on the way: a `# HELP` and `# TYPE` before each metric's
/// samples, counters named `..._total`, numeric values.
fn scrape(url: &str) -> BTreeMap<String, f64> {
    let (status, head, body) = http(url, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut helped = Vec::new();
    let mut typed = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.iter().any(|h| h == name), "no # HELP for {name}");
            assert!(kind == "counter" || kind == "gauge", "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(typed.contains_key(name), "no # TYPE before {line}");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            samples.insert(series.to_owned(), value);
        }
    }
    samples
}

#[test]
fn the_page_shows_every_worker_the_items_done_and_charts() {
    let pool = pool(2);
    let url = pool.dashboard_url().unwrap();
    pool.chunksize(10).map(square, 0..500u64).unwrap();
    let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);

    let dom = dump_dom(&url, 250);
    for pid in &pids {
        assert!(
            dom.contains(&format!("<td class=\"pid\">{pid}</td>")),
            "worker {pid} is not on the page:\n{dom}"
        );
    }
    assert_eq!(text_of(&dom, "items-done"), "500");
    assert_eq!(text_of(&dom, "tasks-done"), "50");
    assert_eq!(text_of(&dom, "status"), "live");
    // Both charts, each drawn from several polls.
    for chart in ["chart-utilization", "chart-throughput"] {
        let at = dom.find(&format!("id=\"{chart}\"")).unwrap();
        let svg = &dom[at..at + dom[at..].find("</svg>").unwrap()];
        assert!(svg.contains("<polyline"), "{chart} has no line:\n{svg}");
    }
    let polls: u32 = text_of(&dom, "polls").parse().unwrap();
    assert!(polls >= 2, "the page polled {polls} times");
}

#[test]
fn the_numbers_change_without_reloading() {
    let pool = pool(2);
    let url = pool.dashboard_url().unwrap();
    pool.map(square, 0..100u64).unwrap();

    // One page load while work goes on: the items it shows change from
    // one poll to the next (the page counts those changes).
    let stop = Arc::new(AtomicBool::new(false));
    let worker = std::thread::spawn({
        let pool = pool.clone();
        let stop = Arc::clone(&stop);
        move || {
            while !stop.load(Ordering::Relaxed) {
                pool.chunksize(1).map(nap, [2u64; 8]).unwrap();
            }
        }
    });
    let mut changes = 0;
    for _ in 0..5 {
        let dom = dump_dom(&url, 100);
        changes = text_of(&dom, "changes").parse::<u32>().unwrap();
        if changes > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(changes > 0, "the items done never changed on a loaded page");

    // And between two looks, after more work.
    let before: u64 = text_of(&dump_dom(&url, 250), "items-done").parse().unwrap();
    pool.map(square, 0..300u64).unwrap();
    let after: u64 = text_of(&dump_dom(&url, 250), "items-done").parse().unwrap();
    assert!(after >= before + 300, "{before} then {after}");
}

#[test]
fn a_call_in_flight_shows_with_its_job_and_the_busy_workers() {
    let pool = pool(2);
    let url = pool.dashboard_url().unwrap();
    let call = pool.chunksize(1).map_async(nap, vec![300u64; 40]).unwrap();
    procpool_tests::eventually("a worker is busy", || {
        pool.stats().workers.iter().any(|w| w.running.is_some())
    });
    let dom = dump_dom(&url, 250);
    assert!(
        dom.contains("<span class=\"state busy\">busy</span>"),
        "{dom}"
    );
    let job = "dashboard::nap";
    assert!(
        dom.contains(&format!("<td class=\"job\">{job}</td>")),
        "{dom}"
    );
    // The calls table lists the map with its count of items.
    let at = dom.find("id=\"calls\"").unwrap();
    assert!(dom[at..].contains(" / 40</td>"), "{}", &dom[at..]);
    drop(call);
}

#[test]
fn metrics_parse_and_count_the_work() {
    let pool = pool(2);
    let url = pool.dashboard_url().unwrap();
    pool.chunksize(5).map(square, 0..100u64).unwrap();
    let samples = scrape(&url);
    assert_eq!(samples["procpool_items_done_total"], 100.0);
    assert_eq!(samples["procpool_tasks_done_total"], 20.0);
    assert_eq!(samples["procpool_workers_started_total"], 2.0);
    assert_eq!(samples["procpool_processes"], 2.0);
    assert_eq!(
        samples["procpool_worker_departures_total{reason=\"died\"}"],
        0.0
    );
    let per_slot: f64 = (0..2)
        .map(|slot| samples[&format!("procpool_worker_tasks_total{{slot=\"{slot}\"}}")])
        .sum();
    assert_eq!(per_slot, 20.0);

    pool.chunksize(5).map(square, 0..50u64).unwrap();
    assert_eq!(scrape(&url)["procpool_items_done_total"], 150.0);
}

#[test]
fn only_reads_are_served_and_no_request_reaches_the_pool() {
    let pool = pool(1);
    let url = pool.dashboard_url().unwrap();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (status, head, _) = http(&url, method, "/api/stats");
        assert_eq!(status, 405, "{method}: {head}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
    }
    let (status, _, _) = http(&url, "GET", "/../../etc/passwd");
    assert_eq!(status, 404);
    // A page elsewhere whose name was pointed at 127.0.0.1 (DNS rebinding).
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    let (status, _, body) = http_as(
        &url,
        "GET",
        "/api/stats",
        &format!("rebound.example:{port}"),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = http_as(&url, "GET", "/api/stats", &format!("localhost:{port}"));
    assert_eq!(status, 200);
    let (status, head, body) = http(&url, "GET", "/api/stats");
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    assert!(body.contains("\"tasks_done\":0"), "{body}");
    assert_eq!(pool.stats().tasks_done, 0);
    assert_eq!(pool.map(square, [3u64]).unwrap(), vec![9]);
}

#[test]
fn a_port_that_is_taken_fails_build() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = Pool::builder()
        .processes(1)
        .dashboard(addr.as_str())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::System { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot serve the dashboard on {addr}")),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn the_server_stops_with_the_pools_last_handle() {
    let pool = pool(1);
    assert!(Pool::with_processes(1).unwrap().dashboard_url().is_none());
    let url = pool.dashboard_url().unwrap();
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    let other = pool.clone();
    drop(pool);
    assert_eq!(http(&url, "GET", "/api/stats").0, 200);
    // A client that connected and says nothing, one that sent half a
    // request: neither keeps the pool's drop waiting.
    let authority = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let _silent = TcpStream::connect(authority).unwrap();
    let mut half = TcpStream::connect(authority).unwrap();
    half.write_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let dropping = Instant::now();
    drop(other);
    assert!(
        dropping.elapsed() < Duration::from_secs(60),
        "the pool's drop waited {:?}",
        dropping.elapsed()
    );
    procpool_tests::eventually("the dashboard's port is closed", || {
        TcpStream::connect(authority).is_err()
    });
}

/// Takes a screenshot of the page while a map runs, for the guide (set
/// `PROCPOOL_DASHBOARD_SCREENSHOT` to a file path to keep it).
#[test]
fn a_screenshot_of_the_page() {
    let pool = pool(4);
    let url = pool.dashboard_url().unwrap();
    pool.chunksize(100).map(square, 0..20_000u64).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let background = std::thread::spawn({
        let pool = pool.clone();
        let stop = Arc::clone(&stop);
        move || {
            while !stop.load(Ordering::Relaxed) {
                let naps: Vec<u64> = (0..24).map(|i| 5 + (i * 7) % 40).collect();
                pool.chunksize(2).map(nap, naps).unwrap();
            }
        }
    });
    let scratch = Scratch::new("screenshot");
    let kept = std::env::var_os("PROCPOOL_DASHBOARD_SCREENSHOT").map(PathBuf::from);
    let file = kept
        .clone()
        .unwrap_or_else(|| scratch.0.join("dashboard.png"));
    chromium(
        &format!("{url}?every=200"),
        &[
            &format!("--screenshot={}", file.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    background.join().unwrap();
    let png = std::fs::read(&file).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        Path::new(&file).display()
    );
    assert!(
        png.len() > 10_000,
        "an empty-looking picture: {} bytes",
        png.len()
    );
}

/// The fleet's page (`procpool-inspect --serve`, which runs
/// `serve_inspection`) over a real redis-server: workers by host with
/// their pids and what they run, the job's queue, the caller, Redis'
/// memory; and its `/metrics`.
#[test]
fn the_fleet_page_shows_workers_queues_and_callers() {
    let redis = procpool_tests::RedisServer::start();
    let url = redis.url("queue=fleet");
    let workers = procpool::cluster::Workers::start(&url, 2).unwrap();
    let pool = Pool::builder().cluster(&url).build().unwrap();
    // More tasks than workers, so some wait while two run.
    let call = pool.chunksize(1).map_async(nap, vec![400u64; 12]).unwrap();
    procpool_tests::eventually("both workers busy", || {
        let report = procpool::cluster::inspect(&url).unwrap();
        report.workers.len() == 2 && report.workers.iter().all(|w| w.running.is_some())
    });
    let pids: Vec<u32> = procpool::cluster::inspect(&url)
        .unwrap()
        .workers
        .iter()
        .map(|w| w.pid)
        .collect();

    let page = procpool::cluster::serve_inspection("127.0.0.1:0", &url).unwrap();
    if let Ok(path) = std::env::var("PROCPOOL_FLEET_SCREENSHOT") {
        chromium(
            &format!("{}?every=250", page.url()),
            &[
                &format!("--screenshot={path}"),
                "--window-size=1280,900",
                "--hide-scrollbars",
            ],
        );
    }
    let dom = dump_dom(page.url(), 250);
    for pid in &pids {
        assert!(
            dom.contains(&format!("<td class=\"pid\">{pid}</td>")),
            "worker {pid} is not on the page:\n{dom}"
        );
    }
    assert_eq!(text_of(&dom, "status"), "live");
    assert_eq!(text_of(&dom, "queue"), "fleet");
    assert_eq!(text_of(&dom, "workers-count"), "2");
    assert!(dom.contains("<td class=\"job\">dashboard::nap"), "{dom}");
    let at = dom.find("id=\"callers\"").unwrap();
    assert!(
        dom[at..].contains(&format!("<td>{}</td>", std::process::id())),
        "{dom}"
    );
    assert!(text_of(&dom, "memory").contains("iB"), "{dom}");
    let at = dom.find("id=\"chart-waiting\"").unwrap();
    assert!(dom[at..].contains("<polyline"), "{dom}");

    let samples = scrape(page.url());
    assert_eq!(samples["procpool_fleet_up"], 1.0);
    assert_eq!(samples["procpool_fleet_workers{queue=\"fleet\"}"], 2.0);
    assert_eq!(samples["procpool_fleet_callers{queue=\"fleet\"}"], 1.0);
    assert!(samples["procpool_fleet_redis_used_memory_bytes{queue=\"fleet\"}"] > 0.0);
    assert!(
        samples
            .keys()
            .any(|k| k
                .starts_with("procpool_fleet_tasks_waiting{queue=\"fleet\",job=\"dashboard::nap")),
        "{samples:?}"
    );
    assert_eq!(call.get().unwrap().len(), 12);

    // A task its worker timed out shows among the failures, live, and in
    // the metrics.
    let limited = Pool::builder()
        .cluster(&url)
        .task_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(matches!(
        limited.apply(nap, 5_000),
        Err(procpool::Error::TaskTimedOut { .. })
    ));
    let dom = dump_dom(page.url(), 250);
    assert_eq!(text_of(&dom, "failed"), "1", "{dom}");
    assert!(
        text_of(&dom, "failed-why").contains("timed out (TaskTimedOut) 1"),
        "{dom}"
    );
    let samples = scrape(page.url());
    assert_eq!(
        samples["procpool_fleet_timed_out_tasks_total{queue=\"fleet\"}"],
        1.0
    );
    assert_eq!(
        samples["procpool_fleet_lost_tasks_total{queue=\"fleet\"}"],
        0.0
    );
    drop(workers);
}
