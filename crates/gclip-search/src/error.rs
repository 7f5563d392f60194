//! The errors of the search crate: one enum for everything a collection can refuse or fail at.

use std::path::PathBuf;

/// Why a collection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The database file could not be read or written.
    #[error("collection database {path}: {message}")]
    Database { path: PathBuf, message: String },
    /// A file or directory of the collection could not be read or written.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// Something stored in the collection is damaged: a row, a key or a file that does not
    /// read back as what was written. Never defaulted: the error names what is wrong.
    #[error("collection {collection} is damaged: {message} (`gclip check {collection}` lists every problem)")]
    Corrupt {
        collection: PathBuf,
        message: String,
    },
    /// The directory is not a collection (and creating one was not asked for).
    #[error(
        "{0} is not a gclip collection (no collection.sqlite3); create one with \
         `gclip index IMAGE_DIR --collection {0} --model MODEL` or \
         `gclip add {0} DOCS.jsonl --model MODEL`"
    )]
    NotACollection(PathBuf),
    /// A collection address names a server that has no collection of that name (and creating
    /// one was not asked for).
    #[error(
        "{0} holds no collection; create one with \
         `gclip add {0} DOCS.jsonl --model MODEL` or \
         `gclip index IMAGE_DIR --collection {0} --model MODEL`"
    )]
    NoCollectionAt(String),
    /// A collection on a server (Milvus) failed or could not be reached. `collection` is the
    /// address without its token.
    #[error("collection {collection}: {message}")]
    Remote { collection: String, message: String },
    /// Opening a collection with a model other than the one it was created with.
    #[error("collection was created with model {stored}, not {given}; embeddings would not be comparable")]
    ModelMismatch { stored: String, given: String },
    /// The user's input is unusable (a bad filter, a bad spec, a missing field, …).
    #[error("{0}")]
    Invalid(String),
    /// A filter expression that does not parse.
    #[error("bad filter at character {position}: {message}")]
    Filter { position: usize, message: String },
    /// A vector of the wrong size.
    #[error("vector has {got} dimensions, the collection has {want}")]
    Dimension { got: usize, want: usize },
    /// No document with that id.
    #[error("no document with id {0:?}")]
    NotFound(String),
    /// The approximate index failed.
    #[error("vector index: {0}")]
    Ann(String),
    /// The lexical index failed.
    #[error("lexical index: {0}")]
    Lexical(String),
    /// The work waited longer than its deadline for the model (a server under load).
    #[error("server busy: {0}")]
    Busy(String),
    /// The model failed to embed a query or a document.
    #[error(transparent)]
    Embed(#[from] gclip::embed::EmbedError),
}

impl SearchError {
    /// True for errors caused by the request rather than by the machine (HTTP 4xx).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SearchError::Invalid(_)
                | SearchError::Filter { .. }
                | SearchError::Dimension { .. }
                | SearchError::NotFound(_)
                | SearchError::NotACollection(_)
                | SearchError::NoCollectionAt(_)
                | SearchError::ModelMismatch { .. }
        )
    }
}

pub(crate) fn db_err(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> SearchError + '_ {
    move |e| SearchError::Database {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> SearchError + '_ {
    move |e| SearchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(crate) fn corrupt(collection: &std::path::Path, message: impl Into<String>) -> SearchError {
    SearchError::Corrupt {
        collection: collection.to_path_buf(),
        message: message.into(),
    }
}

/// Results of this crate.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;
