//! `--redis-scale 8,16,32,64`: what the Redis backend costs Redis per task
//! as the number of workers grows (a command, not a CI test).
//!
//! For each worker count: a fresh redis-server, that many cluster worker
//! processes on this host, then
//! - 5 seconds idle, to see the background load of the workers alone
//!   (heartbeats, blocked reads, recovery scans);
//! - a map of one-item tasks from one caller, with Redis' counters reset
//!   first: commands per task and Redis CPU per task (from `INFO
//!   commandstats`, the time Redis spent in commands, and from `INFO cpu`,
//!   the whole process).
//!
//! It needs `redis-server` and `redis-cli` on the `PATH`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procpool::Pool;
use procpool::cluster::Workers;

use crate::systems::square;

/// A redis-server of this run, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Result<Server, String> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--port", &port.to_string(), "--loglevel", "warning"])
        .args(["--maxclients", "10000"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(server)
}

/// `redis-cli -p port args...`, its output.
fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What Redis did since its counters were last reset.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    /// Commands run.
    calls: u64,
    /// Microseconds spent in them (`INFO commandstats`).
    command_us: u64,
    /// CPU microseconds of the whole process (`INFO cpu`), since start.
    cpu_us: u64,
}

fn load(port: u16) -> Result<Load, String> {
    let mut load = Load::default();
    for line in cli(port, &["INFO", "commandstats"])?.lines() {
        // cmdstat_xadd:calls=10,usec=50,usec_per_call=5.00,...
        let Some((_, stats)) = line.split_once(':') else {
            continue;
        };
        for field in stats.split(',') {
            match field.split_once('=') {
                Some(("calls", n)) => load.calls += n.trim().parse::<u64>().unwrap_or(0),
                Some(("usec", n)) => load.command_us += n.trim().parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    for line in cli(port, &["INFO", "cpu"])?.lines() {
        if let Some(("used_cpu_sys" | "used_cpu_user", seconds)) = line.trim().split_once(':') {
            load.cpu_us += (seconds.parse::<f64>().unwrap_or(0.0) * 1e6) as u64;
        }
    }
    Ok(load)
}

/// One row of the table.
fn measure(workers: usize, tasks: u64) -> Result<String, String> {
    let server = start_server()?;
    let url = format!("redis://127.0.0.1:{}/0?queue=scale", server.port);
    let pool_workers = Workers::start(&url, workers).map_err(|e| e.to_string())?;
    let pool = Pool::builder()
        .cluster(&url)
        .build()
        .map_err(|e| e.to_string())?;
    // Warm up: every worker connected, every stream made.
    pool.chunksize(1)
        .map(square, 0..200u64)
        .map_err(|e| e.to_string())?;

    cli(server.port, &["CONFIG", "RESETSTAT"])?;
    let idle_from = load(server.port)?;
    let idle_time = Duration::from_secs(5);
    std::thread::sleep(idle_time);
    let idle = load(server.port)?;
    let idle_calls_per_s = idle.calls as f64 / idle_time.as_secs_f64();
    let idle_cpu = (idle.cpu_us - idle_from.cpu_us) as f64 / idle_time.as_secs_f64() / 1e6;

    cli(server.port, &["CONFIG", "RESETSTAT"])?;
    let before = load(server.port)?;
    let start = Instant::now();
    let out = pool
        .chunksize(1)
        .map(square, 0..tasks)
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(out.len() as u64, tasks);
    let after = load(server.port)?;
    if std::env::var_os("PROCPOOL_SCALE_COMMANDS").is_some() {
        eprintln!("{}", cli(server.port, &["INFO", "commandstats"])?);
    }
    drop(pool);
    pool_workers.stop().map_err(|e| e.to_string())?;
    let per_task = |v: u64| v as f64 / tasks as f64;
    Ok(format!(
        "| {workers} | {:.0} | {:.1} | {:.1} | {:.1} | {idle_calls_per_s:.0} | {:.1} % |",
        tasks as f64 / elapsed,
        per_task(after.calls),
        per_task(after.command_us),
        per_task(after.cpu_us - before.cpu_us),
        idle_cpu * 100.0,
    ))
}

/// Prints the table for each worker count in `counts`.
pub(crate) fn run(counts: &[usize], tasks: u64) {
    println!(
        "| workers | tasks/s | Redis commands per task | Redis µs in commands per task | \
         Redis CPU µs per task | idle commands/s | idle Redis CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &workers in counts {
        eprintln!("{workers} workers ...");
        match measure(workers, tasks) {
            Ok(row) => println!("{row}"),
            Err(why) => println!("| {workers} | failed: {why} |||||"),
        }
    }
}
