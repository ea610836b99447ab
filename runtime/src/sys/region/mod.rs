//! The shared memory a worker and its parent exchange payloads in: a
//! sealed memfd per direction, mapped on both sides (see [`Region`] for the
//! access rules and the memory-ordering contract).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fcntl_get_seals, fstat, ftruncate};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

use super::describe_io;

mod in_place;

pub(crate) use in_place::{InPlace, Word, word_bytes};

/// A mapped memfd shared with one worker: grown on demand, never shrunk.
///
/// Each worker gets two at its start (one for requests, one for replies)
/// and keeps them for life, so a payload costs one copy into pages that are
/// already there instead of a new file and a page fault per 4 KiB.
///
/// Regions are sealed against shrinking (and against further seals) before
/// anyone else sees them, and a region from elsewhere is mapped only with
/// that seal: reading a page that the other side cut off would raise
/// `SIGBUS` in the reader. Either side may grow the file; the other maps
/// the new size when it is told a payload reaches past its view.
///
/// # Access, and memory ordering
///
/// The other process can write every byte of a region at any moment, and
/// a worker may be compromised. Rust's model calls a reference to memory
/// that someone else writes meanwhile a data race: the compiler may read a
/// length twice, once for its bounds check and once for its use. So the
/// caller's process never holds a reference into a region:
/// - bytes go in and out only by raw copies ([`Region::write_at`],
///   [`Region::copy_out`]), bounds-checked against this process's own
///   view; what is copied out is private and untrusted, and decoded as such
///   (a region written meanwhile yields garbage, which decodes to an error,
///   never to undefined behaviour);
/// - the header words both sides update while the other runs
///   ([`Region::head`]) are `AtomicU64`s. A writer fills bytes, then stores
///   the counter that covers them with `Release`; a reader loads that
///   counter with `Acquire`, then copies. The answer on the socket (a
///   system call on each side) orders everything written before it too.
///   Counters are checked against each other and the view before use.
///
/// The one exception is a worker reading its request region in place
/// ([`Region::trusted_bytes`]): only its parent (the program) writes that
/// region, never while the worker runs the task, and the mapping is not
/// inherited by processes the worker's jobs fork (`MADV_DONTFORK`).
pub(crate) struct Region {
    fd: OwnedFd,
    base: NonNull<u8>,
    size: usize,
    /// The mapping is left out of processes this one forks.
    private_to_forks: bool,
}

// SAFETY: the mapping is memory owned by this value, reached only through
// raw copies and atomics (see the type's docs); moving it to another thread
// moves that ownership.
unsafe impl Send for Region {}
// SAFETY: `&self` methods only load atomics and copy bytes out by raw
// pointer, which other threads may do at once.
unsafe impl Sync for Region {}

/// What a new region holds before it first grows.
const FIRST_SIZE: usize = 64 << 10;

/// The words at the start of every region (see [`Region::head`]).
pub(crate) const HEAD_WORDS: usize = 8;
const HEAD_BYTES: usize = HEAD_WORDS * 8;

impl Region {
    /// A new zero-filled region, writable by this process, sealed so that
    /// nobody can shrink it.
    pub(crate) fn create() -> std::io::Result<Region> {
        let fd = rustix::fs::memfd_create(
            "procpool-region",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        ftruncate(&fd, FIRST_SIZE as u64)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        Region::map(fd, FIRST_SIZE, false).map_err(Into::into)
    }

    /// Maps a region received from another process. Refused (with the
    /// reason) unless it is a memfd sealed against shrinking. With
    /// `private_to_forks`, processes this one forks do not inherit the
    /// mapping (a worker's, so that a job's fork cannot write it).
    pub(crate) fn open(fd: OwnedFd, private_to_forks: bool) -> Result<Region, String> {
        let seals =
            fcntl_get_seals(&fd).map_err(|err| format!("a region that is not a memfd ({err})"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err("a region that is not sealed against shrinking".into());
        }
        let size = file_size(&fd)?;
        if size < HEAD_BYTES {
            return Err(format!(
                "a region of {size} bytes, too small for its header"
            ));
        }
        Region::map(fd, size, private_to_forks)
            .map_err(|err| format!("cannot map a region: {}", describe_io(&err.into())))
    }

    fn map(fd: OwnedFd, size: usize, private_to_forks: bool) -> Result<Region, Errno> {
        // SAFETY: a new shared mapping of a file sealed against shrinking, so
        // every page of it stays backed while mapped.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or(Errno::NOMEM)?;
        let region = Region {
            fd,
            base,
            size,
            private_to_forks,
        };
        region.keep_from_forks()?;
        Ok(region)
    }

    /// Applies `MADV_DONTFORK` to the mapping, if asked for.
    fn keep_from_forks(&self) -> Result<(), Errno> {
        if !self.private_to_forks {
            return Ok(());
        }
        // SAFETY: advice on exactly this value's mapping; it changes only
        // what a fork inherits, not this process's view.
        unsafe {
            rustix::mm::madvise(
                self.base.as_ptr().cast(),
                self.size,
                rustix::mm::Advice::LinuxDontFork,
            )
        }
    }

    /// The bytes mapped here.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.size
    }

    /// Makes at least `len` bytes writable here, growing the file (by at
    /// least half again, so a growing payload does not remap each time).
    /// On failure nothing changed: the region and its view are as before.
    #[inline]
    pub(crate) fn reserve(&mut self, len: usize) -> std::io::Result<()> {
        if len <= self.size {
            return Ok(());
        }
        self.grow(len)
    }

    #[cold]
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        let file = file_size(&self.fd).map_err(std::io::Error::other)?;
        if file < len {
            let grown = len
                .max(file + file / 2)
                .checked_next_multiple_of(1 << 16)
                .ok_or_else(|| std::io::Error::from(Errno::FBIG))?;
            // The file may have grown even where the mapping then cannot
            // (out of address space): harmless, as the view stays and the
            // other side maps only what it is told about.
            ftruncate(&self.fd, grown as u64)?;
        }
        self.remap()
    }

    /// Makes the first `len` bytes readable here, when the other side says
    /// it wrote that far: fails if the file is not that long.
    pub(crate) fn view(&mut self, len: usize) -> Result<(), String> {
        if len <= self.size {
            return Ok(());
        }
        if file_size(&self.fd)? < len {
            return Err(format!(
                "{len} bytes claimed in a shared region of {}",
                self.size
            ));
        }
        self.remap()
            .map_err(|err| format!("cannot map a shared region: {}", describe_io(&err)))
    }

    /// Maps the whole file, which has grown.
    fn remap(&mut self) -> std::io::Result<()> {
        let size = file_size(&self.fd).map_err(std::io::Error::other)?;
        // SAFETY: moves this value's own mapping; no reference into the old
        // one exists (see the type's docs). The file is at least `size`
        // long and never shrinks. On failure the old mapping stays.
        let base = unsafe {
            rustix::mm::mremap(
                self.base.as_ptr().cast(),
                self.size,
                size,
                rustix::mm::MremapFlags::MAYMOVE,
            )?
        };
        self.base = NonNull::new(base.cast::<u8>()).ok_or(Errno::NOMEM)?;
        self.size = size;
        self.keep_from_forks()?;
        Ok(())
    }

    /// The file descriptor, to send the region to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `at..at + len` lies in this process's view.
    fn covers(&self, at: usize, len: usize) -> bool {
        at.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Copies `bytes` into the region at `at` (which [`Region::reserve`]
    /// made room for). The other process may read or write the same bytes
    /// meanwhile: it then sees garbage, which it must check for anyway.
    #[inline(always)]
    pub(crate) fn write_at(&mut self, at: usize, bytes: &[u8]) -> std::io::Result<()> {
        if !self.covers(at, bytes.len()) {
            return Err(outside(at, bytes.len(), self.size));
        }
        // SAFETY: the destination lies in this value's mapping (checked
        // above).
        unsafe { write_raw(self.base.as_ptr().add(at), bytes) };
        Ok(())
    }

    /// Bytes `at..at + len`, to be written a value at a time ([`Span`]),
    /// with the header words at hand.
    pub(crate) fn span(&mut self, at: usize, len: usize) -> std::io::Result<Span<'_>> {
        if !self.covers(at, len) {
            return Err(outside(at, len, self.size));
        }
        Ok(Span {
            // SAFETY: `at` is within the mapping (checked above).
            start: unsafe { self.base.add(at) },
            len,
            head: self.head(),
        })
    }

    /// Moves `len` bytes at `from` to `to`, inside the region.
    pub(crate) fn move_within(
        &mut self,
        from: usize,
        len: usize,
        to: usize,
    ) -> std::io::Result<()> {
        if !self.covers(from, len) || !self.covers(to, len) {
            return Err(outside(from.max(to), len, self.size));
        }
        #[cfg(test)]
        WRITTEN.with(|written| written.set(written.get() + len));
        // SAFETY: both ranges lie in this value's mapping (checked above);
        // `ptr::copy` allows them to overlap.
        unsafe {
            let base = self.base.as_ptr();
            std::ptr::copy(base.add(from), base.add(to), len);
        }
        Ok(())
    }

    /// Appends a private copy of the region's bytes `at..at + len` to
    /// `into` (the other process may be writing them: the copy is then
    /// garbage, to be found out by whoever decodes it). Fails, with nothing
    /// appended, if the range is outside this process's view or the memory
    /// for the copy cannot be had.
    pub(crate) fn copy_out(
        &self,
        at: usize,
        len: usize,
        into: &mut Vec<u8>,
    ) -> Result<(), CopyFailed> {
        if !self.covers(at, len) {
            return Err(CopyFailed::Outside(outside(at, len, self.size).to_string()));
        }
        into.try_reserve(len)
            .map_err(|_| CopyFailed::NoMemory(len))?;
        let old = into.len();
        // SAFETY: the source lies in this value's mapping (checked above),
        // the destination is `len` reserved bytes of `into`'s spare
        // capacity, and the two cannot overlap. Every byte up to the new
        // length is written before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(at),
                into.as_mut_ptr().add(old),
                len,
            );
            into.set_len(old + len);
        }
        Ok(())
    }

    /// The region's first `len` bytes, read in place.
    ///
    /// # Safety
    /// No other process writes these bytes while the slice lives: a
    /// worker's request region, which only its parent writes, and never
    /// while the worker runs the task those bytes belong to.
    pub(crate) unsafe fn trusted_bytes(&self, len: usize) -> Result<&[u8], String> {
        if !self.covers(0, len) {
            return Err(outside(0, len, self.size).to_string());
        }
        // SAFETY: `base` maps `size >= len` readable bytes for as long as
        // `self` lives; the caller vouches that nobody writes them meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr(), len) })
    }

    /// The first [`HEAD_WORDS`] 8-byte words, for counters both processes
    /// read and write while the other runs. Every region has them.
    #[inline]
    pub(crate) fn head(&self) -> &[std::sync::atomic::AtomicU64; HEAD_WORDS] {
        // SAFETY: every region maps at least HEAD_BYTES (`create` makes
        // more, `open` refuses less), page-aligned; atomics may be shared
        // with another process (every access to these words, on both
        // sides, is atomic), and the mapping lives as long as the borrow.
        unsafe {
            &*self
                .base
                .as_ptr()
                .cast::<[std::sync::atomic::AtomicU64; HEAD_WORDS]>()
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread copied out of replies in place ([`InPlace`]), for
    /// tests that pin how often a reply is copied out.
    static COPIED_OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Replies this thread copied out whole ([`ReplyCopy::fill_from`]).
    static WHOLE_COPIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Replies this thread copied out whole into a private buffer so far, to
/// be decoded from there (tests only).
#[cfg(test)]
pub(crate) fn whole_replies_copied_here() -> usize {
    WHOLE_COPIES.with(std::cell::Cell::get)
}

/// Bytes this thread copied out of replies in place so far (tests only).
#[cfg(test)]
pub(crate) fn bytes_copied_out_here() -> usize {
    COPIED_OUT.with(std::cell::Cell::get)
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread wrote into regions ([`Region::write_at`],
    /// [`Region::move_within`]), for tests that pin how often a payload is
    /// copied in.
    static WRITTEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A range of a region written one small value at a time ([`Span::put`]):
/// for a worker writing numbers into its reply region, where the checks of
/// [`Region::write_at`] and the loads of the region's fields around each
/// value were most of the time per item. It holds the region borrowed, so
/// the mapping cannot grow (and move) while it lives, and each write is
/// checked against the span alone.
pub(crate) struct Span<'a> {
    start: NonNull<u8>,
    len: usize,
    head: &'a [std::sync::atomic::AtomicU64; HEAD_WORDS],
}

impl Span<'_> {
    /// The region's header words ([`Region::head`]).
    #[inline(always)]
    pub(crate) fn head(&self) -> &[std::sync::atomic::AtomicU64; HEAD_WORDS] {
        self.head
    }

    /// Copies `bytes` to `offset` in the span: `false`, with nothing
    /// written, where they would reach past its end.
    #[inline(always)]
    pub(crate) fn put(&mut self, offset: usize, bytes: &[u8]) -> bool {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        // SAFETY: the destination lies in the span (checked above), which
        // lies in the region's mapping (checked by `Region::span`) and stays
        // mapped while the region is borrowed.
        unsafe { write_raw(self.start.as_ptr().add(offset), bytes) };
        true
    }
}

/// Copies `bytes` to `target` in a region's mapping, counting them
/// (tests): a raw copy, which makes no reference into the region.
///
/// # Safety
/// `target..target + bytes.len()` lies in a live mapping of a region
/// (which `bytes`, private memory, cannot overlap).
#[inline(always)]
unsafe fn write_raw(target: *mut u8, bytes: &[u8]) {
    #[cfg(test)]
    WRITTEN.with(|written| written.set(written.get() + bytes.len()));
    // SAFETY: the caller's contract. A fixed-size copy for the usual one
    // number per item: a `memcpy` call per item was a tenth of a worker's
    // time in a map of them.
    unsafe {
        match <&[u8; 8]>::try_from(bytes) {
            Ok(word) => target.cast::<[u8; 8]>().write_unaligned(*word),
            Err(_) => std::ptr::copy_nonoverlapping(bytes.as_ptr(), target, bytes.len()),
        }
    }
}

/// Bytes this thread wrote into any region so far (tests only).
#[cfg(test)]
pub(crate) fn bytes_written_here() -> usize {
    WRITTEN.with(std::cell::Cell::get)
}

/// A private copy of bytes out of a [`Region`] (a reply), in memory mapped
/// apart from the allocator's heap and kept from one copy to the next.
///
/// Apart from the heap because a large buffer kept there (glibc serves
/// even 16 MiB from the heap once its mmap threshold has risen) broke the
/// heap's reuse of the memory freed around it: measured, an echo of
/// 16 MiB took 19 ms instead of 11 ms after a large map had run in the same
/// process, each call faulting its pages in again. Kept, so that a reply
/// costs no page faults; [`ReplyCopy::fill_from`] frees it when replies shrink.
pub(crate) struct ReplyCopy {
    /// Null until the first copy; then a private anonymous mapping of
    /// `capacity` bytes, owned by this value.
    base: *mut u8,
    capacity: usize,
    len: usize,
}

// SAFETY: the mapping is memory owned by this value alone (private,
// anonymous, never shared with another process); moving the value moves
// that ownership.
unsafe impl Send for ReplyCopy {}

/// Replies up to this size keep their copy's memory whatever comes next.
const KEEP_COPY: usize = 1 << 20;

impl Default for ReplyCopy {
    fn default() -> Self {
        ReplyCopy {
            base: std::ptr::null_mut(),
            capacity: 0,
            len: 0,
        }
    }
}

impl ReplyCopy {
    /// Replaces the copy with the bytes of `reply` (see [`Region::copy_out`]
    /// for what the other process may do meanwhile). Fails, holding
    /// nothing, if the memory cannot be had.
    pub(crate) fn fill_from(&mut self, reply: &InPlace<'_>) -> Result<(), CopyFailed> {
        #[cfg(test)]
        WHOLE_COPIES.with(|copies| copies.set(copies.get() + 1));
        let (region, at, len) = (reply.region, reply.at, reply.len);
        self.len = 0;
        // `InPlace` holds only ranges in the region's view; checked again
        // here, where the copy relies on it.
        if !region.covers(at, len) {
            return Err(CopyFailed::Outside(
                outside(at, len, region.size).to_string(),
            ));
        }
        if self.capacity > KEEP_COPY && len < self.capacity / 4 {
            // Large replies stopped coming: do not keep their memory.
            self.release();
        }
        if len > self.capacity {
            self.grow(len).map_err(|_| CopyFailed::NoMemory(len))?;
        }
        if len > 0 {
            // SAFETY: the source lies in the region's mapping (checked
            // above); the destination is this value's own mapping of at
            // least `len` bytes; they cannot overlap (one is shared, the
            // other private and anonymous).
            unsafe { std::ptr::copy_nonoverlapping(region.base.as_ptr().add(at), self.base, len) };
        }
        self.len = len;
        Ok(())
    }

    /// Holds nothing (keeping its memory).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes copied last.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.base.is_null() {
            return &[];
        }
        // SAFETY: `base` maps `capacity >= len` bytes of this process's own
        // memory, written by `fill_from` and not written again while borrowed.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// Makes room for `len` bytes (more, rounded to whole 64 KiB, so a
    /// slowly growing reply does not remap every time).
    fn grow(&mut self, len: usize) -> Result<(), Errno> {
        let capacity = len.checked_next_multiple_of(1 << 16).ok_or(Errno::NOMEM)?;
        let base = if self.base.is_null() {
            // SAFETY: a new private anonymous mapping, owned by this value.
            unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    capacity,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE,
                )?
            }
        } else {
            // SAFETY: moves this value's own mapping (its content need not
            // be kept: it is overwritten next); no borrow of it outlives
            // `&mut self`. On failure the old mapping stays.
            unsafe {
                rustix::mm::mremap(
                    self.base.cast(),
                    self.capacity,
                    capacity,
                    rustix::mm::MremapFlags::MAYMOVE,
                )?
            }
        };
        self.base = base.cast();
        self.capacity = capacity;
        Ok(())
    }

    fn release(&mut self) {
        if !self.base.is_null() {
            // SAFETY: unmaps exactly this value's own mapping; no borrow of
            // it outlives `&mut self`.
            let _ = unsafe { munmap(self.base.cast(), self.capacity) };
        }
        // Field by field: assigning a new value would drop this one, and
        // run this again.
        self.base = std::ptr::null_mut();
        self.capacity = 0;
        self.len = 0;
    }
}

impl Drop for ReplyCopy {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why [`Region::copy_out`] copied nothing.
#[derive(Debug)]
pub(crate) enum CopyFailed {
    /// The range is not in the region (described): the other side lied.
    Outside(String),
    /// This process has no memory for a copy of this many bytes.
    NoMemory(usize),
}

impl std::fmt::Display for CopyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyFailed::Outside(why) => f.write_str(why),
            CopyFailed::NoMemory(len) => write!(
                f,
                "out of memory for a private copy of {len} bytes of shared memory"
            ),
        }
    }
}

/// A range that lies outside a region's view.
#[cold]
fn outside(at: usize, len: usize, size: usize) -> std::io::Error {
    std::io::Error::other(format!(
        "{len} bytes at {at} are outside a shared region of {size} bytes"
    ))
}

/// The size of the file behind `fd`.
fn file_size(fd: &OwnedFd) -> Result<usize, String> {
    let size = fstat(fd)
        .map_err(|err| format!("cannot stat a shared region: {err}"))?
        .st_size;
    usize::try_from(size).map_err(|_| "a region of negative size".to_owned())
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this value's mapping; no borrow of it
        // outlives `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.size) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes)", self.size)
    }
}
