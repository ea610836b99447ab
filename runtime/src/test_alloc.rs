//! The test binary's allocator: the system's, noting each thread's
//! largest single request, so a test can tell that decoding hostile bytes
//! never allocated by a length it had not checked against its input
//! (`codec::proptests`), and the bytes each thread asked for in all, so a
//! test can count the copies a payload costs (`worker`'s tests). Here rather than there because the codec forbids
//! `unsafe`, and a global allocator is an unsafe trait. It costs a
//! thread-local compare per allocation, in tests only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Noting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

/// A request for `size` bytes, `grown` of them new (all but a realloc's).
fn note(size: usize, grown: usize) {
    // `try_with`: a thread being torn down still allocates.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    let _ = TOTAL.try_with(|total| total.set(total.get() + grown));
}

// SAFETY: every call is forwarded to `System` with its own arguments.
unsafe impl GlobalAlloc for Noting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), layout.size());
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size, new_size.saturating_sub(layout.size()));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Noting = Noting;

/// Runs `f`; the largest single allocation this thread made meanwhile.
pub(crate) fn largest_during(f: impl FnOnce()) -> usize {
    LARGEST.with(|largest| largest.set(0));
    f();
    LARGEST.with(Cell::get)
}

/// Runs `f`; the bytes this thread allocated meanwhile (a realloc counts
/// what it grew by).
pub(crate) fn allocated_during(f: impl FnOnce()) -> usize {
    let before = TOTAL.with(Cell::get);
    f();
    TOTAL.with(Cell::get) - before
}
