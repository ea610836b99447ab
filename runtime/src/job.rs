//! Typed job handles and the link-time job registry.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::Serialize;

use crate::Error;
use crate::codec::ChunkWriter;

/// One registered job. Written by `#[pool_job]`, read by workers.
#[doc(hidden)]
pub struct JobEntry {
    /// The name tasks carry over the wire.
    pub name: &'static str,
    /// `module::path::function`, for messages about duplicates.
    pub function: &'static str,
    /// The argument and result types as written, for registry fingerprints.
    pub signature: &'static str,
    /// Runs one chunk in a worker: decodes `count` items from the input, runs
    /// the function on each and appends one encoded `Result<R, Failure>` per
    /// item to the output. Returns the first item's failure, if any failed.
    pub invoke: InvokeFn,
}

/// The signature of [`JobEntry::invoke`].
#[doc(hidden)]
pub type InvokeFn = fn(
    usize,
    &[u8],
    &mut crate::stream::Output<'_>,
) -> Result<Option<crate::wire::Failure>, crate::wire::Failure>;

impl fmt::Debug for JobEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobEntry")
            .field("name", &self.name)
            .field("function", &self.function)
            .field("signature", &self.signature)
            .finish()
    }
}

/// Every `#[pool_job]` in the final binary, collected by the linker.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static JOBS: [JobEntry];

/// Name → entry, built once per process. Fails if two functions share a name,
/// because a worker would otherwise silently run the wrong one.
pub(crate) fn registry() -> Result<&'static HashMap<&'static str, &'static JobEntry>, Error> {
    static REGISTRY: OnceLock<Result<HashMap<&'static str, &'static JobEntry>, Error>> =
        OnceLock::new();
    REGISTRY
        .get_or_init(|| build_registry(&JOBS))
        .as_ref()
        .map_err(Clone::clone)
}

fn build_registry(
    entries: &'static [JobEntry],
) -> Result<HashMap<&'static str, &'static JobEntry>, Error> {
    let mut map: HashMap<&'static str, &'static JobEntry> = HashMap::with_capacity(entries.len());
    for entry in entries {
        if let Some(previous) = map.insert(entry.name, entry) {
            return Err(Error::Registry(format!(
                "two jobs are registered under the name `{}`: `{}` and `{}`; \
                 give one of them another name with #[pool_job(name = \"...\")]",
                entry.name, previous.function, entry.function
            )));
        }
    }
    Ok(map)
}

/// The argument list of a job, as a tuple: `()`, `(A,)`, `(A, B)`, ...
///
/// [`Item`](JobArgs::Item) is what `map` and `apply` take for one call: the
/// bare argument for a one-argument job, the whole tuple otherwise.
/// Implemented for tuples of up to 16 elements.
///
/// It asks nothing of the argument types: whether they can cross the process
/// boundary is checked once, by `#[pool_job]` on the job's signature, so a
/// call of a job with a type that cannot adds no error of its own.
pub trait JobArgs: 'static {
    /// The value one call of the job consumes.
    type Item: 'static;
    /// Turns the argument tuple into the call's item.
    fn into_item(self) -> Self::Item;
    /// The call's item inside the argument tuple (`starmap` sends this).
    fn as_item(&self) -> &Self::Item;
}

impl JobArgs for () {
    type Item = ();
    fn into_item(self) {}
    fn as_item(&self) -> &() {
        self
    }
}

impl<A: 'static> JobArgs for (A,) {
    type Item = A;
    fn into_item(self) -> A {
        self.0
    }
    fn as_item(&self) -> &A {
        &self.0
    }
}

macro_rules! tuple_args {
    ($($name:ident)+) => {
        impl<$($name: 'static),+> JobArgs for ($($name,)+) {
            type Item = Self;
            fn into_item(self) -> Self {
                self
            }
            fn as_item(&self) -> &Self {
                self
            }
        }
    };
}

tuple_args!(A B);
tuple_args!(A B C);
tuple_args!(A B C D);
tuple_args!(A B C D E);
tuple_args!(A B C D E F);
tuple_args!(A B C D E F G);
tuple_args!(A B C D E F G H);
tuple_args!(A B C D E F G H I);
tuple_args!(A B C D E F G H I J);
tuple_args!(A B C D E F G H I J K);
tuple_args!(A B C D E F G H I J K L);
tuple_args!(A B C D E F G H I J K L M);
tuple_args!(A B C D E F G H I J K L M N);
tuple_args!(A B C D E F G H I J K L M N O);
tuple_args!(A B C D E F G H I J K L M N O P);

/// What the calls over many items ([`Pool::map`](crate::Pool::map),
/// `imap`, `imap_unordered`, `map_async`, `starmap`) accept as an item for a
/// job whose item type is `T`: a `T`, or a reference to one.
///
/// Items are only serialized, and a `&T` serializes as the `T` it points
/// to, so `pool.map(square, &numbers)` sends the same bytes as
/// `pool.map(square, numbers)` and leaves `numbers` with the caller.
/// Sealed: implemented for `T` and `&T` only.
#[diagnostic::on_unimplemented(
    message = "this job takes items of type `{T}`, not `{Self}`",
    label = "expected items of type `{T}` or `&{T}`",
    note = "`map`, `imap`, `imap_unordered` and `map_async` take the job's argument (or a reference to it) for each call; `starmap` takes a tuple of the job's arguments"
)]
pub trait ItemFor<T>: sealed::Item<T> {
    /// The item, borrowed.
    fn as_item(&self) -> &T;
}

#[diagnostic::do_not_recommend]
impl<T> ItemFor<T> for T {
    fn as_item(&self) -> &T {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<T> ItemFor<T> for &T {
    fn as_item(&self) -> &T {
        self
    }
}

/// A job's item encoder, type-erased so that no serde bound reaches the
/// pool's methods: `#[pool_job]` writes it where the item type is known and
/// checked.
///
/// # Safety
///
/// Call it only with `item` pointing to a valid value of the job's item
/// type `T` and `chunk` to a live `ChunkWriter<T>` of the same `T`, the
/// type the encoder was made for ([`Encode`] pairs them from one job).
/// It is one indirect call per item: no `dyn Any` downcast, which costs a
/// virtual call per item on the hot path of a large `map`.
#[doc(hidden)]
pub type AnyEncoder = unsafe fn(item: *const (), chunk: *mut ()) -> Result<(), String>;

/// A job's result decoder, type-erased like [`AnyEncoder`] so that no
/// serde bound reaches the pool's methods: decodes the `count` outcomes of
/// a worker's reply for items `first..`, into `out`.
///
/// # Safety
///
/// `out` points to a live `Vec<R>` (for [`Decoders::values`]) or
/// `Vec<Result<R, Error>>` (for [`Decoders::outcomes`]), where `R` is the
/// job's result type, the type the decoders were made for ([`Decode`]
/// pairs them from one job).
#[doc(hidden)]
pub type AnyDecoder = unsafe fn(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: *mut (),
) -> Result<(), Error>;

/// A job's two result decoders; written by `#[pool_job]`.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Decoders {
    /// Every value, or the first item's error (`map`, `apply`).
    pub values: AnyDecoder,
    /// Each item's value or error (`imap`, `Process`).
    pub outcomes: AnyDecoder,
}

/// The decoders of a job whose result type is `R`.
pub(crate) struct Decode<R> {
    decoders: Decoders,
    result: PhantomData<fn() -> R>,
}

impl<R> Clone for Decode<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Decode<R> {}

impl<R> Decode<R> {
    pub(crate) fn of<J: IntoJob<Output = R>>(job: &J) -> Self {
        Decode {
            decoders: job.__decoders(),
            result: PhantomData,
        }
    }

    /// Appends the reply's values to `out`, or fails with the first
    /// failed item's error.
    pub(crate) fn values(
        &self,
        job: &str,
        first: usize,
        count: usize,
        bytes: &[u8],
        out: &mut Vec<R>,
    ) -> Result<(), Error> {
        // SAFETY: the decoders were made for the job whose result type is
        // `R` (`of`), and `out` is a `Vec<R>`.
        unsafe { (self.decoders.values)(job, first, count, bytes, (out as *mut Vec<R>).cast()) }
    }

    /// Appends each item's outcome to `out`; `Err` if the reply cannot be read.
    pub(crate) fn outcomes(
        &self,
        job: &str,
        first: usize,
        count: usize,
        bytes: &[u8],
        out: &mut Vec<Result<R, Error>>,
    ) -> Result<(), Error> {
        // SAFETY: as in `values`, with a `Vec<Result<R, Error>>`.
        unsafe {
            (self.decoders.outcomes)(
                job,
                first,
                count,
                bytes,
                (out as *mut Vec<Result<R, Error>>).cast(),
            )
        }
    }
}

/// The encoder for item type `T`, which `#[pool_job]`'s expansion picks
/// (through `__private::EncodeItem`) when `T` is serializable.
///
/// # Safety
///
/// As [`AnyEncoder`]: `item` points to a `T`, `chunk` to a `ChunkWriter<T>`.
pub(crate) unsafe fn encode_any<T: Serialize + 'static>(
    item: *const (),
    chunk: *mut (),
) -> Result<(), String> {
    // SAFETY: the caller's contract (see `AnyEncoder`).
    let (item, chunk) = unsafe { (&*item.cast::<T>(), &mut *chunk.cast::<ChunkWriter<T>>()) };
    chunk.push(item).map_err(String::from)
}

/// Appends the items of a call, of type `X`, to a chunk: borrows the job's
/// item out of each (`X` may be a reference, or an argument tuple for
/// `starmap`), then runs the job's encoder.
///
/// The chunk is a [`ChunkWriter`] whose item type is erased to `()`: its
/// layout does not depend on its type parameter (`repr(C)`, the parameter
/// only in a `PhantomData`), and the job's encoder treats it as the writer
/// for the job's item type.
pub(crate) struct Encode<X> {
    item: fn(&X) -> *const (),
    encode: AnyEncoder,
    /// For items written as their own bytes, how many (see `codec::raw_width`).
    raw_width: Option<usize>,
}

impl<X> Clone for Encode<X> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<X> Copy for Encode<X> {}

impl<X> Encode<X> {
    /// For `map`-like calls: each item is the job's item or a reference to one.
    pub(crate) fn items<J>(job: &J) -> Self
    where
        J: IntoJob,
        X: ItemFor<<J::Args as JobArgs>::Item>,
    {
        fn item<X: ItemFor<T>, T>(x: &X) -> *const () {
            (x.as_item() as *const T).cast()
        }
        Encode {
            item: item::<X, <J::Args as JobArgs>::Item>,
            encode: job.__encoder(),
            raw_width: crate::codec::raw_width::<<J::Args as JobArgs>::Item>(),
        }
    }

    /// For `starmap`: each item is an argument tuple or a reference to one.
    pub(crate) fn arg_tuples<J>(job: &J) -> Self
    where
        J: IntoJob,
        X: ItemFor<J::Args>,
    {
        fn item<X: ItemFor<A>, A: JobArgs>(x: &X) -> *const () {
            (x.as_item().as_item() as *const A::Item).cast()
        }
        Encode {
            item: item::<X, J::Args>,
            encode: job.__encoder(),
            raw_width: crate::codec::raw_width::<<J::Args as JobArgs>::Item>(),
        }
    }

    /// Appends `item` to `chunk`; on error the chunk is as it was.
    // Always inlined into the caller's loop: a raw item is a pointer, an
    // 8-byte copy and a count (left to the compiler, it stayed a call per
    // item in the benchmark's binary, 14 % of the caller's time).
    #[inline(always)]
    pub(crate) fn push(&self, chunk: &mut ChunkWriter<()>, item: &X) -> Result<(), String> {
        if let Some(width) = self.raw_width {
            // SAFETY: `item` points to the job's item type `T`, whose
            // `width` bytes of memory are its encoding (`raw_width`).
            let bytes =
                unsafe { std::slice::from_raw_parts((self.item)(item).cast::<u8>(), width) };
            if chunk.push_raw(bytes) {
                return Ok(());
            }
        }
        // SAFETY: `item` points to the job's item type `T` (both function
        // pointers come from one job, in `items` / `arg_tuples`), and a
        // `ChunkWriter<()>` is laid out as a `ChunkWriter<T>` (see the type).
        unsafe { (self.encode)((self.item)(item), (chunk as *mut ChunkWriter<()>).cast()) }
    }
}

/// One item of `job` on its own, as a chunk (`apply`, an initializer, a
/// `Process`).
pub(crate) fn encode_one<J: IntoJob>(
    job: &J,
    item: &<J::Args as JobArgs>::Item,
) -> Result<Vec<u8>, String> {
    let mut chunk = ChunkWriter::default();
    Encode::items(job).push(&mut chunk, item)?;
    Ok(chunk.finish())
}

/// A function registered with [`#[pool_job]`](crate::pool_job).
///
/// The attribute turns `fn square(x: u64) -> u64` into a constant `square` of
/// type `Job<fn(u64) -> u64, (u64,), u64>`. It can be called like the
/// original function (it dereferences to the function pointer), and passed to
/// [`Pool`](crate::Pool) methods, which read the registered name and check
/// item and result types at compile time. Closures and plain functions are
/// not `Job`s, so passing one to a pool is a compile error.
///
/// ```
/// use procpool::pool_job;
///
/// #[pool_job]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// assert_eq!(square(4), 16);
/// assert!(square.name().ends_with("::square"));
/// ```
pub struct Job<F, A, R> {
    function: F,
    entry: &'static JobEntry,
    encoder: AnyEncoder,
    decoders: Decoders,
    types: PhantomData<fn(A) -> R>,
}

impl<F, A, R> Job<F, A, R> {
    #[doc(hidden)]
    /// Written by `#[pool_job]` only.
    ///
    /// # Safety
    ///
    /// `encoder` must encode the item type of `A` (see [`AnyEncoder`]),
    /// and `decoders` decode `R` (see [`AnyDecoder`]).
    pub const unsafe fn __new(
        function: F,
        entry: &'static JobEntry,
        encoder: AnyEncoder,
        decoders: Decoders,
    ) -> Self {
        Job {
            function,
            entry,
            encoder,
            decoders,
            types: PhantomData,
        }
    }

    /// The name the job is registered under: the module path plus the
    /// function name, or the `name = "..."` given to the attribute.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }
}

/// What [`Pool`](crate::Pool) methods accept as a job: implemented by
/// [`Job`] only, that is by functions marked [`#[pool_job]`](crate::pool_job).
///
/// Passing anything else, such as a closure or a function without the
/// attribute, fails to compile with a message that says to add
/// `#[pool_job]`. Sealed: it cannot be implemented outside procpool.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[pool_job] function",
    label = "expected a function marked #[pool_job]",
    note = "a pool runs only functions registered with #[pool_job]: a worker process finds the function by its registered name, so closures and other functions cannot be sent to it",
    note = "mark the function with `#[procpool::pool_job]` and pass it by name, e.g. `pool.map(square, 0..10)`; to use a closure, move its body into such a function"
)]
pub trait IntoJob: sealed::Sealed {
    /// The job's argument tuple.
    type Args: JobArgs;
    /// The job's result type.
    type Output;
    /// The name the job is registered under.
    fn name(&self) -> &'static str;
    /// Encodes one of the job's items; written by `#[pool_job]`.
    #[doc(hidden)]
    fn __encoder(&self) -> AnyEncoder;
    /// Decodes the job's results; written by `#[pool_job]`.
    #[doc(hidden)]
    fn __decoders(&self) -> Decoders;
}

mod sealed {
    pub trait Sealed {}
    impl<F, A, R> Sealed for super::Job<F, A, R> {}

    pub trait Item<T> {}
    impl<T> Item<T> for T {}
    impl<T> Item<T> for &T {}
}

impl<F, A: JobArgs, R> IntoJob for Job<F, A, R> {
    type Args = A;
    type Output = R;
    fn name(&self) -> &'static str {
        self.entry.name
    }
    fn __encoder(&self) -> AnyEncoder {
        self.encoder
    }
    fn __decoders(&self) -> Decoders {
        self.decoders
    }
}

impl<F, A, R> Deref for Job<F, A, R> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.function
    }
}

impl<F: Copy, A, R> Clone for Job<F, A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Copy, A, R> Copy for Job<F, A, R> {}

impl<F, A, R> fmt::Debug for Job<F, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.entry.name)
            .field("signature", &self.entry.signature)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(
        _: usize,
        _: &[u8],
        _: &mut crate::stream::Output<'_>,
    ) -> Result<Option<crate::wire::Failure>, crate::wire::Failure> {
        Ok(None)
    }

    static DUPS: [JobEntry; 2] = [
        JobEntry {
            name: "same",
            function: "a::first",
            signature: "fn()",
            invoke: noop,
        },
        JobEntry {
            name: "same",
            function: "b::second",
            signature: "fn()",
            invoke: noop,
        },
    ];

    #[test]
    fn duplicate_names_are_reported_with_both_functions() {
        let err = build_registry(&DUPS).unwrap_err().to_string();
        assert!(err.contains("`same`"), "{err}");
        assert!(
            err.contains("a::first") && err.contains("b::second"),
            "{err}"
        );
    }
}
