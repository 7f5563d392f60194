//! A collection: a directory, the model it was created with, and a store behind the
//! [`Store`] interface.

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
use crate::roots::record_document_roots;
use crate::sqlite::{SqliteStore, StoreOptions};
use crate::store::{CollectionInfo, ModelIdentity, Store};

/// An open collection.
pub struct Collection {
    dir: PathBuf,
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
        record_document_roots(
            self.dir(),
            inputs
                .iter()
                .filter_map(|d| d.doc.as_ref().ok().map(|d| &d.fields)),
            &image_fields,
            Path::new(""),
        )?;
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
        record_document_roots(self.dir(), [patch], &image_fields, base)?;
        update_document(self.store(), encoder, id, patch, base)
    }

    /// Whether `dir` holds a collection.
    pub fn exists(dir: &Path) -> bool {
        SqliteStore::exists(dir)
    }

    /// Opens an existing collection.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens an existing collection with backend options.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            store: Box::new(SqliteStore::open(dir, options)?),
        })
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
        Ok(Self {
            dir: dir.to_path_buf(),
            store: Box::new(SqliteStore::create(dir, info, options)?),
        })
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
        let model = model.ok_or_else(|| SearchError::NotACollection(dir.to_path_buf()))?;
        Self::create(dir, model, spec.unwrap_or_else(EmbedSpec::image))
    }

    /// The collection directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
