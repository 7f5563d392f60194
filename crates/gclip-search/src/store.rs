//! The store interface: what a collection backend must do. The embedded backend
//! ([`crate::sqlite::SqliteStore`]) implements it; a backend for a Qdrant cluster can follow
//! behind the same trait.

use serde::{Deserialize, Serialize};

use crate::document::{Document, EmbedSpec, Fields};
use crate::error::Result;
use crate::filter::Filter;

/// The model a collection's vectors came from. Queries must be embedded by the same model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// `--model` as given when the collection was created (absolute when it is a path).
    pub model: String,
    /// `--arch` (a built-in name, or an absolute path to a config JSON), when one was needed.
    pub arch: Option<String>,
    /// Embedding dimension.
    pub dim: usize,
    /// The precision the collection's vectors were embedded in (fp32 for collections made
    /// before precisions existed). Queries default to it.
    #[serde(default)]
    pub precision: gclip::model::Precision,
}

impl ModelIdentity {
    /// `model` (with ` --arch arch` when set), as the user would type it.
    pub fn describe(&self) -> String {
        match &self.arch {
            Some(a) => format!("{} --arch {a}", self.model),
            None => self.model.clone(),
        }
    }
}

/// What a collection is: its model, the fields it embeds and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub model: ModelIdentity,
    pub spec: EmbedSpec,
    /// Seconds since the Unix epoch when the collection was created.
    pub created: u64,
}

/// Where a document came from when it was indexed from a file, to skip it when unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub path: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// xxh3-128 of the content, hex.
    pub hash: String,
}

/// A document with its vector, ready to be written.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub fields: Fields,
    /// Unit-length vector of the collection's dimension.
    pub vector: Vec<f32>,
    pub source: Option<FileState>,
}

/// How vector and lexical results are merged in a hybrid query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal-rank fusion: Σ 1 / (k + rank), rank from 1.
    Rrf { k: f32 },
    /// `vector · cosine + lexical · bm25 / max bm25` (lexical scores scaled to [0, 1]).
    Weighted { vector: f32, lexical: f32 },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

/// Which engine answers the vector part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Exact below a size threshold, approximate (HNSW) above it.
    #[default]
    Auto,
    /// Brute force over every vector.
    Exact,
    /// The HNSW index, whatever the size.
    Ann,
}

/// A query against a store.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// Unit-length query vector (vector search).
    pub vector: Option<Vec<f32>>,
    /// Query text for the lexical (BM25) index; with `vector` too, a hybrid query.
    pub text: Option<String>,
    pub filter: Option<Filter>,
    pub limit: usize,
    pub offset: usize,
    pub mode: SearchMode,
    pub fusion: Fusion,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    /// Cosine similarity for vector search; BM25 for lexical search; the fused score for
    /// hybrid search.
    pub score: f32,
    /// Cosine similarity, when the vector part ranked this hit (hybrid search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f32>,
    /// BM25 score, when the lexical part ranked this hit (hybrid search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bm25: Option<f32>,
    /// The path of the document's (first) image field, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub fields: Fields,
}

/// What a write did, once it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// Documents written or deleted.
    pub count: usize,
    /// The collection's generation after the write (one more per committed write).
    pub generation: u64,
}

/// A collection backend. Every write is one transaction: when it returns, the write is durable
/// (a commit point); a crash before that leaves none of it.
pub trait Store: Send + Sync {
    /// The collection's model and embedding spec.
    fn info(&self) -> &CollectionInfo;
    /// Number of documents.
    fn len(&self) -> usize;
    /// True when the collection holds no document.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Why the store cannot take a document with this id and these fields, if it cannot (a
    /// Milvus collection with a partition key needs the tenant field in every document).
    /// Writers of many documents ask before embedding each one, so that a document refused
    /// fails alone and the batch goes on; `upsert` refuses the same documents whole.
    fn check_fields(&self, _id: &str, _fields: &Fields) -> std::result::Result<(), String> {
        Ok(())
    }
    /// Inserts documents, replacing those with the same id.
    fn upsert(&self, docs: Vec<NewDocument>) -> Result<WriteReceipt>;
    /// Deletes documents by id; ids not present are ignored (`count` says how many went).
    fn delete(&self, ids: &[String]) -> Result<WriteReceipt>;
    /// Replaces the fields of a document, keeping its vector (for fields that are not embedded).
    fn update_fields(&self, id: &str, fields: Fields) -> Result<WriteReceipt>;
    /// One document.
    fn get(&self, id: &str) -> Result<Option<Document>>;
    /// The stored vector of a document.
    fn vector(&self, id: &str) -> Result<Option<Vec<f32>>>;
    /// Documents by id, in order (`skip` first), for listing.
    fn list(&self, skip: usize, limit: usize) -> Result<Vec<Document>>;
    /// Searches; hits best first.
    fn search(&self, request: &SearchRequest) -> Result<Vec<Hit>>;
    /// The file each file-indexed document came from, by document id.
    fn sources(&self) -> Result<Vec<(String, FileState)>>;
    /// Records new file states for documents whose content did not change (a touched file).
    fn update_sources(&self, states: &[(String, FileState)]) -> Result<WriteReceipt>;
    /// Brings derived indexes (HNSW, lexical) up to date on disk, so that the next open
    /// does not rebuild them.
    fn flush(&self) -> Result<()>;
    /// Documents written but not yet in the vector index, for a backend that builds it in the
    /// background (a Milvus server, after [`Store::flush`] sealed what was written); searches
    /// find them meanwhile, more slowly. The embedded backend indexes as it writes: 0.
    fn unindexed(&self) -> Result<u64> {
        Ok(0)
    }
}
