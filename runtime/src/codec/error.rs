//! The codec's error: the message a user's `Serialize`/`Deserialize` impl
//! gave, or what the codec found wrong, word for word.

use std::fmt::{self, Display};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError(pub(crate) String);

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError(message.into())
    }
}

impl Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl serde::ser::Error for CodecError {
    fn custom<T: Display>(msg: T) -> Self {
        CodecError(msg.to_string())
    }
}

impl serde::de::Error for CodecError {
    fn custom<T: Display>(msg: T) -> Self {
        CodecError(msg.to_string())
    }
}

impl From<CodecError> for String {
    fn from(error: CodecError) -> String {
        error.0
    }
}

pub(crate) fn too_deep() -> CodecError {
    CodecError(format!(
        "the value nests deeper than {} levels (options, sequences, maps, structs and enums \
         inside each other); procpool refuses it so that decoding cannot overflow a thread's \
         stack: flatten the structure (e.g. a Vec of nodes with indices instead of nested boxes)",
        super::format::MAX_DEPTH
    ))
}
