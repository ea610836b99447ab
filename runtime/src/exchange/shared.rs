//! `Shared<T>` and `Shared<[T]>`: read-only values in sealed memfds.
//!
//! The bytes are written once, into a memfd sealed against writes and
//! resizing; a handle carries only its descriptor. A slice of plain items
//! is read in place from the mapping (sound: nobody can write a sealed
//! memfd); a value is decoded from it once per process that receives it
//! and kept in a per-worker cache keyed by the memfd's inode.
//!
//! The cache must not outlive the creator's handles: each `Shared` comes
//! with one end of a socket pair whose other end only the creating process
//! holds. When the creator drops its last handle, that end closes, and a
//! worker evicts the entry at once: an idle worker waits on those ends
//! beside its socket (`cached_liveness`), and every worker sweeps before a
//! task (`sweep_cache`).

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::PollFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::wire::{self, Carry};
use crate::Error;
use crate::backend::Attachment;
use crate::codec::{ChunkReader, ChunkWriter};
use crate::sys::{self, Ready, Sealed};

mod private {
    pub trait Sealed {}
}

/// Items a [`Shared<[T]>`](Shared) can hold and read in place: numbers,
/// `bool`, `char` and fixed arrays of them. Implemented by procpool only.
///
/// # Safety
/// Every value of the type is its bytes (no padding, no pointers), and
/// every bit pattern that [`valid`](Plain::valid) accepts is a value.
pub unsafe trait Plain: Copy + Send + Sync + 'static + private::Sealed {
    /// Whether `bytes` (a whole number of items) are all values of the
    /// type: true for numbers; checked for `bool` and `char`.
    #[doc(hidden)]
    fn valid(bytes: &[u8]) -> bool {
        let _ = bytes;
        true
    }
}

macro_rules! plain {
    ($($t:ty)*) => {$(
        impl private::Sealed for $t {}
        // SAFETY: a primitive number: no padding, every bit pattern valid.
        unsafe impl Plain for $t {}
    )*};
}
plain!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64);

impl private::Sealed for bool {}
// SAFETY: one byte; `valid` accepts 0 and 1 only.
unsafe impl Plain for bool {
    fn valid(bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| b <= 1)
    }
}

impl private::Sealed for char {}
// SAFETY: four bytes; `valid` accepts Unicode scalar values only.
unsafe impl Plain for char {
    fn valid(bytes: &[u8]) -> bool {
        bytes.chunks_exact(4).all(|c| {
            <[u8; 4]>::try_from(c).is_ok_and(|c| char::from_u32(u32::from_ne_bytes(c)).is_some())
        })
    }
}

impl<T: Plain, const N: usize> private::Sealed for [T; N] {}
// SAFETY: an array of plain items has no padding, and is valid when each
// item is, which `valid` checks over the same bytes.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {
    fn valid(bytes: &[u8]) -> bool {
        T::valid(bytes)
    }
}

/// Read-only data every process reads without its own copy: Python's
/// `shared_memory`, `Value` and `Array` for data written once.
///
/// - [`Shared::from_slice`] makes a `Shared<[T]>` of plain items (numbers,
///   `bool`, `char`, fixed arrays of them): workers read it in place, from
///   memory mapped from a sealed memfd, so a 256 MiB table costs each
///   worker page tables, not 256 MiB.
/// - [`Shared::new`] makes a `Shared<T>` of any serde value: its encoded
///   bytes are shared the same way, and each worker process decodes them
///   once, then reuses the value in every later task.
///
/// Either way, a task carries only a descriptor: the bytes cross to a
/// worker once, not with every call. `Shared` dereferences to `T` (or
/// `[T]`) in the caller and in jobs, and clones are cheap.
///
/// ```
/// use procpool::{pool_job, Pool, Shared};
///
/// #[pool_job]
/// fn lookup(table: Shared<[u64]>, i: usize) -> u64 {
///     table[i]
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let squares: Vec<u64> = (0..1000).map(|i| i * i).collect();
/// let table = Shared::from_slice(&squares)?;
/// let pool = Pool::with_processes(2)?;
/// let found = pool.starmap(lookup, [(table.clone(), 3), (table.clone(), 999)])?;
/// assert_eq!(found, [9, 998_001]);
/// # Ok(())
/// # }
/// ```
///
/// The memory is sealed (`F_SEAL_WRITE`, `F_SEAL_SHRINK`, `F_SEAL_GROW`)
/// before any other process sees it, and a process that receives one
/// checks those seals (and, for `bool` and `char`, every item) before
/// reading it, so no process can change it under a reader. It is freed
/// when the last handle in every process is dropped: a worker keeps a
/// `Shared<T>`'s decoded value for its next tasks, and lets go of it as
/// soon as the creating process dropped its last handle (while the worker
/// is idle; after its task, if it is running one). A `Shared` cannot be sent to a
/// cluster pool ([`Error::Misuse`]).
pub struct Shared<T: ?Sized> {
    ptr: NonNull<T>,
    backing: Arc<Backing>,
    _owns: PhantomData<T>,
}

// SAFETY: a `Shared` gives out `&T` only, to whichever thread holds it, and
// what keeps the memory alive (`Backing`) is `Send + Sync`.
unsafe impl<T: ?Sized + Send + Sync> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for Shared<T> {}

/// What keeps a `Shared`'s memory alive, and what travels with it.
struct Backing {
    sealed: Sealed,
    /// The end of the liveness pair that travels; it reads as closed once
    /// the creator dropped its last handle.
    alive: OwnedFd,
    /// The creator's end (only in the creating process).
    _creator: Option<OwnedFd>,
    /// The decoded value of a `Shared<T>` (boxed, so `ptr` stays valid).
    _value: Option<Box<dyn Any + Send + Sync>>,
    kind: u8,
    words: [u64; 2],
}

impl<T: ?Sized> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            ptr: self.ptr,
            backing: Arc::clone(&self.backing),
            _owns: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` points into `backing` (the sealed mapping, or the
        // boxed value), which this handle keeps alive, and nothing writes
        // there: the mapping is sealed, the value is never handed out `mut`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shared").field(&&**self).finish()
    }
}

fn liveness() -> Result<(OwnedFd, OwnedFd), Error> {
    sys::packet_pair().map_err(|err| super::system("cannot create a Shared", err))
}

impl<T: Plain> Shared<[T]> {
    /// Copies `items` once into sealed shared memory.
    pub fn from_slice(items: &[T]) -> Result<Shared<[T]>, Error> {
        // SAFETY: `T: Plain` has no padding, so its items' memory is
        // `size_of_val(items)` initialised bytes, borrowed for this call.
        let bytes =
            unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), size_of_val(items)) };
        let sealed = Sealed::create("procpool-shared", bytes).map_err(|err| {
            super::system(
                &format!("cannot put {} bytes in shared memory", bytes.len()),
                err,
            )
        })?;
        let (creator, alive) = liveness()?;
        Shared::slice_in(sealed, alive, Some(creator)).map_err(Error::Ipc)
    }

    fn slice_in(
        sealed: Sealed,
        alive: OwnedFd,
        creator: Option<OwnedFd>,
    ) -> Result<Shared<[T]>, String> {
        let size = size_of::<T>();
        let bytes = sealed.bytes();
        if size == 0 || !bytes.len().is_multiple_of(size) || align_of::<T>() > 4096 {
            return Err(format!(
                "{} bytes of shared memory are not a slice of `{}`",
                bytes.len(),
                std::any::type_name::<T>()
            ));
        }
        if !T::valid(bytes) {
            return Err(format!(
                "shared memory holds bytes that are not `{}` values",
                std::any::type_name::<T>()
            ));
        }
        let len = bytes.len() / size;
        let ptr = if len == 0 {
            NonNull::slice_from_raw_parts(NonNull::<T>::dangling(), 0)
        } else {
            // The mapping is page-aligned (checked above to suit `T`), and
            // holds `len` valid items (checked above).
            let start = NonNull::from(bytes).cast::<T>();
            NonNull::slice_from_raw_parts(start, len)
        };
        Ok(Shared {
            ptr,
            backing: Arc::new(Backing {
                sealed,
                alive,
                _creator: creator,
                _value: None,
                kind: wire::SHARED_SLICE,
                words: [len as u64, size as u64],
            }),
            _owns: PhantomData,
        })
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Shared<T> {
    /// Encodes `value` once into sealed shared memory (with the same codec
    /// as job arguments), keeping `value` itself for this process.
    pub fn new(value: T) -> Result<Shared<T>, Error> {
        let mut chunk = ChunkWriter::default();
        chunk.push(&value).map_err(|problem| {
            crate::codec::error_for("procpool::Shared", "serialize the value".into(), problem)
        })?;
        if !chunk.take_attached().is_empty() {
            return Err(Error::Misuse(
                "a Shared value cannot hold a Queue, Pipe, Event or Shared handle".into(),
            ));
        }
        let bytes = chunk.finish();
        let sealed = Sealed::create("procpool-shared", &bytes).map_err(|err| {
            super::system(
                &format!("cannot put {} bytes in shared memory", bytes.len()),
                err,
            )
        })?;
        let (creator, alive) = liveness()?;
        Ok(Shared::value_in(
            sealed,
            alive,
            Some(creator),
            Box::new(value),
        ))
    }

    fn value_in(
        sealed: Sealed,
        alive: OwnedFd,
        creator: Option<OwnedFd>,
        value: Box<T>,
    ) -> Shared<T> {
        let ptr = NonNull::from(&*value);
        let len = sealed.bytes().len() as u64;
        Shared {
            ptr,
            backing: Arc::new(Backing {
                sealed,
                alive,
                _creator: creator,
                _value: Some(value),
                kind: wire::SHARED_VALUE,
                words: [len, 0],
            }),
            _owns: PhantomData,
        }
    }
}

impl<T: ?Sized> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let carry = |fd: for<'a> fn(&'a Backing) -> BorrowedFd<'a>| {
            Arc::new(Carry {
                inner: Arc::clone(&self.backing),
                fd,
                sent_to: None,
            }) as Arc<dyn Attachment>
        };
        wire::serialize(
            serializer,
            self.backing.kind,
            vec![
                carry(|backing| backing.sealed.fd()),
                carry(|backing| backing.alive.as_fd()),
            ],
            self.backing.words.to_vec(),
        )
    }
}

/// Handles decoded in this worker process, by memfd identity, until their
/// creator drops its last handle.
static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());

struct Cached {
    file: (u64, u64),
    /// The `Shared`'s type (`T` or `[T]`).
    of: TypeId,
    handle: Box<dyn Any + Send + Sync>,
    /// The liveness end of its `Backing`, to see the creator leave.
    backing: Arc<Backing>,
}

/// Drops the cached handles whose creator dropped its last one; called by a
/// worker before each task, and while it waits for one when a creator let
/// go (see [`cached_liveness`]).
pub(crate) fn sweep_cache() {
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.is_empty() {
        return;
    }
    cache.retain(|cached| {
        matches!(
            sys::wait_for(
                cached.backing.alive.as_fd(),
                PollFlags::empty(),
                std::time::Duration::ZERO
            ),
            Ok(Ready::No)
        )
    });
}

/// Copies of the descriptors that tell when each cached value's creator
/// let go of it (hung up then, see [`sweep_cache`]); none when nothing is
/// cached. For an idle worker, which waits on them beside its socket.
pub(crate) fn cached_liveness() -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
    let cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache
        .iter()
        .map(|cached| cached.backing.alive.try_clone())
        .collect()
}

/// The number of values cached in this process.
pub(crate) fn cached_count() -> usize {
    CACHE.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The handle cached for this memfd and type, if any.
fn cached<S: Clone + Send + Sync + 'static>(file: (u64, u64)) -> Option<S> {
    let cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache
        .iter()
        .find(|cached| cached.file == file && cached.of == TypeId::of::<S>())
        .and_then(|cached| cached.handle.downcast_ref::<S>().cloned())
}

/// Keeps `handle` for the next tasks, in a worker process only (elsewhere
/// the caller's handles decide how long it lives).
fn remember<S: Clone + Send + Sync + 'static>(
    file: (u64, u64),
    handle: &S,
    backing: &Arc<Backing>,
) {
    if crate::worker::process_name().is_none() {
        return;
    }
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache.push(Cached {
        file,
        of: TypeId::of::<S>(),
        handle: Box::new(handle.clone()),
        backing: Arc::clone(backing),
    });
}

/// A received `Shared`: its memfd, the memfd's identity, its liveness
/// end, and its numbers.
type Received = (OwnedFd, (u64, u64), OwnedFd, [u64; 2]);

/// The descriptors of a received `Shared` of `kind`.
fn received<'de, D: Deserializer<'de>>(deserializer: D, kind: u8) -> Result<Received, D::Error> {
    use serde::de::Error;
    let (fds, words) = wire::deserialize(deserializer, kind, 2, 2, "Shared")?;
    let mut fds = fds.into_iter();
    let (Some(memory), Some(alive)) = (fds.next(), fds.next()) else {
        return Err(D::Error::custom("a Shared without its descriptors"));
    };
    let file = sys::file_identity(memory.as_fd()).map_err(D::Error::custom)?;
    Ok((memory, file, alive, [words[0], words[1]]))
}

impl<'de, T: Plain> Deserialize<'de> for Shared<[T]> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (memory, file, alive, words) = received(deserializer, wire::SHARED_SLICE)?;
        if let Some(handle) = cached::<Shared<[T]>>(file) {
            return Ok(handle);
        }
        let sealed = Sealed::open(memory).map_err(D::Error::custom)?;
        let handle = Shared::<[T]>::slice_in(sealed, alive, None).map_err(D::Error::custom)?;
        if handle.backing.words != words {
            return Err(D::Error::custom(format!(
                "a Shared<[{}]> whose memory does not hold what it says",
                std::any::type_name::<T>()
            )));
        }
        remember(file, &handle, &handle.backing);
        Ok(handle)
    }
}

impl<'de, T: Serialize + DeserializeOwned + Send + Sync + 'static> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (memory, file, alive, _) = received(deserializer, wire::SHARED_VALUE)?;
        if let Some(handle) = cached::<Shared<T>>(file) {
            return Ok(handle);
        }
        let sealed = Sealed::open(memory).map_err(D::Error::custom)?;
        let value = ChunkReader::new(sealed.bytes())
            .and_then(|mut reader| {
                let value = reader.next::<T>()?;
                reader.finish().map(|()| value)
            })
            .map_err(|problem| D::Error::custom(problem.message))?;
        let handle = Shared::value_in(sealed, alive, None, Box::new(value));
        remember(file, &handle, &handle.backing);
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_values_read_back() {
        let table = Shared::from_slice(&[1u64, 2, 3]).unwrap();
        assert_eq!(&*table, &[1, 2, 3]);
        assert_eq!(table.clone().len(), 3);
        let empty = Shared::<[u32]>::from_slice(&[]).unwrap();
        assert!(empty.is_empty());
        let chars = Shared::from_slice(&['a', 'é', '😀']).unwrap();
        assert_eq!(&*chars, &['a', 'é', '😀']);
        let arrays = Shared::from_slice(&[[1.5f32, 2.0], [3.0, -0.0]]).unwrap();
        assert_eq!(arrays[1][0], 3.0);
        let value = Shared::new(vec!["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(value.join(""), "ab");
    }

    #[test]
    fn received_memory_is_checked_before_it_is_read() {
        let bad_bools = Sealed::create("t", &[0, 1, 2]).unwrap();
        let (_, alive) = liveness().unwrap();
        assert!(
            Shared::<[bool]>::slice_in(bad_bools, alive, None)
                .unwrap_err()
                .contains("not `bool`")
        );
        let odd = Sealed::create("t", &[0; 7]).unwrap();
        let (_, alive) = liveness().unwrap();
        assert!(Shared::<[u32]>::slice_in(odd, alive, None).is_err());
        let bad_char = Sealed::create("t", &0xD800u32.to_ne_bytes()).unwrap();
        let (_, alive) = liveness().unwrap();
        assert!(Shared::<[char]>::slice_in(bad_char, alive, None).is_err());
    }

    #[test]
    fn the_cache_forgets_what_its_creator_dropped() {
        let table = Shared::from_slice(&[7u8; 10]).unwrap();
        let file = sys::file_identity(table.backing.sealed.fd()).unwrap();
        CACHE.lock().unwrap().push(Cached {
            file,
            of: TypeId::of::<Shared<[u8]>>(),
            handle: Box::new(table.clone()),
            backing: Arc::clone(&table.backing),
        });
        sweep_cache();
        assert!(cached::<Shared<[u8]>>(file).is_some());
        assert!(cached::<Shared<[u16]>>(file).is_none());
        // The creator's end closes only with the last Backing here; a
        // received copy has no creator end, so its cache entry goes once
        // the creator's does.
        let (creator, alive) = liveness().unwrap();
        let copy = Shared::<[u8]>::slice_in(
            Sealed::open(rustix::io::fcntl_dupfd_cloexec(table.backing.sealed.fd(), 3).unwrap())
                .unwrap(),
            alive,
            None,
        )
        .unwrap();
        let copy_file = (file.0, file.1 ^ 1);
        CACHE.lock().unwrap().push(Cached {
            file: copy_file,
            of: TypeId::of::<Shared<[u8]>>(),
            handle: Box::new(copy.clone()),
            backing: Arc::clone(&copy.backing),
        });
        sweep_cache();
        assert!(cached::<Shared<[u8]>>(copy_file).is_some());
        drop(creator);
        sweep_cache();
        assert!(cached::<Shared<[u8]>>(copy_file).is_none());
        CACHE.lock().unwrap().clear();
    }
}
