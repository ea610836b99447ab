//! Typed job handles and the link-time job registry.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::OnceLock;

use crate::Error;
use crate::codec::{ChunkWriter, Problem};

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
    &mut crate::reply_log::Output<'_>,
) -> Result<Option<crate::failure::Failure>, crate::failure::Failure>;

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
    note = "`apply`, `map`, `imap`, `imap_unordered` and `map_async` take the job's argument (or a reference to it) for each call: a job of one argument takes it as is (`7`, not `(7,)`), a job of several takes them as a tuple (`(1, 2)`); `starmap` takes a tuple of the job's arguments, a 1-tuple for a job of one"
)]
pub trait ItemFor<T>: sealed::Item<T> {
    /// The item, borrowed.
    fn as_item(&self) -> &T;

    /// The item as a chunk of its own when it is an owned byte string of at
    /// least `min` bytes (see `codec::owned_chunk`); given back otherwise
    /// (a reference always is).
    #[doc(hidden)]
    fn into_owned_chunk(self, min: usize) -> Result<(Vec<u8>, Vec<u8>), Self>
    where
        T: 'static,
        Self: Sized;
}

#[diagnostic::do_not_recommend]
impl<T> ItemFor<T> for T {
    fn as_item(&self) -> &T {
        self
    }

    fn into_owned_chunk(self, min: usize) -> Result<(Vec<u8>, Vec<u8>), Self>
    where
        T: 'static,
    {
        crate::codec::owned_chunk(self, min)
    }
}

#[diagnostic::do_not_recommend]
impl<T> ItemFor<T> for &T {
    fn as_item(&self) -> &T {
        self
    }

    fn into_owned_chunk(self, _: usize) -> Result<(Vec<u8>, Vec<u8>), Self>
    where
        T: 'static,
    {
        Err(self)
    }
}

/// An item's [`ItemFor::into_owned_chunk`], for code that does not know
/// the job's item type (`None`: never, as for `starmap`'s tuples).
pub(crate) type OwnedChunk<X> = Option<fn(X, usize) -> Result<(Vec<u8>, Vec<u8>), X>>;

/// How `map`-like calls encode items of type `X` (the job's item or a
/// reference to one): [`encode_items`], and the owned byte strings that
/// travel with their own buffers ([`ItemFor::into_owned_chunk`]).
pub(crate) fn item_encoding<J, X>(job: &J) -> (impl Encode<X> + use<J, X>, OwnedChunk<X>)
where
    J: IntoJob,
    X: ItemFor<<J::Args as JobArgs>::Item>,
{
    (
        encode_items(job),
        Some(<X as ItemFor<<J::Args as JobArgs>::Item>>::into_owned_chunk),
    )
}

/// A job's item encoder: appends one item of type `T` to a chunk; on
/// error the chunk is as it was.
///
/// `#[pool_job]` writes it where `T` is known and checked, so no serde
/// bound reaches the pool's methods. An encoder that ran out of memory says
/// so by its [`Problem`]'s kind, which the pool reports as
/// [`Error::System`].
pub type ItemEncoder<T> = fn(item: &T, chunk: &mut ChunkWriter) -> Result<(), Problem>;

/// A job's result decoder into `Vec<R>`: decodes the `count` values of a
/// worker's reply for items `first..`, or fails with the first failed
/// item's error (`map`, `apply`).
pub type ValuesDecoder<R> =
    fn(job: &str, first: usize, count: usize, bytes: &[u8], out: &mut Vec<R>) -> Result<(), Error>;

/// A job's result decoder into `Vec<Result<R, Error>>`: decodes each of the
/// `count` outcomes of a worker's reply for items `first..` (`imap`,
/// `Process`); `Err` if the reply cannot be read.
pub type OutcomesDecoder<R> = fn(
    job: &str,
    first: usize,
    count: usize,
    bytes: &[u8],
    out: &mut Vec<Result<R, Error>>,
) -> Result<(), Error>;

/// The decoders of a job whose result type is `R`; written by `#[pool_job]`
/// (like [`ItemEncoder`], so that no serde bound reaches the pool's methods).
pub(crate) struct Decode<R> {
    values: ValuesDecoder<R>,
    outcomes: OutcomesDecoder<R>,
}

impl<R> Clone for Decode<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Decode<R> {}

impl<R> Decode<R> {
    pub(crate) fn of<J: IntoJob<Output = R>>(job: &J) -> Self {
        let (values, outcomes) = job.decoders();
        Decode { values, outcomes }
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
        (self.values)(job, first, count, bytes, out)
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
        (self.outcomes)(job, first, count, bytes, out)
    }
}

/// Appends an item of a call, of type `X`, to a chunk; on error the chunk
/// is as it was. Made by [`encode_items`] or [`encode_arg_tuples`].
///
/// Generic over how the job's item is borrowed out of `X` (statically: `X`
/// may be a reference, or an argument tuple for `starmap`), so the pool's
/// loops call it directly: it writes a plain number in place, and calls
/// the job's [`ItemEncoder`] (the one indirect call) for anything else.
pub(crate) trait Encode<X>: Copy + Send + Sync + 'static {
    /// Appends `item`.
    fn encode(&self, item: &X, chunk: &mut ChunkWriter) -> Result<(), Problem>;

    /// Appends items taken from `items` in one tight loop while they are
    /// written raw (see [`ChunkWriter::extend_raw`]), until the chunk holds
    /// `max_items` or `max_bytes`: how many it took. Takes none unless each
    /// item it takes is written.
    fn extend_raw(
        &self,
        items: &mut impl Iterator<Item = X>,
        chunk: &mut ChunkWriter,
        max_items: usize,
        max_bytes: usize,
    ) -> usize;
}

/// The [`Encode`] of a job whose item is `T`, for call items `X` that
/// `borrow` turns into a `&T`.
// `X` is not a parameter of the type (a closure's type is `'static` also
// where `X` is a reference), only of its `Encode` impl.
pub(crate) struct ItemsOf<T: 'static, B> {
    encoder: ItemEncoder<T>,
    borrow: B,
}

impl<T, B: Copy> Clone for ItemsOf<T, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, B: Copy> Copy for ItemsOf<T, B> {}

impl<X, T, B> Encode<X> for ItemsOf<T, B>
where
    T: 'static,
    B: Fn(&X) -> &T + Copy + Send + Sync + 'static,
{
    #[inline(always)]
    fn encode(&self, item: &X, chunk: &mut ChunkWriter) -> Result<(), Problem> {
        push(chunk, (self.borrow)(item), self.encoder)
    }

    #[inline(always)]
    fn extend_raw(
        &self,
        items: &mut impl Iterator<Item = X>,
        chunk: &mut ChunkWriter,
        max_items: usize,
        max_bytes: usize,
    ) -> usize {
        chunk.extend_raw(items, self.borrow, max_items, max_bytes)
    }
}

/// `borrow` as a function from any `&X` to a `&T` of the same lifetime
/// (what a closure's signature is not inferred to be).
fn borrowing<X, T, B: Fn(&X) -> &T>(borrow: B) -> B {
    borrow
}

/// An [`Encode`] that a type not generic over the job's item type can hold
/// (an [`Imap`](crate::Imap)): one virtual call per item, in place of the
/// direct call.
pub(crate) type BoxedEncode<X> =
    Box<dyn Fn(&X, &mut ChunkWriter) -> Result<(), Problem> + Send + Sync>;

/// For `map`-like calls: each item is the job's item or a reference to one.
pub(crate) fn encode_items<J, X>(job: &J) -> impl Encode<X> + use<J, X>
where
    J: IntoJob,
    X: ItemFor<<J::Args as JobArgs>::Item>,
{
    ItemsOf {
        encoder: job.encoder(),
        borrow: borrowing(|item: &X| item.as_item()),
    }
}

/// For `starmap`: each item is an argument tuple or a reference to one.
pub(crate) fn encode_arg_tuples<J, X>(job: &J) -> impl Encode<X> + use<J, X>
where
    J: IntoJob,
    X: ItemFor<J::Args>,
{
    ItemsOf {
        encoder: job.encoder(),
        borrow: borrowing(|item: &X| JobArgs::as_item(ItemFor::as_item(item))),
    }
}

/// Appends `item` to `chunk`: in place if it is a plain number, else
/// through the job's encoder.
// Always inlined into the caller's loop: a raw item is a store and a count
// (left to the compiler, it stayed a call per item in the benchmark's
// binary, 14 % of the caller's time).
#[inline(always)]
fn push<T: 'static>(
    chunk: &mut ChunkWriter,
    item: &T,
    encoder: ItemEncoder<T>,
) -> Result<(), Problem> {
    if chunk.push_raw(item) {
        return Ok(());
    }
    encoder(item, chunk)
}

/// One item of `job` on its own, as a chunk (`apply`, an initializer, a
/// `Process`).
pub(crate) fn encode_one<J: IntoJob>(
    job: &J,
    item: &<J::Args as JobArgs>::Item,
) -> Result<Vec<u8>, Problem> {
    let (bytes, attached) = encode_one_attached(job, item)?;
    if !attached.is_empty() {
        return Err(Problem::refused(crate::codec::attach::NOT_HERE));
    }
    Ok(bytes)
}

/// [`encode_one`], with the descriptors of the handles in `item` (a
/// `Process`'s argument; see [`crate::codec::attach`]).
pub(crate) fn encode_one_attached<J: IntoJob>(
    job: &J,
    item: &<J::Args as JobArgs>::Item,
) -> Result<(Vec<u8>, crate::codec::attach::Attached), Problem> {
    let mut chunk = ChunkWriter::default();
    push(&mut chunk, item, job.encoder())?;
    let attached = chunk.take_attached();
    Ok((chunk.finish(), attached))
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
pub struct Job<F, A: JobArgs, R> {
    function: F,
    entry: &'static JobEntry,
    encoder: ItemEncoder<A::Item>,
    values: ValuesDecoder<R>,
    outcomes: OutcomesDecoder<R>,
    types: PhantomData<fn(A) -> R>,
}

/// A job's handle; written by `#[pool_job]` only (through `__private`,
/// so the public `Job` has no hidden constructor), with the encoder and
/// decoders it picked for the job's item and result types.
pub const fn new_job<F, A: JobArgs, R>(
    function: F,
    entry: &'static JobEntry,
    encoder: ItemEncoder<A::Item>,
    values: ValuesDecoder<R>,
    outcomes: OutcomesDecoder<R>,
) -> Job<F, A, R> {
    Job {
        function,
        entry,
        encoder,
        values,
        outcomes,
        types: PhantomData,
    }
}

impl<F, A: JobArgs, R> Job<F, A, R> {
    /// The name the job is registered under: the module path plus the
    /// function name, or the `name = "..."` given to the attribute.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }
}

/// The name the job is registered under, as [`name`](Job::name) gives it.
///
/// Besides logs, this keeps one mistake to one error: a job is a constant,
/// so `let total = pool.apply(total, xs)?;` in the job's module is a
/// pattern against the job, not a new variable. The compiler says so
/// (E0308, "`total` is interpreted as a constant"); printing `total`
/// afterwards then adds no second, unrelated error.
impl<F, A: JobArgs, R> std::fmt::Display for Job<F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.entry.name)
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
}

mod sealed {
    use super::{IntoJob, ItemEncoder, JobArgs, OutcomesDecoder, ValuesDecoder};

    /// Where the pool finds a job's encoder and decoders: on this
    /// supertrait of [`IntoJob`], which users cannot import or implement
    /// and rustdoc does not show, rather than as hidden methods of
    /// `IntoJob` itself. (Both are safe to call: typed function pointers.)
    pub trait Sealed {
        /// Encodes one of the job's items; written by `#[pool_job]`.
        fn encoder(&self) -> ItemEncoder<<Self::Args as JobArgs>::Item>
        where
            Self: IntoJob;
        /// Decodes the job's results; written by `#[pool_job]`.
        fn decoders(&self) -> (ValuesDecoder<Self::Output>, OutcomesDecoder<Self::Output>)
        where
            Self: IntoJob;
    }

    impl<F, A: JobArgs, R> Sealed for super::Job<F, A, R> {
        fn encoder(&self) -> ItemEncoder<<<Self as IntoJob>::Args as JobArgs>::Item> {
            self.encoder
        }
        fn decoders(
            &self,
        ) -> (
            ValuesDecoder<<Self as IntoJob>::Output>,
            OutcomesDecoder<<Self as IntoJob>::Output>,
        ) {
            (self.values, self.outcomes)
        }
    }

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
}

impl<F, A: JobArgs, R> Deref for Job<F, A, R> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.function
    }
}

impl<F: Copy, A: JobArgs, R> Clone for Job<F, A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Copy, A: JobArgs, R> Copy for Job<F, A, R> {}

impl<F, A: JobArgs, R> fmt::Debug for Job<F, A, R> {
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
        _: &mut crate::reply_log::Output<'_>,
    ) -> Result<Option<crate::failure::Failure>, crate::failure::Failure> {
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
