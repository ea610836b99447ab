//! Typed job handles and the link-time job registry.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

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
pub type InvokeFn =
    fn(usize, &[u8], &mut Vec<u8>) -> Result<Option<crate::wire::Failure>, crate::wire::Failure>;

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
pub trait JobArgs: 'static {
    /// The value one call of the job consumes.
    type Item: Serialize + DeserializeOwned + Send + 'static;
    /// Turns the argument tuple into the call's item (`starmap` uses this).
    fn into_item(self) -> Self::Item;
}

impl JobArgs for () {
    type Item = ();
    fn into_item(self) {}
}

impl<A> JobArgs for (A,)
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = A;
    fn into_item(self) -> A {
        self.0
    }
}

macro_rules! tuple_args {
    ($($name:ident)+) => {
        impl<$($name),+> JobArgs for ($($name,)+)
        where
            $($name: Serialize + DeserializeOwned + Send + 'static,)+
        {
            type Item = Self;
            fn into_item(self) -> Self {
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
    types: PhantomData<fn(A) -> R>,
}

impl<F, A, R> Job<F, A, R> {
    #[doc(hidden)]
    pub const fn __new(function: F, entry: &'static JobEntry) -> Self {
        Job {
            function,
            entry,
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
}

mod sealed {
    pub trait Sealed {}
    impl<F, A, R> Sealed for super::Job<F, A, R> {}
}

impl<F, A: JobArgs, R> IntoJob for Job<F, A, R> {
    type Args = A;
    type Output = R;
    fn name(&self) -> &'static str {
        self.entry.name
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
        _: &mut Vec<u8>,
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
