//! A reply read where its worker wrote it ([`InPlace`]): only by raw
//! copies into this process's own memory, each range checked against the
//! reply's length, which was checked against the region's view.

use super::{CopyFailed, Region, outside};

/// A reply still in the region its worker wrote it in: `len` bytes at
/// `at`, within this process's view. Read only by raw copies into this
/// process's own memory (see [`Region`]): a decoder copies each value
/// straight into the value's own storage, with no private copy of the
/// whole reply first. Every range is checked against the reply's length,
/// which was checked against the view.
pub(crate) struct InPlace<'a> {
    pub(super) region: &'a Region,
    pub(super) at: usize,
    pub(super) len: usize,
}

/// A number a reply may hold raw: any bit pattern is a valid value, and
/// every byte of a value is part of it.
///
/// # Safety
/// Every bit pattern of `size_of::<Self>()` bytes is a valid `Self`, and
/// `Self` has no padding bytes.
pub(crate) unsafe trait Word: Copy + 'static {}

/// The bytes of `words`, in memory order: what a vector of numbers is sent
/// as on a little-endian machine, copied whole, not number by number.
pub(crate) fn word_bytes<W: Word>(words: &[W]) -> &[u8] {
    // SAFETY: `words` is `size_of_val(words)` initialised bytes (a `Word`
    // has no padding), readable as `u8` (alignment 1) for as long as the
    // borrow of `words`, which the result keeps.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), size_of_val(words)) }
}
// SAFETY: integers and floats have no invalid bit patterns.
unsafe impl Word for u64 {}
// SAFETY: as above.
unsafe impl Word for i64 {}
// SAFETY: as above.
unsafe impl Word for u32 {}
// SAFETY: as above.
unsafe impl Word for i32 {}
// SAFETY: as above.
unsafe impl Word for f64 {}
// SAFETY: as above.
unsafe impl Word for f32 {}
// SAFETY: as above.
unsafe impl Word for usize {}
// SAFETY: as above.
unsafe impl Word for isize {}

impl<'a> InPlace<'a> {
    /// Bytes `at..at + len` of `region`, if they lie in its view.
    pub(crate) fn new(region: &'a Region, at: usize, len: usize) -> Result<Self, CopyFailed> {
        if !region.covers(at, len) {
            return Err(CopyFailed::Outside(
                outside(at, len, region.size).to_string(),
            ));
        }
        Ok(InPlace { region, at, len })
    }

    /// The reply's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The start of `offset..offset + len` in the region, if that range
    /// lies in the reply.
    fn start(&self, offset: usize, len: usize) -> Result<usize, CopyFailed> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.at + offset),
            _ => Err(CopyFailed::Outside(format!(
                "{len} bytes at {offset} of a reply of {}",
                self.len
            ))),
        }
    }

    /// Appends a copy of the reply's bytes `offset..offset + len` to `into`
    /// (see [`Region::copy_out`]).
    pub(crate) fn append(
        &self,
        offset: usize,
        len: usize,
        into: &mut Vec<u8>,
    ) -> Result<(), CopyFailed> {
        let at = self.start(offset, len)?;
        #[cfg(test)]
        super::COPIED_OUT.with(|copied| copied.set(copied.get() + len));
        self.region.copy_out(at, len, into)
    }

    /// Up to `N` bytes at `offset` (fewer where the reply ends), in a
    /// private array: for a header or a length in front of a value.
    pub(crate) fn peek<const N: usize>(&self, offset: usize) -> ([u8; N], usize) {
        let mut out = [0u8; N];
        let len = self.len.saturating_sub(offset).min(N);
        if let Ok(at) = self.start(offset, len) {
            // SAFETY: `at..at + len` lies in the region's mapping (`start`
            // checked it against the reply, which `new` checked against
            // the view); the destination is a private array of `N >= len`
            // bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.region.base.as_ptr().add(at),
                    out.as_mut_ptr(),
                    len,
                );
            }
            return (out, len);
        }
        (out, 0)
    }

    /// Appends `count` little-endian numbers at `offset` to `into`, copied
    /// straight into its storage. `None`, with nothing appended, where the
    /// wire width (`width`) is not `W`'s own or the machine is big-endian:
    /// the caller decodes them another way.
    pub(crate) fn append_words<W: Word>(
        &self,
        offset: usize,
        count: usize,
        width: usize,
        into: &mut Vec<W>,
    ) -> Option<Result<(), CopyFailed>> {
        if width != std::mem::size_of::<W>() || cfg!(target_endian = "big") {
            return None;
        }
        let Some(len) = count.checked_mul(width) else {
            return Some(Err(CopyFailed::NoMemory(usize::MAX)));
        };
        Some(self.append_words_at(offset, count, len, into))
    }

    fn append_words_at<W: Word>(
        &self,
        offset: usize,
        count: usize,
        len: usize,
        into: &mut Vec<W>,
    ) -> Result<(), CopyFailed> {
        let at = self.start(offset, len)?;
        into.try_reserve(count)
            .map_err(|_| CopyFailed::NoMemory(len))?;
        #[cfg(test)]
        super::COPIED_OUT.with(|copied| copied.set(copied.get() + len));
        let old = into.len();
        // SAFETY: the source lies in the region's mapping (checked by
        // `start`); the destination is the spare capacity of `into`, room
        // for `count` values of `W` = `len` bytes (reserved above, widths
        // equal), private memory that cannot overlap the shared mapping.
        // Any bytes are a valid `W` (`Word`'s contract), so every value up
        // to the new length is initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.base.as_ptr().add(at),
                into.as_mut_ptr().add(old).cast::<u8>(),
                len,
            );
            into.set_len(old + count);
        }
        Ok(())
    }
}
