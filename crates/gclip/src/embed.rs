//! The embedding pipeline: a model with the inputs of its reference convention, batching, and
//! image decoding on a worker thread while the model runs.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::input::image::{ImageError, ImageInput};
use crate::input::pipeline::InputPipeline;
use crate::input::tokenizer::ClipTokenizer;
use crate::model::{Clip, Embeddings, ModelError, Precision};
use crate::source::{Convention, LoadedModel, ModelSource};

/// Everything that can stop an embedding call as a whole (a bad image only fails its item).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("this model cannot embed text: {0}")]
    NoTokenizer(String),
}

/// A model ready to embed raw texts and image files.
pub struct Embedder {
    clip: Clip,
    convention: Convention,
    inputs: InputPipeline,
    /// Items per forward pass.
    pub batch_size: usize,
}

/// The outcome of embedding a list of images: the vectors of those that worked, in input order,
/// and the failures with their input index.
pub struct ImageEmbeddings {
    pub embeddings: Embeddings,
    /// Input index of each row of `embeddings`.
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, ImageError)>,
}

pub use crate::source::LoadOptions;

/// Turns a chunk of image inputs into preprocessed pixels, one result per item.
type PrepareChunk<'a, T> = dyn Fn(&[T]) -> Vec<Result<Vec<f32>, ImageError>> + Sync + 'a;

impl Embedder {
    /// Loads a model in fp32, with the input pipeline that belongs to it.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Self, EmbedError> {
        Self::load_with(source, device, LoadOptions::default())
    }

    /// Loads a model at the precision of `options`.
    pub fn load_with(
        source: &ModelSource,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self, EmbedError> {
        Self::new(source.load_in(device, candle_core::DType::F32, &options)?)
    }

    /// The precision the model runs in.
    pub fn precision(&self) -> Precision {
        self.clip.precision()
    }

    /// Wraps a loaded model with its input pipeline.
    pub fn new(loaded: LoadedModel) -> Result<Self, EmbedError> {
        let LoadedModel {
            clip,
            convention,
            dir,
            ..
        } = loaded;
        let inputs = InputPipeline::new(
            convention,
            dir.as_deref(),
            clip.config.text.context_length,
            clip.config.vision.image_size,
        )?;
        Ok(Self {
            clip,
            convention,
            inputs,
            batch_size: 32,
        })
    }

    /// Wraps a model that has no directory of its own (a training checkpoint, random weights)
    /// with open_clip's inputs: its tokenizer and transform at the model's sizes.
    pub fn with_open_clip_inputs(clip: Clip) -> Result<Self, EmbedError> {
        Self::new(LoadedModel {
            clip,
            convention: Convention::OpenClip,
            dir: None,
            unused_tensors: Vec::new(),
        })
    }

    /// The model.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    /// Which reference pipeline the inputs follow.
    pub fn convention(&self) -> Convention {
        self.convention
    }

    /// Tokenizer and image preprocessing.
    pub fn inputs(&self) -> &InputPipeline {
        &self.inputs
    }

    fn tokenizer(&self) -> Result<&ClipTokenizer, EmbedError> {
        self.inputs
            .tokenizer()
            .map_err(|e| EmbedError::NoTokenizer(e.to_string()))
    }

    /// Embeds texts in batches; `progress` is told how many are done after each batch.
    pub fn embed_texts(
        &self,
        texts: &[&str],
        normalize: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Embeddings, EmbedError> {
        let tokenizer = self.tokenizer()?;
        let dim = self.clip.config.embed_dim;
        let mut out = Embeddings {
            dim,
            data: Vec::with_capacity(texts.len() * dim),
        };
        for chunk in texts.chunks(self.batch_size.max(1)) {
            let ids = tokenizer.encode_batch(chunk);
            let e = self.clip.encode_text_ids(&ids, normalize)?;
            out.data.extend_from_slice(&e.data);
            progress(out.len());
        }
        Ok(out)
    }

    /// Embeds image files. Decoding and preprocessing of the next batch run on a worker thread
    /// (itself parallel over the batch) while the model runs the current one. A file that fails
    /// is reported in `failures`; the others go on.
    pub fn embed_image_files(
        &self,
        paths: &[PathBuf],
        normalize: bool,
        progress: &dyn Fn(usize),
    ) -> Result<ImageEmbeddings, EmbedError> {
        let preprocessor = self.inputs.preprocessor();
        self.embed_prepared(
            paths,
            &|chunk| preprocessor.batch_from_paths(chunk),
            normalize,
            progress,
        )
    }

    /// [`embed_image_files`](Self::embed_image_files) for images however they are held: files,
    /// encoded bytes or decoded pixels.
    pub fn embed_images(
        &self,
        images: &[ImageInput],
        normalize: bool,
        progress: &dyn Fn(usize),
    ) -> Result<ImageEmbeddings, EmbedError> {
        let preprocessor = self.inputs.preprocessor();
        self.embed_prepared(
            images,
            &|chunk| preprocessor.batch_from_inputs(chunk),
            normalize,
            progress,
        )
    }

    /// The batching of both: `prepare` turns a chunk of items into pixels on a worker thread
    /// while the model runs the previous chunk.
    fn embed_prepared<T: Sync>(
        &self,
        items: &[T],
        prepare: &PrepareChunk<'_, T>,
        normalize: bool,
        progress: &dyn Fn(usize),
    ) -> Result<ImageEmbeddings, EmbedError> {
        let dim = self.clip.config.embed_dim;
        let size = self.inputs.preprocessor().config().crop_size;
        let batch = self.batch_size.max(1);
        let mut result = ImageEmbeddings {
            embeddings: Embeddings {
                dim,
                data: Vec::new(),
            },
            indices: Vec::new(),
            failures: Vec::new(),
        };
        type Prepared = (usize, Vec<Result<Vec<f32>, ImageError>>);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Prepared>(1);
        std::thread::scope(|scope| -> Result<(), EmbedError> {
            scope.spawn(move || {
                for (i, chunk) in items.chunks(batch).enumerate() {
                    if tx.send((i * batch, prepare(chunk))).is_err() {
                        break;
                    }
                }
            });
            let mut done = 0;
            for (start, pixels) in rx {
                done += pixels.len();
                let mut rows = Vec::new();
                let mut ok = Vec::new();
                for (j, r) in pixels.into_iter().enumerate() {
                    match r {
                        Ok(p) => {
                            rows.extend_from_slice(&p);
                            ok.push(start + j);
                        }
                        Err(e) => result.failures.push((start + j, e)),
                    }
                }
                if !ok.is_empty() {
                    let t = Tensor::from_vec(rows, (ok.len(), 3, size, size), &Device::Cpu)
                        .map_err(ModelError::from)?;
                    let e = self.clip.encode_pixels(&t, normalize)?;
                    result.embeddings.data.extend_from_slice(&e.data);
                    result.indices.extend(ok);
                }
                progress(done);
            }
            Ok(())
        })?;
        Ok(result)
    }
}
