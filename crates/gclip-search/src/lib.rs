//! gclip-search: collections of documents searchable by text, image and multi-field queries.
//!
//! A collection is a directory: a SQLite database (the source of truth: documents, fields,
//! vectors, the model identity and embedding spec), an HNSW index for approximate search and a
//! BM25 index for lexical search, both rebuilt from the database when missing or stale.
//!
//! Data flows one way: [`ingest`] (documents → vectors via an [`encoder::Encoder`]) →
//! [`store::Store`] (durable writes, search) ← [`query`] (query parts → one vector) and
//! [`filter`] (conditions on fields).

pub mod ann;
pub mod bench;
pub mod check;
pub mod collection;
pub mod document;
pub mod encoder;
pub mod error;
pub mod exact;
pub mod filter;
pub mod ingest;
pub mod lexical;
mod memory;
pub mod milvus;
pub mod netguard;
mod payload;
mod planner;
mod quant;
pub mod query;
pub mod remote;
pub mod roots;
pub mod sqlite;
pub mod store;

pub use collection::{model_identity, Collection, Location};
pub use document::{Document, EmbedSpec, Fields, Modality};
pub use error::{Result, SearchError};
pub use filter::Filter;
pub use query::{QueryInput, QueryPart};
pub use store::{
    CollectionInfo, Fusion, Hit, ModelIdentity, NewDocument, SearchMode, SearchRequest, Store,
};
