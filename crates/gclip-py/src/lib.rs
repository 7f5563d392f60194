//! `gclip._gclip`: the native half of the Python package. Thin bindings over the `gclip` and
//! `gclip-search` libraries; the package in `python/gclip` turns Python's many image kinds
//! (paths, bytes, numpy arrays, PIL images) into the three this module takes, raises per-item
//! errors, and converts documents to and from JSON.
//!
//! Every call that runs the model or touches a collection releases the GIL (`Python::detach`),
//! so Python threads embed concurrently.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use gclip::embed::{Embedder, LoadOptions};
use gclip::eval::ranking::{evaluate, MetricSet, Qrels, Run};
use gclip::input::decode::{Decoded, Mode, Samples, Transparency};
use gclip::input::image::{max_image_pixels, ImageError, ImageInput};
use gclip::model::Precision;
use gclip::source::ModelSource;
use gclip::train::config::prepare;
use gclip::train::run::{config_from_table, read_config};
use gclip::train::trainer::{Control, Event};
use gclip::zeroshot::{TemplateSet, ZeroShotClassifier};
use gclip_search::encoder::{Encoder, LazyEncoder};
use gclip_search::ingest::{document_from_fields, InputDocument};
use gclip_search::query::{run_search, SearchOptions};
use gclip_search::{
    model_identity, Collection, EmbedSpec, Fields, Filter, Fusion, QueryInput, QueryPart,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

create_exception!(
    gclip,
    GclipError,
    PyException,
    "An error from gclip: a model that does not load, an input that cannot be used, a \
     collection that cannot be read. The message is gclip's own."
);

fn err(e: impl std::fmt::Display) -> PyErr {
    GclipError::new_err(e.to_string())
}

/// Items per forward pass that a caller may ask for.
const MAX_BATCH_SIZE: usize = 4096;
/// Search results a caller may ask for in one call (limit + offset).
const MAX_RESULTS: usize = 100_000;
/// CPU threads a caller may ask for.
const MAX_THREADS: usize = 1024;

fn check_range(name: &str, value: usize, min: usize, max: usize) -> PyResult<usize> {
    if value < min || value > max {
        return Err(err(format!(
            "{name} must be between {min} and {max}, not {value}"
        )));
    }
    Ok(value)
}

/// A float32 `[rows, cols…]` numpy array that takes over `data` without copying it.
fn array_f32<'py>(py: Python<'py>, data: Vec<f32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape)?.into_any())
}

/// An image item as the Python package hands it over: `("file", path)`,
/// `("bytes", data, name)` or `("pixels", mode, width, height, data, palette, transparency)`.
fn image_input(item: &Bound<'_, PyAny>, index: usize) -> Result<ImageInput, String> {
    let t = item
        .cast::<PyTuple>()
        .map_err(|_| "not an image item tuple".to_string())?;
    let kind: String = t
        .get_item(0)
        .map_err(|e| e.to_string())?
        .extract::<String>()
        .map_err(|e| e.to_string())?;
    let field = |i: usize| t.get_item(i).map_err(|e| e.to_string());
    match kind.as_str() {
        "file" => {
            let path: PathBuf = field(1)?.extract::<PathBuf>().map_err(|e| e.to_string())?;
            Ok(ImageInput::File(path))
        }
        "bytes" => {
            let b = field(1)?;
            let bytes = b
                .cast::<PyBytes>()
                .map_err(|_| "bytes expected".to_string())?;
            let name: String = field(2)?
                .extract::<String>()
                .unwrap_or_else(|_| format!("item {index} (bytes)"));
            Ok(ImageInput::Encoded {
                name,
                bytes: bytes.as_bytes().to_vec(),
            })
        }
        "pixels" => {
            let mode_name: String = field(1)?.extract::<String>().map_err(|e| e.to_string())?;
            let mode = Mode::from_name(&mode_name).ok_or_else(|| {
                format!(
                    "image mode {mode_name:?} is not supported (1, L, LA, P, RGB, RGBA, CMYK, \
                     I;16); convert it first, e.g. image.convert(\"RGB\")"
                )
            })?;
            let width: usize = field(2)?.extract::<usize>().map_err(|e| e.to_string())?;
            let height: usize = field(3)?.extract::<usize>().map_err(|e| e.to_string())?;
            let data = field(4)?;
            let data = data
                .cast::<PyBytes>()
                .map_err(|_| "pixel data must be bytes".to_string())?
                .as_bytes();
            let samples = if mode == Mode::I16 {
                if data.len() % 2 != 0 {
                    return Err("I;16 pixel data has an odd number of bytes".into());
                }
                Samples::U16(
                    data.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                )
            } else {
                Samples::U8(data.to_vec())
            };
            let palette: Vec<[u8; 3]> = match field(5)?.extract::<Option<Vec<u8>>>() {
                Ok(Some(p)) => p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
                Ok(None) => Vec::new(),
                Err(e) => return Err(format!("palette: {e}")),
            };
            let transparency = transparency(&field(6)?, mode)?;
            let decoded = Decoded::from_pixels(
                mode,
                width,
                height,
                samples,
                palette,
                transparency,
                max_image_pixels(),
            )
            .map_err(|e| ImageError::from_decode(e, &format!("item {index}")).to_string())?;
            Ok(ImageInput::Pixels(decoded))
        }
        // The package's reason why a Python object is no image.
        "error" => Err(field(1)?.extract::<String>().map_err(|e| e.to_string())?),
        other => Err(format!("unknown image item kind {other:?}")),
    }
}

/// Pillow's `info["transparency"]`: an index or palette alphas for `P`, a grey value, or an RGB
/// triple.
fn transparency(value: &Bound<'_, PyAny>, mode: Mode) -> Result<Option<Transparency>, String> {
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(Some(Transparency::Alphas(b.as_bytes().to_vec())));
    }
    if let Ok(v) = value.extract::<u16>() {
        return Ok(Some(match mode {
            Mode::P => Transparency::Index(
                u8::try_from(v).map_err(|_| format!("transparency index {v} is over 255"))?,
            ),
            _ => Transparency::Grey(v),
        }));
    }
    if let Ok((r, g, b)) = value.extract::<(u16, u16, u16)>() {
        return Ok(Some(Transparency::Rgb([r, g, b])));
    }
    Err("transparency must be None, an int, bytes or an (r, g, b) tuple".into())
}

/// Items that failed in a batch: (index, reason).
type ItemErrors = Vec<(usize, String)>;

/// Converts every item; those that cannot be converted are reported with their index and left
/// out (`None`).
fn image_inputs(items: &Bound<'_, PyAny>) -> PyResult<(Vec<Option<ImageInput>>, ItemErrors)> {
    let mut inputs = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.try_iter()?.enumerate() {
        match image_input(&item?, i) {
            Ok(input) => inputs.push(Some(input)),
            Err(e) => {
                errors.push((i, e));
                inputs.push(None);
            }
        }
    }
    Ok((inputs, errors))
}

fn parse_precision(precision: &str) -> PyResult<Precision> {
    precision.parse::<Precision>().map_err(err)
}

/// A loaded CLIP / GCL model with the tokenizer and image preprocessing of its reference
/// library. Load it with `gclip.load`.
#[pyclass(frozen, module = "gclip._gclip")]
struct Model {
    embedder: Embedder,
    name: String,
}

/// Embeds the items that could be converted; returns `[N, D]` rows in input order (NaN rows
/// for failures) and the failures `(index, message)`, sorted by index.
fn embed_images_rows(
    py: Python<'_>,
    embedder: &Embedder,
    items: &Bound<'_, PyAny>,
    normalize: bool,
) -> PyResult<(Vec<f32>, usize, ItemErrors)> {
    let (inputs, mut errors) = image_inputs(items)?;
    let n = inputs.len();
    let good: Vec<usize> = (0..n).filter(|&i| inputs[i].is_some()).collect();
    let images: Vec<ImageInput> = inputs.into_iter().flatten().collect();
    let dim = embedder.clip().config.embed_dim;
    let r = py
        .detach(|| embedder.embed_images(&images, normalize, &|_| {}))
        .map_err(err)?;
    let mut data = vec![f32::NAN; n * dim];
    for (row, &k) in r.embeddings.rows().zip(&r.indices) {
        let i = good[k];
        data[i * dim..(i + 1) * dim].copy_from_slice(row);
    }
    errors.extend(
        r.failures
            .into_iter()
            .map(|(k, e)| (good[k], e.to_string())),
    );
    errors.sort_by_key(|(i, _)| *i);
    Ok((data, n, errors))
}

#[pymethods]
impl Model {
    /// Text embeddings, float32 `[N, D]`, L2-normalised unless `normalize=False`.
    #[pyo3(signature = (texts, normalize = true))]
    fn encode_text<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let e = py
            .detach(|| self.embedder.embed_texts(&refs, normalize, &|_| {}))
            .map_err(err)?;
        let rows = e.len();
        array_f32(py, e.data, &[rows, e.dim])
    }

    /// Image embeddings of image items (see the package's `encode_image`): the `[N, D]` rows in
    /// input order (NaN for items that failed) and the failures `[(index, message)]`.
    #[pyo3(signature = (items, normalize = true))]
    fn encode_image_items<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<(Bound<'py, PyAny>, ItemErrors)> {
        let (data, n, errors) = embed_images_rows(py, &self.embedder, items, normalize)?;
        let dim = self.embedder.clip().config.embed_dim;
        Ok((array_f32(py, data, &[n, dim])?, errors))
    }

    /// Token ids as int64 `[N, context_length]`, exactly as the model receives them.
    fn tokenize<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let tokenizer = self.embedder.inputs().tokenizer().map_err(err)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = py.detach(|| tokenizer.encode_batch(&refs));
        let width = tokenizer.context_length();
        let flat: Vec<i64> = ids.iter().flatten().map(|&v| i64::from(v)).collect();
        Ok(PyArray1::from_vec(py, flat)
            .reshape([ids.len(), width])?
            .into_any())
    }

    /// Preprocessed pixels of image items, float32 `[N, 3, S, S]` (NaN for items that failed),
    /// and the failures `[(index, message)]`.
    fn preprocess_items<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, ItemErrors)> {
        let (inputs, mut errors) = image_inputs(items)?;
        let pre = self.embedder.inputs().preprocessor();
        let s = pre.config().crop_size;
        let plane = 3 * s * s;
        let results: Vec<Option<Result<Vec<f32>, ImageError>>> = py.detach(|| {
            use rayon::prelude::*;
            inputs
                .par_iter()
                .map(|i| i.as_ref().map(|i| pre.pixels_from_input(i)))
                .collect()
        });
        let mut data = vec![f32::NAN; results.len() * plane];
        for (i, r) in results.iter().enumerate() {
            match r {
                Some(Ok(px)) => data[i * plane..(i + 1) * plane].copy_from_slice(px),
                Some(Err(e)) => errors.push((i, e.to_string())),
                None => {}
            }
        }
        errors.sort_by_key(|(i, _)| *i);
        let n = results.len();
        Ok((array_f32(py, data, &[n, 3, s, s])?, errors))
    }

    /// Zero-shot probabilities of image items over `labels`, float32 `[N, L]` in label order
    /// (NaN rows for items that failed), and the failures. `templates`: None (each label is the
    /// prompt), a set name (`simple`, `openai-imagenet`) or a list of templates with `{}`.
    #[pyo3(signature = (items, labels, templates = None, logit_scale = None))]
    fn classify_items<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        labels: Vec<String>,
        templates: Option<&Bound<'py, PyAny>>,
        logit_scale: Option<f32>,
    ) -> PyResult<(Bound<'py, PyAny>, ItemErrors)> {
        let templates: Vec<String> = match templates {
            None => Vec::new(),
            Some(t) if t.is_none() => Vec::new(),
            Some(t) => match t.extract::<String>() {
                Ok(name) => TemplateSet::from_name(&name).map_err(err)?.templates(),
                Err(_) => t.extract::<Vec<String>>()?,
            },
        };
        if labels.is_empty() {
            return Err(err("classify needs at least one label"));
        }
        let classifier = py
            .detach(|| {
                ZeroShotClassifier::build(
                    &self.embedder,
                    &labels,
                    &templates,
                    logit_scale,
                    &|_, _, _| {},
                )
            })
            .map_err(err)?;
        let (embeddings, n, errors) = embed_images_rows(py, &self.embedder, items, true)?;
        let dim = self.embedder.clip().config.embed_dim;
        let l = labels.len();
        let mut probs = vec![f32::NAN; n * l];
        for i in 0..n {
            let row = &embeddings[i * dim..(i + 1) * dim];
            if row[0].is_nan() {
                continue;
            }
            let p = classifier.probabilities(row).map_err(err)?;
            probs[i * l..(i + 1) * l].copy_from_slice(&p);
        }
        Ok((array_f32(py, probs, &[n, l])?, errors))
    }

    /// `exp(logit_scale)` of the checkpoint: what CLIP multiplies cosines by.
    #[getter]
    fn logit_scale(&self) -> PyResult<f32> {
        self.embedder.clip().logit_scale_exp().map_err(err)
    }

    /// The embedding dimension.
    #[getter]
    fn embed_dim(&self) -> usize {
        self.embedder.clip().config.embed_dim
    }

    /// Tokens per text (padded or truncated to this).
    #[getter]
    fn context_length(&self) -> usize {
        self.embedder.clip().config.text.context_length
    }

    /// Side of the square image the model takes.
    #[getter]
    #[allow(clippy::misnamed_getters)] // the crop size is the model's input size, by design
    fn image_size(&self) -> usize {
        self.embedder.inputs().preprocessor().config().crop_size
    }

    /// Packs the fp32 weights for this CPU's f32 panel kernel now (see
    /// `Clip::pack_f32_weights`): for a long-lived process, before its first embedding; a model
    /// loaded with the converted-weights cache has them packed already. Returns how many
    /// weights are packed.
    fn pack_f32_weights(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.embedder.clip().pack_f32_weights())
            .map_err(err)
    }

    /// fp32, bf16 or int8.
    #[getter]
    fn precision(&self) -> String {
        self.embedder.precision().to_string()
    }

    /// Items per forward pass.
    #[getter]
    fn batch_size(&self) -> usize {
        self.embedder.batch_size
    }

    /// The model as given to `load`.
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "gclip.Model({:?}, dim={}, precision={})",
            self.name,
            self.embedder.clip().config.embed_dim,
            self.embedder.precision()
        )
    }
}

/// Loads a model: a Hugging Face model id (downloaded into the Hugging Face cache on first
/// use), a model directory, or an open_clip checkpoint file with `arch`.
#[pyfunction]
#[pyo3(signature = (model, arch = None, precision = "fp32", batch_size = 32))]
fn load(
    py: Python<'_>,
    model: &str,
    arch: Option<&str>,
    precision: &str,
    batch_size: usize,
) -> PyResult<Model> {
    let precision = parse_precision(precision)?;
    let batch_size = check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)?;
    let embedder = py
        .detach(|| -> Result<Embedder, String> {
            let source = ModelSource::resolve(model, arch).map_err(|e| e.to_string())?;
            let options = LoadOptions {
                precision,
                ..Default::default()
            };
            Embedder::load_with(&source, &candle_core::Device::Cpu, options)
                .map_err(|e| format!("loading model {model}: {e}"))
        })
        .map_err(err)?;
    let mut embedder = embedder;
    embedder.batch_size = batch_size;
    Ok(Model {
        embedder,
        name: model.to_string(),
    })
}

/// Sets the number of CPU threads gclip uses; possible once per process, before any model
/// runs. Returns the number in use.
#[pyfunction]
fn set_threads(threads: usize) -> PyResult<usize> {
    let threads = check_range("threads", threads, 1, MAX_THREADS)?;
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        Ok(()) => Ok(threads),
        Err(_) if rayon::current_num_threads() == threads => Ok(threads),
        Err(_) => Err(err(format!(
            "threads can be set once per process, before the first model runs; this process \
             already uses {} (set RAYON_NUM_THREADS before starting Python)",
            rayon::current_num_threads()
        ))),
    }
}

/// Ranking metrics (nDCG, MAP, recall, precision, MRR at GCL's cut-offs, RBP) of `run`
/// against `qrels`, as `pytrec_eval` takes them: `{query: {doc: grade}}` and
/// `{query: {doc: score}}`.
#[pyfunction]
#[pyo3(signature = (qrels, run, cutoffs = None))]
fn eval_ranking(
    py: Python<'_>,
    qrels: BTreeMap<String, HashMap<String, i64>>,
    run: BTreeMap<String, HashMap<String, f64>>,
    cutoffs: Option<Vec<usize>>,
) -> PyResult<BTreeMap<String, f64>> {
    let mut set = MetricSet::default();
    if let Some(c) = cutoffs {
        if c.is_empty() || c.len() > 1000 || c.contains(&0) {
            return Err(err("cutoffs must be 1 to 1000 positive numbers"));
        }
        set.cutoffs = c;
    }
    let run = Run(run
        .into_iter()
        .map(|(q, docs)| (q, docs.into_iter().collect()))
        .collect());
    let qrels = Qrels(qrels);
    Ok(py.detach(|| evaluate(&qrels, &run, &set)))
}

/// A Python callback's wish to stop a run, or the exception it (or a Ctrl-C) raised.
enum PythonStop {
    Asked,
    Raised(PyErr),
}

/// What one training event looks like to Python: a dict.
fn event_dict<'py>(py: Python<'py>, event: &Event<'_>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match event {
        Event::Step(s) => {
            d.set_item("event", "step")?;
            d.set_item("step", s.step)?;
            d.set_item("epoch", s.epoch)?;
            d.set_item("loss", s.loss)?;
            d.set_item("lr", s.lr)?;
            d.set_item("logit_scale", s.logit_scale)?;
            d.set_item("grad_norm", s.grad_norm)?;
            d.set_item("samples_per_s", s.samples_per_s)?;
        }
        Event::Eval { step, metrics } => {
            d.set_item("event", "eval")?;
            d.set_item("step", step)?;
            let m = PyDict::new(py);
            for (k, v) in metrics.iter() {
                m.set_item(k, v)?;
            }
            d.set_item("metrics", m)?;
        }
        Event::Checkpoint { step, path } => {
            d.set_item("event", "checkpoint")?;
            d.set_item("step", step)?;
            d.set_item("path", path)?;
        }
    }
    Ok(d)
}

/// Trains as `gclip train` does: the config is a TOML file (`config_path`) or the same
/// sections as JSON (`config_json`, relative paths taken from the working directory), with
/// `overrides` (`section.key=value`). `resume`: a checkpoint or run directory to continue;
/// `resume_newest`: continue from the newest checkpoint of the run's own directory.
/// `on_event` is called with a dict per step, evaluation and checkpoint (with the GIL; the
/// model work runs without it) and stops the run by returning False. A Ctrl-C stops the run
/// after the current step, with a checkpoint, and is raised then. Returns (steps done, the last
/// checkpoint, the log, whether it stopped early).
#[pyfunction]
#[pyo3(signature = (config_path = None, config_json = None, overrides = Vec::new(), output = None, resume = None, resume_newest = false, on_event = None))]
#[allow(clippy::too_many_arguments)] // the run's options, as Python passes them
fn train(
    py: Python<'_>,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    overrides: Vec<String>,
    output: Option<PathBuf>,
    resume: Option<PathBuf>,
    resume_newest: bool,
    on_event: Option<Bound<'_, PyAny>>,
) -> PyResult<(u64, Option<PathBuf>, PathBuf, bool)> {
    let mut cfg = match (config_path, config_json) {
        (Some(path), None) => py.detach(|| read_config(&path, &overrides)).map_err(err)?,
        (None, Some(json)) => {
            let table: toml::Table = serde_json::from_str(&json)
                .map_err(|e| err(format!("invalid training configuration: {e}")))?;
            config_from_table(table, &overrides, Path::new(""), "the config dict").map_err(err)?
        }
        _ => return Err(err("give one of config_path or config_json")),
    };
    if let Some(o) = output {
        cfg.train.output = o;
    }
    let resume = match (resume, resume_newest) {
        (Some(from), _) => Some(from),
        (None, true) => Some(cfg.train.output.clone()),
        (None, false) => None,
    };
    let on_event = on_event.map(Bound::unbind);
    let mut stop: Option<PythonStop> = None;
    let summary = py
        .detach(|| {
            let mut session = prepare(cfg, resume.as_deref())?;
            session.run(&mut |event| {
                Python::attach(|py| {
                    let asked = match &on_event {
                        None => Ok(true),
                        Some(f) => event_dict(py, &event)
                            .and_then(|d| f.call1(py, (d,)))
                            // Only False stops: None (no return) and anything else go on.
                            .map(|r| !matches!(r.extract::<bool>(py), Ok(false))),
                    };
                    match asked.and_then(|go| py.check_signals().map(|()| go)) {
                        Ok(true) => Control::Continue,
                        Ok(false) => {
                            stop.get_or_insert(PythonStop::Asked);
                            Control::Stop
                        }
                        Err(e) => {
                            stop.get_or_insert(PythonStop::Raised(e));
                            Control::Stop
                        }
                    }
                })
            })
        })
        .map_err(err)?;
    if let Some(PythonStop::Raised(e)) = stop {
        return Err(e);
    }
    Ok((
        summary.steps_done,
        summary.last_checkpoint,
        summary.log_path,
        summary.stopped_early,
    ))
}

/// A collection: documents with fields, their vectors, and the model that made them (a
/// directory, or a collection on a Milvus server named by its `milvus://` address, opened
/// through the same code as the command line's; see `gclip index`/`add`/`search`).
#[pyclass(frozen, module = "gclip._gclip", name = "Collection")]
struct PyCollection {
    /// None once closed. Calls share the read lock (searches run concurrently); `close` takes
    /// the write lock, so it waits for the calls in progress.
    open: RwLock<Option<OpenCollection>>,
    path: PathBuf,
    /// The address of a collection on a Milvus server, without the token.
    address: Option<String>,
}

struct OpenCollection {
    collection: Collection,
    encoder: LazyEncoder,
}

impl PyCollection {
    fn wrap(collection: Collection) -> Self {
        let encoder = LazyEncoder::new(collection.info().model.clone(), None);
        // A Milvus collection is named by its address (without the token).
        let (path, address) = match collection.location() {
            gclip_search::Location::Milvus(a) => (a.to_string().into(), Some(a.to_string())),
            gclip_search::Location::Dir(d) => (d.clone(), None),
        };
        Self {
            path,
            address,
            open: RwLock::new(Some(OpenCollection {
                collection,
                encoder,
            })),
        }
    }

    /// Runs `f` on the open collection, without the GIL.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&OpenCollection) -> gclip_search::Result<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let guard = self.open.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(open) => f(open).map_err(|e| e.to_string()),
                None => Err(format!("the collection {} is closed", self.path.display())),
            }
        })
        .map_err(err)
    }
}

fn to_json(value: &impl serde::Serialize) -> gclip_search::Result<String> {
    serde_json::to_string(value).map_err(|e| gclip_search::SearchError::Invalid(e.to_string()))
}

#[pymethods]
impl PyCollection {
    /// Creates a collection in `path` (a directory or a `milvus://` address) for `model` (and
    /// `arch` for a checkpoint file), embedding the fields of `embed` (`FIELD[:WEIGHT],…`);
    /// `image_fields` hold image paths.
    #[staticmethod]
    #[pyo3(signature = (path, model, arch = None, precision = "fp32", embed = "image", image_fields = vec!["image".to_string()]))]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        model: &str,
        arch: Option<&str>,
        precision: &str,
        embed: &str,
        image_fields: Vec<String>,
    ) -> PyResult<Self> {
        let precision = parse_precision(precision)?;
        let spec = EmbedSpec::parse(embed, &image_fields).map_err(err)?;
        py.detach(|| -> gclip_search::Result<Self> {
            if Collection::exists(&path) {
                // An address is shown without its token.
                return Err(gclip_search::SearchError::Invalid(format!(
                    "{} already holds a collection; open it with Collection.open",
                    gclip_search::Location::shown(&path)
                )));
            }
            let (identity, _) = model_identity(model, arch, precision)?;
            Ok(Self::wrap(Collection::create(&path, identity, spec)?))
        })
        .map_err(err)
    }

    /// Opens the collection in `path` (a directory or a `milvus://` address).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        py.detach(|| Collection::open(&path))
            .map(Self::wrap)
            .map_err(err)
    }

    /// Closes the collection: writes what is pending and releases its files (and the model),
    /// so that another process may open it. Calls after it raise; closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let mut guard = self.open.write().unwrap_or_else(|p| p.into_inner());
            match guard.take() {
                Some(open) => open.collection.flush(),
                None => Ok(()),
            }
        })
        .map_err(err)
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Adds documents given as JSON objects (an `id` field, else a hash of the object, is the
    /// id; relative image paths are resolved against `base`). Returns the ingestion report as
    /// JSON: written, failed `[label, error]`, ….
    #[pyo3(signature = (documents, base, batch_size = 64))]
    fn add_json(
        &self,
        py: Python<'_>,
        documents: Vec<String>,
        base: PathBuf,
        batch_size: usize,
    ) -> PyResult<String> {
        let batch_size = check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)?;
        self.with(py, |open| {
            let c = &open.collection;
            let image_fields: Vec<&str> = c.info().spec.image_fields().collect();
            let inputs: Vec<InputDocument> = documents
                .iter()
                .enumerate()
                .map(|(i, raw)| InputDocument {
                    label: format!("document {i}"),
                    doc: match serde_json::from_str::<serde_json::Value>(raw) {
                        Ok(serde_json::Value::Object(f)) => {
                            document_from_fields(f, raw, &base, &image_fields)
                        }
                        Ok(_) => Err("a document must be a dict".into()),
                        Err(e) => Err(format!("invalid document: {e}")),
                    },
                })
                .collect();
            let report = c.add_local(&open.encoder, inputs, batch_size, &mut |_| {})?;
            c.flush()?;
            to_json(&report)
        })
    }

    /// Searches: weighted parts `(kind, value, weight)` with kind `text`, `image` (a path),
    /// `image_bytes`, `document` (an id: more like it); a filter; paging; `hybrid` (vector and
    /// BM25 results fused by `fusion`, `rrf` or `weighted`) or `lexical` (BM25 alone). Returns
    /// the hits as JSON.
    #[pyo3(signature = (parts, filter = None, limit = 10, offset = 0, exact = false, hybrid = false, lexical = false, fusion = "rrf"))]
    #[allow(clippy::too_many_arguments)] // the search's options, as Python passes them
    fn search_json(
        &self,
        py: Python<'_>,
        parts: Vec<(String, Bound<'_, PyAny>, f32)>,
        filter: Option<&str>,
        limit: usize,
        offset: usize,
        exact: bool,
        hybrid: bool,
        lexical: bool,
        fusion: &str,
    ) -> PyResult<String> {
        check_range("limit", limit, 1, MAX_RESULTS)?;
        check_range("offset", offset, 0, MAX_RESULTS - limit)?;
        let filter = filter.map(Filter::parse).transpose().map_err(err)?;
        let fusion = match fusion {
            "rrf" => Fusion::Rrf { k: 60.0 },
            "weighted" => Fusion::Weighted {
                vector: 0.5,
                lexical: 0.5,
            },
            other => return Err(err(format!("fusion {other:?}: use rrf or weighted"))),
        };
        let mut query = Vec::new();
        for (kind, value, weight) in parts {
            let input = match kind.as_str() {
                "text" => QueryInput::Text(value.extract()?),
                "image" => QueryInput::ImageFile(value.extract()?),
                "image_bytes" => {
                    QueryInput::ImageBytes(value.cast::<PyBytes>()?.as_bytes().to_vec())
                }
                "document" => QueryInput::Document(value.extract()?),
                other => return Err(err(format!("unknown query part kind {other:?}"))),
            };
            query.push(QueryPart { input, weight });
        }
        if query.is_empty() {
            return Err(err("nothing to search for: give q, image or like"));
        }
        let options = SearchOptions {
            filter,
            limit,
            offset,
            exact,
            hybrid,
            lexical,
            fusion,
        };
        self.with(py, |open| {
            let hits = run_search(
                open.collection.store(),
                Some(&open.encoder as &dyn Encoder),
                &query,
                options,
            )?;
            to_json(&hits)
        })
    }

    /// Deletes documents by id; returns how many existed.
    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        self.with(py, |open| {
            let r = open.collection.delete(&ids)?;
            open.collection.flush()?;
            Ok(r.count)
        })
    }

    /// Sets fields of a document (JSON object; null removes a field); re-embeds it when an
    /// embedded field changed, which it returns.
    fn update_json(&self, py: Python<'_>, id: &str, patch: &str, base: PathBuf) -> PyResult<bool> {
        let patch: Fields = serde_json::from_str(patch).map_err(err)?;
        self.with(py, |open| {
            let c = &open.collection;
            let r = c.update_local(&open.encoder, id, &patch, &base)?;
            c.flush()?;
            Ok(r.reembedded)
        })
    }

    /// A document's fields as JSON (with its `id`), or None.
    fn get_json(&self, py: Python<'_>, id: &str) -> PyResult<Option<String>> {
        self.with(py, |open| {
            open.collection.get(id)?.map(|d| to_json(&d)).transpose()
        })
    }

    /// The collection directory (a path), or its Milvus address without the token (a string:
    /// as a path, `milvus://` would lose a slash).
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.address {
            Some(a) => Ok(a.into_pyobject(py)?.into_any()),
            None => Ok(self.path.clone().into_pyobject(py)?.into_any()),
        }
    }

    /// The model, spec and creation time, as JSON.
    fn info_json(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |open| to_json(open.collection.info()))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |open| Ok(open.collection.len()))
    }
}

/// The native module.
#[pymodule]
fn _gclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GclipError", m.py().get_type::<GclipError>())?;
    m.add_class::<Model>()?;
    m.add_class::<PyCollection>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(eval_ranking, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add("DEFAULT_MODEL", gclip::source::DEFAULT_MODEL)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
