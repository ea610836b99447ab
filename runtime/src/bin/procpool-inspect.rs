//! Prints the state of a procpool cluster queue: workers alive with host,
//! pid and current job (and whether their heartbeat is late), tasks waiting
//! and taken per job with the oldest waiting task's age (and the jobs no
//! live worker can run), dead consumers, connected callers with their host,
//! pid and backlog, Redis' memory, and the forged and replayed tasks
//! workers dropped. Like `rq info` or `celery inspect`.
//!
//! With `--serve ADDR` (cargo feature `dashboard`), serves the same as a
//! live page instead, with Prometheus `/metrics`, until interrupted.
//!
//! ```sh
//! procpool-inspect 'redis://:password@10.0.0.5:6379/0?queue=images'
//! procpool-inspect --serve 127.0.0.1:9000 'redis://10.0.0.5:6379/0?queue=images'
//! ```

use std::process::ExitCode;

const USAGE: &str = "usage: procpool-inspect [--serve ADDR] <cluster URL>  (the URL callers and \
                     workers use, e.g. 'redis://host:6379/0?queue=name'; the key may come from \
                     PROCPOOL_KEY; --serve 127.0.0.1:9000 serves a live page there)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr, url] if flag == "--serve" => serve(addr, url),
        [url] if !url.starts_with("--") => match procpool::cluster::inspect(url) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("procpool-inspect: {err}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "dashboard")]
fn serve(addr: &str, url: &str) -> ExitCode {
    match procpool::cluster::serve_inspection(addr, url) {
        Ok(page) => {
            // The one line a script waits for.
            println!("serving {}", page.url());
            loop {
                std::thread::park();
            }
        }
        Err(err) => {
            // The error, then its causes (Redis' or the OS's error).
            let mut text = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                text += &format!(": {inner}");
                cause = inner.source();
            }
            eprintln!("procpool-inspect: {text}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "dashboard"))]
fn serve(_: &str, _: &str) -> ExitCode {
    eprintln!(
        "procpool-inspect: --serve needs procpool's cargo feature `dashboard`: \
         cargo install procpool --features cluster,dashboard"
    );
    ExitCode::from(2)
}
