//! Dynamic batching: one thread owns the model; concurrent requests queue their texts and
//! images, and the thread runs them together, waiting a short time for a batch to fill.
//! Query work goes before ingestion work, so that searches stay quick while documents are added.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use gclip::embed::Embedder;
use gclip::input::image::Preprocessor;
use gclip_search::encoder::Encoder;
use gclip_search::{Result, SearchError};

/// Batching settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most items (texts or images) in one forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_wait: Duration,
    /// Largest image accepted, in pixels.
    pub max_image_pixels: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            max_image_pixels: gclip::input::image::max_image_pixels(),
        }
    }
}

type Reply = Sender<Result<Vec<Vec<f32>>, String>>;

enum Work {
    Texts(Vec<String>),
    /// Preprocessed pixels, `3 × size × size` floats each.
    Pixels(Vec<Vec<f32>>),
}

struct Job {
    work: Work,
    urgent: bool,
    reply: Reply,
}

impl Job {
    fn items(&self) -> usize {
        match &self.work {
            Work::Texts(t) => t.len(),
            Work::Pixels(p) => p.len(),
        }
    }
}

/// Counters of the batcher, for metrics.
#[derive(Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub items: AtomicU64,
    pub busy_us: AtomicU64,
}

/// A model behind a batching thread; cheap to share.
pub struct ModelWorker {
    tx: Sender<Job>,
    dim: usize,
    preprocessor: Preprocessor,
    logit_scale: f32,
    pub stats: Arc<BatchStats>,
}

impl ModelWorker {
    /// Starts the thread that owns `embedder`.
    pub fn start(embedder: Embedder, config: BatchConfig) -> Self {
        let dim = embedder.clip().config.embed_dim;
        let mut pcfg = embedder.inputs().preprocessor().config().clone();
        pcfg.max_pixels = config.max_image_pixels;
        let image_size = pcfg.crop_size;
        let preprocessor = Preprocessor::new(pcfg);
        let logit_scale = embedder.clip().logit_scale_exp().unwrap_or(100.0);
        let (tx, rx) = channel::<Job>();
        let stats = Arc::new(BatchStats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("gclip-model".into())
            .spawn(move || run(embedder, rx, config, image_size, &s))
            .ok();
        Self {
            tx,
            dim,
            preprocessor,
            logit_scale,
            stats,
        }
    }

    /// The model's `exp(logit_scale)`, for classification.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn submit(&self, work: Work, urgent: bool) -> Result<Vec<Vec<f32>>> {
        let (reply, rx) = channel();
        self.tx
            .send(Job {
                work,
                urgent,
                reply,
            })
            .map_err(|_| SearchError::Invalid("the model thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| SearchError::Invalid("the model thread has stopped".into()))?
            .map_err(SearchError::Invalid)
    }

    /// Embeds query texts (urgent: before ingestion work).
    pub fn query_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.submit(
            Work::Texts(texts.iter().map(|t| t.to_string()).collect()),
            true,
        )
    }

    fn pixels(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        self.preprocessor
            .pixels_from_bytes(bytes, name)
            .map_err(|e| SearchError::Invalid(format!("image {name}: {e}")))
    }
}

/// The encoder used for ingestion (not urgent); queries use [`QueryEncoder`].
impl Encoder for ModelWorker {
    fn dim(&self) -> usize {
        self.dim
    }
    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.submit(
            Work::Texts(texts.iter().map(|t| t.to_string()).collect()),
            false,
        )
    }
    fn image_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>> {
        use rayon::prelude::*;
        let pixels: Vec<Result<Vec<f32>, String>> = paths
            .par_iter()
            .map(|p| {
                self.preprocessor
                    .pixels_from_path(p)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let good: Vec<Vec<f32>> = pixels
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut vectors = if good.is_empty() {
            Vec::new()
        } else {
            self.submit(Work::Pixels(good), false)?
        }
        .into_iter();
        Ok(pixels
            .into_iter()
            .map(|p| p.map(|_| vectors.next().unwrap_or_default()))
            .collect())
    }
    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let p = self.pixels(bytes, name)?;
        self.submit(Work::Pixels(vec![p]), false)?
            .pop()
            .ok_or_else(|| SearchError::Invalid("no embedding".into()))
    }
}

/// The same model, with query priority.
pub struct QueryEncoder<'a>(pub &'a ModelWorker);

impl Encoder for QueryEncoder<'_> {
    fn dim(&self) -> usize {
        self.0.dim
    }
    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.0.query_texts(texts)
    }
    fn image_files(&self, _paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>> {
        Err(SearchError::Invalid(
            "the server does not read query images from its disk; send the image bytes".into(),
        ))
    }
    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let p = self.0.pixels(bytes, name)?;
        self.0
            .submit(Work::Pixels(vec![p]), true)?
            .pop()
            .ok_or_else(|| SearchError::Invalid("no embedding".into()))
    }
}

fn run(
    embedder: Embedder,
    rx: Receiver<Job>,
    config: BatchConfig,
    size: usize,
    stats: &BatchStats,
) {
    let mut urgent: VecDeque<Job> = VecDeque::new();
    let mut normal: VecDeque<Job> = VecDeque::new();
    let max = config.max_batch.max(1);
    let enqueue = |job: Job, urgent: &mut VecDeque<Job>, normal: &mut VecDeque<Job>| {
        if job.urgent {
            urgent.push_back(job)
        } else {
            normal.push_back(job)
        }
    };
    loop {
        if urgent.is_empty() && normal.is_empty() {
            match rx.recv() {
                Ok(j) => enqueue(j, &mut urgent, &mut normal),
                Err(_) => return,
            }
            // Give concurrent requests a moment to join this batch.
            let deadline = Instant::now() + config.max_wait;
            loop {
                let queued: usize = urgent.iter().chain(normal.iter()).map(Job::items).sum();
                if queued >= max {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(j) => enqueue(j, &mut urgent, &mut normal),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        while let Ok(j) = rx.try_recv() {
            enqueue(j, &mut urgent, &mut normal);
        }
        // One batch of one kind of work: urgent first, then the oldest ingestion job.
        let queue = if urgent.is_empty() {
            &mut normal
        } else {
            &mut urgent
        };
        let Some(first) = queue.pop_front() else {
            continue;
        };
        let texts = matches!(first.work, Work::Texts(_));
        let mut jobs = vec![first];
        let mut n = jobs[0].items();
        let mut i = 0;
        while i < queue.len() && n < max {
            if matches!(queue[i].work, Work::Texts(_)) == texts && n + queue[i].items() <= max {
                if let Some(j) = queue.remove(i) {
                    n += j.items();
                    jobs.push(j);
                }
            } else {
                i += 1;
            }
        }
        let t = Instant::now();
        let result = if texts {
            let all: Vec<&str> = jobs
                .iter()
                .flat_map(|j| match &j.work {
                    Work::Texts(t) => t.iter().map(String::as_str).collect::<Vec<_>>(),
                    Work::Pixels(_) => Vec::new(),
                })
                .collect();
            embedder
                .embed_texts(&all, true, &|_| {})
                .map(|e| e.rows().map(<[f32]>::to_vec).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        } else {
            let mut data = Vec::new();
            let mut count = 0;
            for j in &jobs {
                if let Work::Pixels(p) = &j.work {
                    for px in p {
                        data.extend_from_slice(px);
                        count += 1;
                    }
                }
            }
            Tensor::from_vec(data, (count, 3, size, size), &Device::Cpu)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    embedder
                        .clip()
                        .encode_pixels(&t, true)
                        .map_err(|e| e.to_string())
                })
                .map(|e| e.rows().map(<[f32]>::to_vec).collect::<Vec<_>>())
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.items.fetch_add(n as u64, Ordering::Relaxed);
        stats
            .busy_us
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for j in jobs {
                    let k = j.items();
                    let part: Vec<Vec<f32>> = rows.by_ref().take(k).collect();
                    let _ = j.reply.send(Ok(part));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
