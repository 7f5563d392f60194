//! A collection: where it lives (a directory, or a collection on a Milvus server named by a
//! `milvus://HOST:PORT/NAME` address given where a directory is expected), the model it was
//! created with, and a store behind the [`Store`] interface.

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use gclip::model::Precision;
use gclip::source::ModelSource;

use crate::document::{EmbedSpec, Fields};
use crate::encoder::Encoder;
use crate::error::{Result, SearchError};
use crate::ingest::{
    add_documents, update_document, Committed, IngestReport, InputDocument, UpdateReport,
};
use crate::milvus::{is_milvus_address, MilvusAddress, MilvusOptions, MilvusStore};
use crate::roots::record_document_roots;
use crate::sqlite::{SqliteStore, StoreOptions};
use crate::store::{CollectionInfo, ModelIdentity, Store};

/// Where a collection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory: the embedded backend (the default).
    Dir(PathBuf),
    /// A collection on a Milvus server.
    Milvus(MilvusAddress),
}

impl Location {
    /// A `milvus://` or `milvuss://` address given where a directory is expected is a Milvus
    /// collection (its token read from the address or the environment); anything else is a
    /// directory.
    pub fn of(dir: &Path) -> Result<Self> {
        match dir.to_str() {
            Some(s) if is_milvus_address(s) => Ok(Location::Milvus(MilvusAddress::parse(s)?)),
            _ => Ok(Location::Dir(dir.to_path_buf())),
        }
    }
}

impl Location {
    /// `dir` as messages name a collection: the directory, or the Milvus address without its
    /// token (an address that does not parse loses everything from its `?` and any user
    /// information), so that no error or report prints a secret.
    pub fn shown(dir: &Path) -> String {
        match Location::of(dir) {
            Ok(location) => location.to_string(),
            Err(_) => crate::milvus::address::redacted(&dir.to_string_lossy()),
        }
    }
}

impl fmt::Display for Location {
    /// The directory, or the address without its token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(d) => write!(f, "{}", d.display()),
            Location::Milvus(a) => write!(f, "{a}"),
        }
    }
}

/// An open collection.
pub struct Collection {
    location: Location,
    store: Box<dyn Store>,
}

impl Deref for Collection {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

/// Resolves `--model`/`--arch` into what a collection remembers (absolute paths, dimension).
pub fn model_identity(
    model: &str,
    arch: Option<&str>,
    precision: Precision,
) -> Result<(ModelIdentity, ModelSource)> {
    let absolute = |s: &str| -> String {
        let p = Path::new(s);
        if p.exists() {
            std::fs::canonicalize(p)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| s.to_string())
        } else {
            s.to_string()
        }
    };
    let model = absolute(model);
    let arch = arch.map(absolute);
    let source = ModelSource::resolve(&model, arch.as_deref())
        .map_err(|e| SearchError::Invalid(format!("model {model}: {e}")))?;
    let dim = source
        .describe()
        .map_err(|e| SearchError::Invalid(format!("model {model}: {e}")))?
        .config
        .embed_dim;
    Ok((
        ModelIdentity {
            model,
            arch,
            dim,
            precision,
        },
        source,
    ))
}

impl Collection {
    /// Adds documents as the collection's operator does (the command line, the Python
    /// package): first records the folders of their local images, so that the server may show
    /// them, then embeds and writes the documents in batches of `batch_size`; a document that
    /// fails is reported and the others proceed. Relative image paths must be resolved already.
    pub fn add_local(
        &self,
        encoder: &dyn Encoder,
        inputs: Vec<InputDocument>,
        batch_size: usize,
        on_commit: &mut dyn FnMut(&Committed),
    ) -> Result<IngestReport> {
        let image_fields: Vec<&str> = self.info().spec.image_fields().collect();
        // A Milvus collection has no directory to record them in: a server gets its folders
        // from --files-root.
        if let Some(dir) = self.dir() {
            record_document_roots(
                dir,
                inputs
                    .iter()
                    .filter_map(|d| d.doc.as_ref().ok().map(|d| &d.fields)),
                &image_fields,
                Path::new(""),
            )?;
        }
        add_documents(self.store(), encoder, inputs, batch_size, on_commit)
    }

    /// Updates a document as its operator does, recording the folders of the local images the
    /// patch names (relative paths taken from `base`).
    pub fn update_local(
        &self,
        encoder: &dyn Encoder,
        id: &str,
        patch: &Fields,
        base: &Path,
    ) -> Result<UpdateReport> {
        let image_fields: Vec<&str> = self.info().spec.image_fields().collect();
        if let Some(dir) = self.dir() {
            record_document_roots(dir, [patch], &image_fields, base)?;
        }
        update_document(self.store(), encoder, id, patch, base)
    }

    /// Whether `dir` holds a collection. For a Milvus address whose server cannot be asked
    /// (or a malformed address) this is true, so that opening it reports why.
    pub fn exists(dir: &Path) -> bool {
        match Location::of(dir) {
            Ok(Location::Dir(d)) => SqliteStore::exists(&d),
            Ok(Location::Milvus(a)) => MilvusOptions::from_env()
                .and_then(|options| MilvusStore::exists(&a, &options))
                .unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Opens an existing collection.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens an existing collection with backend options.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self> {
        let location = Location::of(dir)?;
        let store: Box<dyn Store> = match &location {
            Location::Dir(d) => Box::new(SqliteStore::open(d, options)?),
            Location::Milvus(a) => Box::new(MilvusStore::open(a, MilvusOptions::from_env()?)?),
        };
        Ok(Self { location, store })
    }

    /// Creates a collection.
    pub fn create(dir: &Path, model: ModelIdentity, spec: EmbedSpec) -> Result<Self> {
        Self::create_with(dir, model, spec, StoreOptions::default())
    }

    /// Creates a collection with backend options.
    pub fn create_with(
        dir: &Path,
        model: ModelIdentity,
        spec: EmbedSpec,
        options: StoreOptions,
    ) -> Result<Self> {
        let info = CollectionInfo {
            model,
            spec,
            created: 0,
        };
        let location = Location::of(dir)?;
        let store: Box<dyn Store> = match &location {
            Location::Dir(d) => Box::new(SqliteStore::create(d, info, options)?),
            Location::Milvus(a) => {
                Box::new(MilvusStore::create(a, info, MilvusOptions::from_env()?)?)
            }
        };
        Ok(Self { location, store })
    }

    /// Opens `dir`, or creates it with `model` and `spec` when it holds no collection. When the
    /// collection exists and a model is given, it must be the one the collection remembers.
    pub fn open_or_create(
        dir: &Path,
        model: Option<ModelIdentity>,
        spec: Option<EmbedSpec>,
    ) -> Result<Self> {
        if Self::exists(dir) {
            let c = Self::open(dir)?;
            if let Some(m) = model {
                let stored = &c.info().model;
                if stored.model != m.model || stored.arch != m.arch {
                    return Err(SearchError::ModelMismatch {
                        stored: stored.describe(),
                        given: m.describe(),
                    });
                }
            }
            if let Some(s) = spec {
                if s != c.info().spec {
                    return Err(SearchError::Invalid(format!(
                        "collection embeds {}, not {}; the spec is fixed when the collection is created",
                        c.info().spec.describe(),
                        s.describe()
                    )));
                }
            }
            return Ok(c);
        }
        let model = model.ok_or_else(|| match Location::of(dir) {
            Ok(Location::Milvus(a)) => SearchError::NoCollectionAt(a.to_string()),
            _ => SearchError::NotACollection(dir.to_path_buf()),
        })?;
        Self::create(dir, model, spec.unwrap_or_else(EmbedSpec::image))
    }

    /// The collection directory; `None` for a collection on a Milvus server.
    pub fn dir(&self) -> Option<&Path> {
        match &self.location {
            Location::Dir(d) => Some(d),
            Location::Milvus(_) => None,
        }
    }

    /// Where the collection lives; displays without any token.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The model source the collection was created with.
    pub fn model_source(&self) -> Result<ModelSource> {
        let m = &self.info().model;
        ModelSource::resolve(&m.model, m.arch.as_deref())
            .map_err(|e| SearchError::Invalid(format!("collection model {}: {e}", m.describe())))
    }
}

#[cfg(test)]
mod location_tests {
    use super::*;

    #[test]
    fn shown_locations_never_carry_a_token() {
        assert_eq!(Location::shown(Path::new("photos/coll")), "photos/coll");
        assert_eq!(
            Location::shown(Path::new("milvus://db.example:19530/shop?token=u:secret")),
            "milvus://db.example:19530/shop"
        );
        // Not a valid address (no collection name), still without its secrets.
        let bad = Location::shown(Path::new(
            "milvus://u:secret@db.example:19530?token=u:secret",
        ));
        assert!(!bad.contains("secret"), "{bad}");
        assert!(bad.starts_with("milvus://"), "{bad}");
    }
}
