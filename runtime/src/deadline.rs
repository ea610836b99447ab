//! Deadlines from durations a user gave: the one place a duration is
//! added to an `Instant`.
//!
//! `Instant::now() + d` panics when the sum does not fit (`Duration::MAX`,
//! or anything past a few hundred years), and a user's timeout may be
//! anything: `Duration::MAX` is the natural way to say "no limit". Every
//! deadline is made here, with `checked_add`, and one that cannot be
//! represented is no deadline at all.

use std::time::{Duration, Instant};

/// The instant `timeout` from now, or `None` (no deadline) when it lies
/// beyond what an `Instant` can hold, as `Duration::MAX` does.
pub(crate) fn after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Like [`after`], for waits that take an `Instant` and no `None`: a
/// deadline that cannot be represented becomes one that no wait reaches
/// (about a century from now, or the latest instant there is).
pub(crate) fn after_or_never(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_max_is_no_deadline_and_short_ones_are_kept() {
        assert_eq!(after(Duration::MAX), None);
        let soon = after(Duration::from_secs(1)).unwrap();
        assert!(soon > Instant::now());
        assert!(after_or_never(Duration::MAX) > Instant::now() + Duration::from_secs(3600 * 24));
        let short = after_or_never(Duration::from_millis(10));
        assert!(short <= Instant::now() + Duration::from_secs(1));
    }
}
