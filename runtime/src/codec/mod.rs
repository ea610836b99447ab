//! How values become bytes and back: exactly, or with an error that says why.
//!
//! - [`format`]: the tagged, self-describing layout of one value
//!   ([`ser`] writes it, [`de`] reads it). Every serde feature round-trips:
//!   `skip_serializing_if`, `flatten`, untagged and internally tagged
//!   enums, `serde_json::Value`, `i128`, `Option<Option<T>>`, NaN bits.
//! - [`plain`]: chunks of plain items (numbers, strings, bytes, vectors of
//!   numbers, tuples of those) with their shape written once and no tag
//!   per value.
//! - [`chunk`]: chunks of items ([`ChunkWriter`], [`ChunkReader`]), tagged
//!   or plain.
//! - [`in_place`]: a reply whose values are copies of bytes (numbers,
//!   byte vectors, strings, vectors of numbers) decoded where its worker
//!   wrote it, each value copied once into its own storage.
//! - [`reply`]: a worker's reply ([`ReplyWriter`], [`ReplyReader`]): the
//!   values that succeeded, in order, then the failures by item index, so a
//!   chunk with no failure carries no per-item result tag.
//! - [`problem`]: why a value could not cross ([`Problem`]) and the
//!   caller's error it becomes; [`error`] is the serde error type the
//!   codec's serializers raise.
//!
//! A panic in a user's `Serialize` or `Deserialize` impl is caught here and
//! reported as a [`Problem`] (it must not unwind into a worker's loop or
//! a pool thread), and nesting is limited to [`format::MAX_DEPTH`] levels.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts.
#![forbid(unsafe_code)]

pub(crate) mod attach;
mod chunk;
mod de;
mod error;
mod format;
mod in_place;
mod plain;
mod problem;
mod reply;
mod ser;

pub use chunk::ChunkWriter;
#[cfg(test)]
pub(crate) use chunk::encode;
pub(crate) use chunk::{
    ChunkReader, Direct, borrowed_chunk, chunk_rest, direct_header, direct_value, owned_chunk,
    raw_width,
};
#[cfg(any(test, fuzzing))]
use chunk::{SHAPED, TAGGED};
pub(crate) use in_place::values_in_place;
pub use problem::Problem;
pub(crate) use problem::{error_for, try_append, try_to_vec};
pub(crate) use reply::{ReplyReader, ReplyWriter, assemble_reply, push_failure, reply_tail};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

// Not public API: re-exported as `procpool::__fuzz` for the fuzz targets
// (`fuzz/`, built with cargo-fuzz's `--cfg fuzzing`); the property tests
// use it too. Its items are `pub` for that re-export, which exists only
// under `fuzzing`.
#[cfg(any(test, fuzzing))]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub mod fuzz;
