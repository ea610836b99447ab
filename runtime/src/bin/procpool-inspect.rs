//! Prints the state of a procpool cluster queue: workers alive with host,
//! pid and current job (and whether their heartbeat is late), tasks waiting
//! and taken per job with the oldest waiting task's age (and the jobs no
//! live worker can run), dead consumers, connected callers with their host,
//! pid and backlog, Redis' memory, and the forged and replayed tasks
//! workers dropped. Like `rq info` or `celery inspect`.
//!
//! ```sh
//! procpool-inspect 'redis://:password@10.0.0.5:6379/0?queue=images'
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: procpool-inspect <cluster URL>  (the URL callers and workers use, \
             e.g. 'redis://host:6379/0?queue=name'; the key may come from PROCPOOL_KEY)"
        );
        return ExitCode::from(2);
    };
    match procpool::cluster::inspect(&url) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
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
