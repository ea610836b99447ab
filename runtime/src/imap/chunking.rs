//! How an `imap` without a chunk size sizes its chunks: the time per item
//! measured from the chunks that came back ([`Timings`], [`Measure`]) lets
//! the next chunk grow toward [`TARGET_CHUNK_TIME`] ([`ChunkSizer`]).

use std::collections::VecDeque;
use std::time::Duration;

/// How many of the last chunks a [`Measure`] looks at.
const MEASURE_WINDOW: usize = 4;

/// The time per item of the last chunks that came back, latest last.
#[derive(Debug, Default)]
pub(super) struct Timings {
    recent: VecDeque<Duration>,
    count: u64,
}

impl Timings {
    pub(super) fn record(&mut self, per_item: Duration) {
        if self.recent.len() == MEASURE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(per_item);
        self.count += 1;
    }

    /// What the sizer goes by; `None` before any chunk came back.
    pub(super) fn measure(&self) -> Option<Measure> {
        Some(Measure {
            per_item: self.recent.iter().copied().min()?,
            count: self.count,
        })
    }
}

/// The time per item of the chunks that came back last: the least over the
/// last [`MEASURE_WINDOW`]. A chunk is timed from the moment its first item
/// was pulled from the input (so a slow input counts as slow items) until
/// its results were decoded. That includes the wait behind the chunk
/// queued before it on its worker, which only ever adds: a small chunk
/// queued behind a large one looks slow per item, and taken alone it
/// shrank the next chunks to a few hundred items for no reason (measured:
/// 16 384 down to 179). The least of the last few is a chunk that waited
/// little, and a change in the items' own time still shows within a few.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Measure {
    per_item: Duration,
    /// Chunks timed so far: a chunk grows once per new measure.
    count: u64,
}

/// The time per chunk that adaptive chunks aim at, as a [`Measure`] counts
/// it: with the wait behind the chunk queued before it, so about half of it
/// is the chunk's own run. Long enough that per-message costs (tens of µs)
/// fade, short enough that results keep coming and the last chunks end
/// together; an item this slow or slower travels alone. Measured on
/// `imap_unordered` of 10⁵ trivial items (2 workers, medians of 101 runs
/// on a loaded machine): 4 ms made chunks of up to 27 000 items and took
/// 1.3-1.5 times as long as `chunksize(1000)`; 0.5 to 2 ms took 1.0-1.25
/// times as long.
pub(super) const TARGET_CHUNK_TIME: Duration = Duration::from_millis(2);

/// The most items an adaptive chunk takes, whatever their size: 512 KiB of
/// `u64`, as the pool's byte cut for chunks it sizes.
const MAX_ADAPTIVE_ITEMS: usize = 1 << 16;

/// How an `imap` cuts its input into chunks; the pool chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// Exactly this many items per chunk (the caller's `chunksize`).
    Fixed(usize),
    /// Sized from measured times ([`ChunkSizer`]), with each chunk's input
    /// cut once it reaches `max_bytes`.
    Adaptive {
        /// Where a chunk's encoded input is cut.
        max_bytes: usize,
    },
}

/// How many items go into the next chunk.
///
/// Fixed when the caller chose (Python's meaning of `chunksize`).
/// Otherwise adaptive: the first chunks hold one item each, so the first
/// results come at once and an endless or slow input works; then each new
/// [`Measure`] lets the next chunk double, up to as many items as fit in
/// [`TARGET_CHUNK_TIME`] at the measured time per item (so slow items stay
/// at one per chunk, and once items turn slower the next chunk shrinks at
/// once), and at most [`MAX_ADAPTIVE_ITEMS`]. Its input is cut at the
/// pool's byte limit (as `map`'s chunks are), and a chunk whose input turns
/// slow while it fills is sent with what it has (`Imap::top_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkSizer {
    pub(super) size: usize,
    pub(super) adaptive: bool,
    /// Where an adaptive chunk's encoded input is cut.
    pub(super) max_bytes: usize,
    /// The measure count the size last grew on.
    grown_on: u64,
}

impl ChunkSizer {
    pub(super) fn new(chunking: Chunking) -> Self {
        let (size, adaptive, max_bytes) = match chunking {
            Chunking::Fixed(size) => (size.max(1), false, usize::MAX),
            Chunking::Adaptive { max_bytes } => (1, true, max_bytes),
        };
        ChunkSizer {
            size,
            adaptive,
            max_bytes,
            grown_on: 0,
        }
    }

    /// The size of the next chunk, given the latest measure.
    pub(super) fn next(&mut self, measure: Option<Measure>) -> usize {
        if let (true, Some(measure)) = (self.adaptive, measure) {
            let fits = if measure.per_item.is_zero() {
                MAX_ADAPTIVE_ITEMS
            } else {
                // Saturates (never wraps) for a tiny per-item time.
                (TARGET_CHUNK_TIME.as_secs_f64() / measure.per_item.as_secs_f64()) as usize
            };
            let mut size = self.size;
            if measure.count > self.grown_on {
                self.grown_on = measure.count;
                size = size.saturating_mul(2);
            }
            self.size = size.min(fits).clamp(1, MAX_ADAPTIVE_ITEMS);
        }
        self.size
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ChunkSizer, Chunking, MAX_ADAPTIVE_ITEMS, MEASURE_WINDOW, Measure, Timings};

    fn adaptive() -> ChunkSizer {
        ChunkSizer::new(Chunking::Adaptive { max_bytes: 1 << 19 })
    }

    fn measure(per_item: Duration, count: u64) -> Option<Measure> {
        Some(Measure { per_item, count })
    }

    #[test]
    fn a_chosen_chunk_size_never_changes() {
        let mut sizer = ChunkSizer::new(Chunking::Fixed(7));
        assert_eq!(sizer.next(None), 7);
        assert_eq!(sizer.next(measure(Duration::from_nanos(1), 5)), 7);
        assert_eq!(sizer.next(measure(Duration::from_secs(1), 6)), 7);
    }

    #[test]
    fn adaptive_chunks_start_at_one_and_double_once_per_measure() {
        let mut sizer = adaptive();
        // Nothing measured yet: one item per chunk, however many are sent.
        assert_eq!(sizer.next(None), 1);
        assert_eq!(sizer.next(None), 1);
        let tiny = Duration::from_nanos(10);
        assert_eq!(sizer.next(measure(tiny, 1)), 2);
        // The same measure again lets nothing grow.
        assert_eq!(sizer.next(measure(tiny, 1)), 2);
        assert_eq!(sizer.next(measure(tiny, 2)), 4);
        let mut size = 4;
        for count in 3..40 {
            size = sizer.next(measure(tiny, count));
        }
        assert_eq!(size, MAX_ADAPTIVE_ITEMS);
        // A zero time per item (a coarse clock) is as tiny as can be.
        assert_eq!(sizer.next(measure(Duration::ZERO, 41)), MAX_ADAPTIVE_ITEMS);
    }

    #[test]
    fn slow_items_stay_alone_and_a_slow_measure_shrinks_the_next_chunk_at_once() {
        let mut sizer = adaptive();
        for count in 1..10 {
            assert_eq!(sizer.next(measure(Duration::from_millis(5), count)), 1);
        }
        let mut sizer = adaptive();
        for count in 1..30 {
            sizer.next(measure(Duration::from_nanos(10), count));
        }
        assert_eq!(sizer.size, MAX_ADAPTIVE_ITEMS);
        // 100 µs per item: 20 fit in the target time.
        assert_eq!(sizer.next(measure(Duration::from_micros(100), 30)), 20);
        // Then it grows back by doubling.
        assert_eq!(sizer.next(measure(Duration::from_nanos(10), 31)), 40);
    }

    #[test]
    fn a_measure_is_the_least_time_per_item_of_the_last_chunks() {
        let ms = Duration::from_millis;
        let mut timings = Timings::default();
        assert_eq!(timings.measure(), None);
        timings.record(ms(3));
        assert_eq!(timings.measure(), measure(ms(3), 1));
        // A chunk that waited behind a large one looks slow: it changes
        // nothing while a quicker one is among the last few.
        timings.record(ms(1));
        timings.record(ms(50));
        assert_eq!(timings.measure(), measure(ms(1), 3));
        // Items that turned slow show once the quick chunk is out of the window.
        for n in 0..MEASURE_WINDOW {
            timings.record(ms(40));
            let least = if n + 2 < MEASURE_WINDOW {
                ms(1)
            } else {
                ms(40)
            };
            assert_eq!(timings.measure().map(|m| m.per_item), Some(least), "{n}");
        }
    }
}
