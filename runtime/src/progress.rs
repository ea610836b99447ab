//! An optional progress bar for long calls (cargo feature `progress`).
//!
//! Without the feature this is a zero-sized no-op, so the pool's code has no
//! `cfg` of its own. With it, bars go to stderr through `indicatif`, which
//! draws nothing when stderr is not a terminal (pipes, CI logs, tests).

#[cfg(feature = "progress")]
mod bar {
    use indicatif::{ProgressBar, ProgressState, ProgressStyle};

    /// A bar for one call: done/total, rate and ETA.
    #[derive(Debug, Clone)]
    pub(crate) struct Bar(Option<ProgressBar>);

    impl Bar {
        /// A bar for `job` over `total` items (`None`: unknown, as for `imap`).
        pub(crate) fn new(enabled: bool, job: &str, total: Option<usize>) -> Self {
            if !enabled {
                return Bar(None);
            }
            let template = match total {
                Some(_) => "{msg} [{bar:40}] {pos}/{len} items, {rate}, ETA {eta}",
                None => "{msg} {spinner} {pos} items, {rate}",
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = out.write_str(&super::rate(state.per_sec()));
                    },
                )
                .progress_chars("=> ");
            let bar = match total {
                Some(total) => ProgressBar::new(total as u64),
                None => ProgressBar::no_length(),
            }
            .with_style(style)
            .with_message(job.rsplit("::").next().unwrap_or(job).to_owned());
            // Drawn now, at 0, rather than when the first item finishes.
            bar.tick();
            Bar(Some(bar))
        }

        pub(crate) fn advance(&self, items: usize) {
            // Chunks still running when an `imap` is dropped report in
            // after its bar was finished: they would draw it again below
            // whatever the program printed since.
            if let Some(bar) = self.0.as_ref().filter(|bar| !bar.is_finished()) {
                bar.inc(items as u64);
            }
        }

        pub(crate) fn finish(&self) {
            if let Some(bar) = &self.0 {
                bar.finish();
            }
        }

        /// Whether nothing will be drawn (no bar, or stderr is not a terminal).
        #[cfg(test)]
        pub(crate) fn is_hidden(&self) -> bool {
            self.0.as_ref().is_none_or(ProgressBar::is_hidden)
        }
    }
}

#[cfg(not(feature = "progress"))]
mod bar {
    /// The `progress` feature is off: nothing to draw.
    #[derive(Debug, Clone)]
    pub(crate) struct Bar;

    impl Bar {
        pub(crate) fn new(_: bool, _: &str, _: Option<usize>) -> Self {
            Bar
        }
        pub(crate) fn advance(&self, _: usize) {}
        pub(crate) fn finish(&self) {}
    }
}

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::stats::{CallBoard, LiveCall};

/// One call's progress: its bar (if shown) and its line on a dashboard's
/// board of calls in flight (if the pool has a dashboard). A call without
/// either pays a branch per report.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    bar: bar::Bar,
    live: Option<Arc<LiveCall>>,
}

impl Progress {
    /// Progress of a call of `job` over `total` items (`None`: unknown, as
    /// for `imap`), drawn when `enabled`, shown on `board` if there is one.
    pub(crate) fn new(
        enabled: bool,
        job: &'static str,
        total: Option<usize>,
        board: Option<&CallBoard>,
    ) -> Self {
        Progress {
            bar: bar::Bar::new(enabled, job, total),
            live: board.map(|board| board.enter(job, total)),
        }
    }

    pub(crate) fn advance(&self, items: usize) {
        self.bar.advance(items);
        if let Some(live) = &self.live {
            live.done.fetch_add(items as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish();
    }

    /// Whether nothing will be drawn (no bar, or stderr is not a terminal).
    #[cfg(all(test, feature = "progress"))]
    pub(crate) fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }
}

/// What [`PoolBuilder::progress`](crate::PoolBuilder::progress) takes: a
/// `bool`, with the cargo feature `progress` on. Without the feature no type
/// implements it, so `.progress(true)` is a compile error naming the
/// feature rather than a missing method.
#[diagnostic::on_unimplemented(
    message = "progress bars need procpool's cargo feature `progress`",
    label = "`.progress(..)` needs the feature `progress`",
    note = "enable it in Cargo.toml: procpool = {{ version = \"0.1\", features = [\"progress\"] }}"
)]
pub trait ShowProgress {
    /// Whether to show the bars.
    fn show(self) -> bool;
}

#[cfg(feature = "progress")]
impl ShowProgress for bool {
    fn show(self) -> bool {
        self
    }
}

/// Items per second as a person reads it: `850 items/s`, `33.7k items/s`,
/// `1.2M items/s` (indicatif's own `{per_sec}` prints `33,694.7474/s`).
#[cfg_attr(not(feature = "progress"), allow(dead_code))]
fn rate(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() || r <= 0.0 => "- items/s".to_owned(),
        r if r >= 1e6 => format!("{:.1}M items/s", r / 1e6),
        r if r >= 1e4 => format!("{:.0}k items/s", r / 1e3),
        r if r >= 1e3 => format!("{:.1}k items/s", r / 1e3),
        r if r >= 10.0 => format!("{r:.0} items/s"),
        r => format!("{r:.1} items/s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_as_a_person_reads_them() {
        assert_eq!(super::rate(33_694.747_4), "34k items/s");
        assert_eq!(super::rate(3_369.47), "3.4k items/s");
        assert_eq!(super::rate(850.2), "850 items/s");
        assert_eq!(super::rate(2.25), "2.2 items/s");
        assert_eq!(super::rate(1_234_567.0), "1.2M items/s");
        assert_eq!(super::rate(0.0), "- items/s");
        assert_eq!(super::rate(f64::NAN), "- items/s");
    }
}

#[cfg(all(test, feature = "progress"))]
mod bar_tests {
    use super::Progress;
    use std::io::IsTerminal;

    #[test]
    fn drawn_only_on_a_terminal() {
        let bar = Progress::new(true, "crate::job", Some(10), None);
        assert_eq!(bar.is_hidden(), !std::io::stderr().is_terminal());
        bar.advance(10);
        bar.finish();
        assert!(Progress::new(false, "crate::job", Some(10), None).is_hidden());
    }
}
