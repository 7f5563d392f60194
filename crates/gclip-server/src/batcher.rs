//! Dynamic batching: one thread owns the model; concurrent requests queue their texts and
//! images, and the thread runs them together, waiting a short time for a batch to fill.
//! Query work goes before ingestion work, so that searches stay quick while documents are added.
//!
//! The model thread only runs the model: texts are cleaned and tokenised on the requesting
//! threads, images decoded on a few low-priority decoding threads (so that large images can
//! neither exhaust memory together nor take the CPU from searches), and work that waited past
//! its deadline is answered "busy" instead of run.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
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
    /// Longest time work may wait (for a decoding slot or for the model) before it is
    /// answered "busy".
    pub deadline: Duration,
    /// Images decoded at once (each may take width × height × 8 bytes while decoding). Half the
    /// cores by default: the model thread keeps the other half, so a stream of large images
    /// (the costliest request a client without a key can send) cannot take every core from
    /// the searches queued behind it.
    pub parallel_decodes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            max_image_pixels: gclip::input::image::max_image_pixels(),
            deadline: Duration::from_secs(30),
            parallel_decodes: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
        }
    }
}

/// The threads that decode and preprocess images, at a lower CPU priority than the model and
/// request threads (nice 10 on Linux): a flood of large images then takes the CPU only when
/// searches leave it idle, instead of sharing it with them evenly. There are few of them (half
/// the cores by default), so at most that many images are decoded, and held decoded, at once.
struct DecodePool {
    tx: Sender<DecodeJob>,
}

struct DecodeJob {
    deadline: Instant,
    run: Box<dyn FnOnce(bool) + Send>,
}

/// How much lower the decoding threads' CPU priority is than the process's (Linux nice
/// values: 0 is the default, 19 the lowest).
const DECODE_NICENESS: i32 = 10;

impl DecodePool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = channel::<DecodeJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("gclip-decode-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        // Work whose deadline passed while it queued is refused, not run.
                        let in_time = Instant::now() < job.deadline;
                        (job.run)(in_time);
                    }
                })
                .ok();
        }
        Self { tx }
    }

    /// Runs `f` on a decoding thread and waits for it; "busy" when no thread took it up
    /// before `deadline`.
    fn run<T: Send + 'static>(
        &self,
        deadline: Instant,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = channel();
        let job = DecodeJob {
            deadline,
            run: Box::new(move |in_time| {
                let _ = reply.send(in_time.then(f));
            }),
        };
        self.tx
            .send(job)
            .map_err(|_| SearchError::Invalid("the image decoding threads have stopped".into()))?;
        match rx.recv() {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(SearchError::Busy(
                "no image decoding thread became free in time".into(),
            )),
            Err(_) => Err(SearchError::Invalid(
                "an image decoding thread stopped".into(),
            )),
        }
    }
}

/// Lowers the calling thread's CPU priority (Linux applies nice values per thread); best
/// effort, elsewhere or when refused the thread keeps the default.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // Relative to the process's own niceness (a thread starts with its creator's).
        let tid = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(tid)).and_then(|now| {
            rustix::process::setpriority_process(Some(tid), (now + DECODE_NICENESS).min(19))
        });
        if let Err(e) = lowered {
            tracing::debug!("image decoding keeps the default priority: {e}");
        }
    }
}

type Reply = Sender<Result<Vec<Vec<f32>>, JobError>>;

enum Work {
    /// Token ids, the model's context length each.
    Tokens(Vec<Vec<u32>>),
    /// Preprocessed pixels, `3 × size × size` floats each.
    Pixels(Vec<Vec<f32>>),
}

struct Job {
    work: Work,
    urgent: bool,
    deadline: Instant,
    reply: Reply,
}

impl Job {
    fn items(&self) -> usize {
        match &self.work {
            Work::Tokens(t) => t.len(),
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
    /// Shared with the model thread, which runs only its model.
    embedder: Arc<Embedder>,
    preprocessor: Preprocessor,
    decodes: DecodePool,
    deadline: Duration,
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
        let embedder = Arc::new(embedder);
        let model = embedder.clone();
        let decodes = DecodePool::new(config.parallel_decodes);
        let deadline = config.deadline;
        std::thread::Builder::new()
            .name("gclip-model".into())
            .spawn(move || run(&model, rx, config, image_size, &s))
            .ok();
        Self {
            tx,
            dim,
            embedder,
            preprocessor,
            decodes,
            deadline,
            logit_scale,
            stats,
        }
    }

    /// The model's `exp(logit_scale)`, for classification.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn submit(&self, work: Work, urgent: bool, deadline: Instant) -> Result<Vec<Vec<f32>>> {
        let (reply, rx) = channel();
        self.tx
            .send(Job {
                work,
                urgent,
                deadline,
                reply,
            })
            .map_err(|_| SearchError::Invalid("the model thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| SearchError::Invalid("the model thread has stopped".into()))?
            .map_err(|e| match e {
                JobError::Busy(m) => SearchError::Busy(m),
                JobError::Failed(m) => SearchError::Invalid(m),
            })
    }

    fn texts(&self, texts: &[&str], urgent: bool) -> Result<Vec<Vec<f32>>> {
        let deadline = Instant::now() + self.deadline;
        let tokenizer = self
            .embedder
            .inputs()
            .tokenizer()
            .map_err(|e| SearchError::Invalid(format!("this model cannot embed text: {e}")))?;
        let ids = tokenizer.encode_batch(texts);
        self.submit(Work::Tokens(ids), urgent, deadline)
    }

    /// Embeds query texts (urgent: before ingestion work).
    pub fn query_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.texts(texts, true)
    }

    fn pixels(&self, bytes: &[u8], name: &str, deadline: Instant) -> Result<Vec<f32>> {
        // The decoding thread outlives no borrow: it gets its own copy of the bytes.
        let (bytes, name) = (bytes.to_vec(), name.to_string());
        let preprocessor = self.preprocessor.clone();
        self.decodes.run(deadline, move || {
            preprocessor
                .pixels_from_bytes(&bytes, &name)
                .map_err(|e| SearchError::Invalid(format!("image {name}: {e}")))
        })?
    }

    fn image(&self, bytes: &[u8], name: &str, urgent: bool) -> Result<Vec<f32>> {
        let deadline = Instant::now() + self.deadline;
        let p = self.pixels(bytes, name, deadline)?;
        self.submit(Work::Pixels(vec![p]), urgent, deadline)?
            .pop()
            .ok_or_else(|| SearchError::Invalid("no embedding".into()))
    }
}

/// Why the model thread did not embed a job.
#[derive(Debug, Clone)]
enum JobError {
    /// It waited past its deadline.
    Busy(String),
    Failed(String),
}

/// The encoder used for ingestion (not urgent); queries use [`QueryEncoder`].
impl Encoder for ModelWorker {
    fn dim(&self) -> usize {
        self.dim
    }
    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        ModelWorker::texts(self, texts, false)
    }
    fn image_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>> {
        use rayon::prelude::*;
        let deadline = Instant::now() + self.deadline;
        let pixels: Vec<Result<Vec<f32>, String>> = paths
            .par_iter()
            .map(|p| {
                let (path, preprocessor) = (p.clone(), self.preprocessor.clone());
                self.decodes
                    .run(deadline, move || {
                        preprocessor
                            .pixels_from_path(&path)
                            .map_err(|e| e.to_string())
                    })
                    .unwrap_or_else(|busy| Err(busy.to_string()))
            })
            .collect();
        let good: Vec<Vec<f32>> = pixels
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut vectors = if good.is_empty() {
            Vec::new()
        } else {
            self.submit(Work::Pixels(good), false, deadline)?
        }
        .into_iter();
        Ok(pixels
            .into_iter()
            .map(|p| p.map(|_| vectors.next().unwrap_or_default()))
            .collect())
    }
    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        self.image(bytes, name, false)
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
        self.0.image(bytes, name, true)
    }
}

fn run(
    embedder: &Embedder,
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
        let now = Instant::now();
        queue.retain(|job| {
            let alive = job.deadline > now;
            if !alive {
                let _ = job.reply.send(Err(JobError::Busy(
                    "the request waited for the model past its deadline".into(),
                )));
            }
            alive
        });
        let Some(first) = queue.pop_front() else {
            continue;
        };
        let texts = matches!(first.work, Work::Tokens(_));
        let mut jobs = vec![first];
        let mut n = jobs[0].items();
        let mut i = 0;
        while i < queue.len() && n < max {
            if matches!(queue[i].work, Work::Tokens(_)) == texts && n + queue[i].items() <= max {
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
            let ids: Vec<Vec<u32>> = jobs
                .iter()
                .flat_map(|j| match &j.work {
                    Work::Tokens(t) => t.clone(),
                    Work::Pixels(_) => Vec::new(),
                })
                .collect();
            embedder
                .clip()
                .encode_text_ids(&ids, true)
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
                    let _ = j.reply.send(Err(JobError::Failed(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod decode_pool_tests {
    use super::*;

    #[test]
    fn decoding_runs_at_lower_priority_and_refuses_work_past_its_deadline() {
        let pool = DecodePool::new(1);
        let later = Instant::now() + Duration::from_secs(30);
        #[cfg(target_os = "linux")]
        {
            let here =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            let there = pool
                .run(later, || {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
                })
                .unwrap();
            assert_eq!(there, (here + DECODE_NICENESS).min(19));
        }
        assert_eq!(pool.run(later, || 7).unwrap(), 7);
        // A job queued behind a slow one, with a deadline that passes meanwhile, is refused.
        let pool = Arc::new(pool);
        let p = pool.clone();
        let slow = std::thread::spawn(move || {
            p.run(later, || std::thread::sleep(Duration::from_millis(300)))
        });
        std::thread::sleep(Duration::from_millis(50));
        let soon = Instant::now() + Duration::from_millis(100);
        let refused = pool.run(soon, || 1);
        assert!(matches!(refused, Err(SearchError::Busy(_))), "{refused:?}");
        slow.join().unwrap().unwrap();
    }
}
