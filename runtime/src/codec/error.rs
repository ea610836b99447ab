//! The codec's error: the message a user's `Serialize`/`Deserialize` impl
//! gave, or what the codec found wrong, word for word.

use std::fmt::{self, Display};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError {
    pub(crate) message: String,
    /// A buffer could not be allocated ([`out_of_memory`]): the value may
    /// be fine, the system refused the memory. Carried as a flag, not as
    /// words in the message, so that a user's message cannot pass for it.
    pub(crate) no_memory: bool,
}

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
            no_memory: false,
        }
    }
}

impl Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

impl serde::ser::Error for CodecError {
    fn custom<T: Display>(msg: T) -> Self {
        CodecError::new(msg.to_string())
    }
}

impl serde::de::Error for CodecError {
    fn custom<T: Display>(msg: T) -> Self {
        CodecError::new(msg.to_string())
    }
}

impl From<CodecError> for String {
    fn from(error: CodecError) -> String {
        error.message
    }
}

pub(crate) fn too_deep() -> CodecError {
    CodecError::new(format!(
        "the value nests deeper than {} levels (options, sequences, maps, structs and enums \
         inside each other); procpool refuses it so that decoding cannot overflow a thread's \
         stack: flatten the structure (e.g. a Vec of nodes with indices instead of nested boxes)",
        super::format::MAX_DEPTH
    ))
}

/// A buffer of `bytes` could not be allocated: an error marked
/// [`no_memory`](CodecError::no_memory), which the pool reports as the
/// system's refusal ([`crate::Error::System`]), not as a bad value.
#[cold]
pub(crate) fn out_of_memory(bytes: usize) -> CodecError {
    CodecError {
        message: format!("not enough memory (or address space) for a buffer of {bytes} bytes"),
        no_memory: true,
    }
}

/// Makes room for `more` bytes at the end of `out`, growing it as a push
/// would, or fails with [`out_of_memory`] where a push would abort the
/// process: a payload's size is the user's, not ours to trust.
#[inline]
pub(crate) fn reserve(out: &mut Vec<u8>, more: usize) -> Result<(), CodecError> {
    if out.capacity() - out.len() >= more {
        return Ok(());
    }
    out.try_reserve(more)
        .map_err(|_| out_of_memory(out.len().saturating_add(more)))
}

/// `bytes` in a new vector, or [`out_of_memory`].
pub(crate) fn owned_bytes(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut owned = Vec::new();
    reserve(&mut owned, bytes.len())?;
    owned.extend_from_slice(bytes);
    Ok(owned)
}

/// `text` in a new string, or [`out_of_memory`].
pub(crate) fn owned_str(text: &str) -> Result<String, CodecError> {
    let mut owned = String::new();
    owned
        .try_reserve(text.len())
        .map_err(|_| out_of_memory(text.len()))?;
    owned.push_str(text);
    Ok(owned)
}
