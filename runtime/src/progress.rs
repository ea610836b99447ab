//! An optional progress bar for long calls (cargo feature `progress`).
//!
//! Without the feature this is a zero-sized no-op, so the pool's code has no
//! `cfg` of its own. With it, bars go to stderr through `indicatif`, which
//! draws nothing when stderr is not a terminal (pipes, CI logs, tests).

#[cfg(feature = "progress")]
mod bar {
    use indicatif::{ProgressBar, ProgressStyle};

    /// Done/total, rate and ETA for one call.
    #[derive(Debug, Clone)]
    pub(crate) struct Progress(Option<ProgressBar>);

    impl Progress {
        /// A bar for `job` over `total` items (`None`: unknown, as for `imap`).
        pub(crate) fn new(enabled: bool, job: &str, total: Option<usize>) -> Self {
            if !enabled {
                return Progress(None);
            }
            let template = match total {
                Some(_) => "{msg} [{bar:40}] {pos}/{len} items, {per_sec}, ETA {eta}",
                None => "{msg} {spinner} {pos} items, {per_sec}",
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = match total {
                Some(total) => ProgressBar::new(total as u64),
                None => ProgressBar::no_length(),
            }
            .with_style(style)
            .with_message(job.rsplit("::").next().unwrap_or(job).to_owned());
            // Drawn now, at 0, rather than when the first item finishes.
            bar.tick();
            Progress(Some(bar))
        }

        pub(crate) fn advance(&self, items: usize) {
            if let Some(bar) = &self.0 {
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
    pub(crate) struct Progress;

    impl Progress {
        pub(crate) fn new(_: bool, _: &str, _: Option<usize>) -> Self {
            Progress
        }
        pub(crate) fn advance(&self, _: usize) {}
        pub(crate) fn finish(&self) {}
    }
}

pub(crate) use bar::Progress;

#[cfg(all(test, feature = "progress"))]
mod tests {
    use super::Progress;
    use std::io::IsTerminal;

    #[test]
    fn drawn_only_on_a_terminal() {
        let bar = Progress::new(true, "crate::job", Some(10));
        assert_eq!(bar.is_hidden(), !std::io::stderr().is_terminal());
        bar.advance(10);
        bar.finish();
        assert!(Progress::new(false, "crate::job", Some(10)).is_hidden());
    }
}
