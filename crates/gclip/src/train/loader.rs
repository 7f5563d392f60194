//! Batches for the trainer: a worker thread reads, decodes and augments the images of the next
//! batches (itself parallel over a batch) and tokenises their texts while the model trains on
//! the current one, through a bounded queue.
//!
//! The order of an epoch is a permutation drawn from `(seed, epoch)`; an incomplete last batch
//! is dropped (as open_clip does); augmentation is drawn from `(seed, epoch, pair, field)`. A
//! batch is therefore the same whichever worker builds it and whenever, which is what lets a
//! resumed run continue exactly. An image that fails to decode drops its pair from the batch
//! and is counted as `unreadable image`.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::augment::{augment_image, AugmentConfig};
use super::data::{Dataset, FieldValue};
use super::loss::{FieldKind, GclSpec};
use super::rng::Rng;
use super::step::{Batch, FieldBatch, FieldData};
use super::trainer::BatchSource;
use super::TrainError;
use crate::input::image::{PreprocessConfig, Preprocessor};
use crate::input::tokenizer::ClipTokenizer;

/// How an epoch's pairs are grouped into batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSampler {
    /// Consecutive slices of a random permutation of the pairs (open_clip).
    #[default]
    Random,
    /// At most one pair per query and one per document in a batch: the permutation is scanned
    /// in order and a pair whose query or document is already in the batch waits for a later
    /// batch. When the pairs left cannot fill a batch, a fresh permutation (drawn from the seed,
    /// the epoch and a counter) is appended to them. An epoch has as many batches as `random`.
    Unique,
}

/// How batches are made.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub sampler: BatchSampler,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
    /// Training augmentation; `None`: the model's inference preprocessing.
    pub augment: Option<AugmentConfig>,
    /// Normalisation and input size.
    pub preprocess: PreprocessConfig,
}

struct Shared {
    data: Dataset,
    weights: Vec<f32>,
    spec: GclSpec,
    tokenizer: Arc<ClipTokenizer>,
    cfg: LoaderConfig,
    /// Loads full images without resizing (the crop comes after).
    raw: Preprocessor,
    /// The model's inference preprocessing.
    plain: Preprocessor,
    skipped: Mutex<BTreeMap<String, u64>>,
}

/// A [`BatchSource`] over a [`Dataset`].
pub struct Loader {
    shared: Arc<Shared>,
    rx: Option<Receiver<Result<Batch, TrainError>>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// A loader of `data` for `spec`'s fields, tokenising with `tokenizer` (padded to its
    /// context length). Pair weights are computed here, from the data's score range.
    pub fn new(
        data: Dataset,
        spec: &GclSpec,
        tokenizer: Arc<ClipTokenizer>,
        cfg: LoaderConfig,
    ) -> Result<Self, TrainError> {
        if cfg.batch_size < 2 {
            return Err(TrainError::Config("batch_size must be at least 2".into()));
        }
        let weights = data
            .pairs
            .iter()
            .map(|p| {
                spec.pair_weight(p.score, p.rank, &data.score_range)
                    .map(|w| w as f32)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cfg.sampler == BatchSampler::Unique {
            let distinct = |keys: Vec<u64>| keys.into_iter().collect::<HashSet<_>>().len();
            let q = distinct(data.pairs.iter().map(|p| p.query_key).collect());
            let d = distinct(data.pairs.iter().map(|p| p.doc_key).collect());
            if q < cfg.batch_size || d < cfg.batch_size {
                return Err(TrainError::Config(format!(
                    "batch_sampler = \"unique\" puts at most one pair per query and per document in a batch, but the data has {q} distinct queries and {d} distinct documents, fewer than batch_size = {}",
                    cfg.batch_size
                )));
            }
        }
        let raw = Preprocessor::new(PreprocessConfig {
            do_resize: false,
            do_center_crop: false,
            ..cfg.preprocess.clone()
        });
        let plain = Preprocessor::new(cfg.preprocess.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                weights,
                spec: spec.clone(),
                tokenizer,
                raw,
                plain,
                cfg,
                skipped: Mutex::new(BTreeMap::new()),
                data,
            }),
            rx: None,
            worker: None,
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.shared.data
    }

    fn stop(&mut self) {
        self.rx = None; // the worker's next send fails and it returns
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// The pairs of `epoch`, batch after batch (`batch_size` each, `batches_per_epoch` batches).
    fn order(&self, epoch: u64) -> Result<Vec<usize>, TrainError> {
        let n = self.data.pairs.len();
        let permutation = |k: u64| {
            let mut idx: Vec<usize> = (0..n).collect();
            Rng::derive(self.cfg.seed, &[0xe90c, epoch, k]).shuffle(&mut idx);
            idx
        };
        if self.cfg.sampler == BatchSampler::Random {
            let mut idx: Vec<usize> = (0..n).collect();
            Rng::derive(self.cfg.seed, &[0xe90c, epoch]).shuffle(&mut idx);
            return Ok(idx);
        }
        let bs = self.cfg.batch_size;
        let batches = n / bs;
        let mut out = Vec::with_capacity(batches * bs);
        let mut pool = permutation(0);
        let mut refills = 0u64;
        while out.len() < batches * bs {
            let mut queries = HashSet::with_capacity(bs);
            let mut docs = HashSet::with_capacity(bs);
            let mut batch = Vec::with_capacity(bs);
            let mut waiting = Vec::new();
            let mut pos = 0;
            while batch.len() < bs && pos < pool.len() {
                let i = pool[pos];
                pos += 1;
                let p = &self.data.pairs[i];
                if !queries.contains(&p.query_key) && !docs.contains(&p.doc_key) {
                    queries.insert(p.query_key);
                    docs.insert(p.doc_key);
                    batch.push(i);
                } else {
                    waiting.push(i);
                }
            }
            if batch.len() < bs {
                // The pairs left cannot fill a batch: append a fresh permutation and retry.
                refills += 1;
                if refills > batches as u64 + 1 {
                    return Err(TrainError::Data(format!(
                        "batch_sampler = \"unique\" cannot fill a batch of {bs} pairs with distinct queries and documents"
                    )));
                }
                pool.extend(permutation(refills));
                continue;
            }
            waiting.extend_from_slice(&pool[pos..]);
            pool = waiting;
            out.extend(batch);
        }
        Ok(out)
    }

    fn count(&self, reason: &str) {
        if let Ok(mut m) = self.skipped.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    /// Normalised pixels of one image field value.
    fn pixels(&self, path: &std::path::Path, rng: Option<Rng>) -> Result<Vec<f32>, String> {
        match (self.cfg.augment, rng) {
            (Some(augment), Some(mut rng)) => {
                let img = self.raw.rgb8_from_path(path).map_err(|e| e.to_string())?;
                let out = augment_image(&img, self.cfg.preprocess.crop_size, &augment, &mut rng);
                Ok(self.plain.normalize(&out))
            }
            _ => self.plain.pixels_from_path(path).map_err(|e| e.to_string()),
        }
    }

    fn batch(&self, epoch: u64, order: &[usize], b: u64) -> Result<Batch, TrainError> {
        let bs = self.cfg.batch_size;
        let idx = &order[b as usize * bs..(b as usize + 1) * bs];
        let size = self.cfg.preprocess.crop_size;
        let plane = 3 * size * size;
        let spec = &self.spec;
        // Every image of every pair, decoded in parallel; a failure drops the pair.
        let images: Vec<Result<Vec<Option<Vec<f32>>>, String>> = idx
            .par_iter()
            .map(|&i| {
                let pair = &self.data.pairs[i];
                let mut out = Vec::new();
                for (side, (vals, fields)) in [
                    (&pair.query, &spec.query_fields),
                    (&pair.doc, &spec.doc_fields),
                ]
                .into_iter()
                .enumerate()
                {
                    for (k, (v, f)) in vals.iter().zip(fields).enumerate() {
                        if let (Some(FieldValue::Image(p)), FieldKind::Image) = (v, f.kind) {
                            let rng = Rng::derive(
                                self.cfg.seed,
                                &[0xa09, epoch, i as u64, (side * 1000 + k) as u64],
                            );
                            out.push(Some(
                                self.pixels(p, Some(rng))
                                    .map_err(|e| format!("{}: {e}", p.display()))?,
                            ));
                        } else {
                            out.push(None);
                        }
                    }
                }
                Ok(out)
            })
            .collect();
        let mut kept = Vec::new();
        let mut pixels = Vec::new();
        for (&i, r) in idx.iter().zip(images) {
            match r {
                Ok(px) => {
                    kept.push(i);
                    pixels.push(px);
                }
                Err(e) => {
                    tracing::warn!("skipping a training pair: {e}");
                    self.count("unreadable image");
                }
            }
        }
        let n = kept.len();
        if n < 2 {
            return Err(TrainError::Data(format!(
                "batch {b} of epoch {epoch} has fewer than 2 readable pairs"
            )));
        }
        let ctx = self.tokenizer.context_length();
        let filler = self.tokenizer.encode("");
        let make_side = |side: usize| -> Result<Vec<FieldBatch>, TrainError> {
            let fields = if side == 0 {
                &spec.query_fields
            } else {
                &spec.doc_fields
            };
            let offset = if side == 0 {
                0
            } else {
                spec.query_fields.len()
            };
            fields
                .iter()
                .enumerate()
                .map(|(k, f)| {
                    let vals: Vec<&Option<FieldValue>> = kept
                        .iter()
                        .map(|&i| {
                            let p = &self.data.pairs[i];
                            if side == 0 {
                                &p.query[k]
                            } else {
                                &p.doc[k]
                            }
                        })
                        .collect();
                    let present: Vec<bool> = vals.iter().map(|v| v.is_some()).collect();
                    let data = match f.kind {
                        FieldKind::Text => FieldData::Text(
                            vals.iter()
                                .map(|v| match v {
                                    Some(FieldValue::Text(t)) => self.tokenizer.encode(t),
                                    _ => filler.clone(),
                                })
                                .map(|mut ids| {
                                    ids.resize(ctx, 0);
                                    ids
                                })
                                .collect(),
                        ),
                        FieldKind::Image => {
                            let mut flat = Vec::with_capacity(n * plane);
                            for px in &pixels {
                                match &px[offset + k] {
                                    Some(p) => flat.extend_from_slice(p),
                                    None => flat.extend(std::iter::repeat_n(0.0, plane)),
                                }
                            }
                            FieldData::Image(Tensor::from_vec(
                                flat,
                                (n, 3, size, size),
                                &Device::Cpu,
                            )?)
                        }
                    };
                    Ok(FieldBatch {
                        name: f.name.clone(),
                        data,
                        present: present
                            .iter()
                            .all(|&b| b)
                            .then_some(())
                            .map_or(Some(present), |_| None),
                    })
                })
                .collect()
        };
        let query = make_side(0)?;
        let doc = make_side(1)?;
        Ok(Batch {
            query,
            doc,
            weights: kept.iter().map(|&i| self.weights[i]).collect(),
            query_keys: kept.iter().map(|&i| self.data.pairs[i].query_key).collect(),
            doc_keys: kept.iter().map(|&i| self.data.pairs[i].doc_key).collect(),
        })
    }
}

impl BatchSource for Loader {
    fn batches_per_epoch(&self) -> u64 {
        (self.shared.data.pairs.len() / self.shared.cfg.batch_size) as u64
    }

    fn start_epoch(&mut self, epoch: u64, start: u64) -> Result<(), TrainError> {
        self.stop();
        let shared = self.shared.clone();
        let (tx, rx) = sync_channel(self.shared.cfg.prefetch.max(1));
        let total = self.batches_per_epoch();
        let handle = std::thread::Builder::new()
            .name("gclip-loader".into())
            .spawn(move || {
                let order = match shared.order(epoch) {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for b in start..total {
                    if tx.send(shared.batch(epoch, &order, b)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| TrainError::Data(format!("cannot start the loader thread: {e}")))?;
        self.rx = Some(rx);
        self.worker = Some(handle);
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Batch, TrainError> {
        let rx = self
            .rx
            .as_ref()
            .ok_or_else(|| TrainError::Data("the loader was not started".into()))?;
        rx.recv()
            .map_err(|_| TrainError::Data("the epoch has no more batches".into()))?
    }

    fn skipped(&self) -> Vec<(String, u64)> {
        let mut out: BTreeMap<String, u64> = self.shared.data.skipped.counts.clone();
        if let Ok(m) = self.shared.skipped.lock() {
            for (k, v) in m.iter() {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::{load, DataSpec, Layout};
    use crate::train::loss::{FieldSpec, ScoreToWeight};
    use crate::train::step::tests::gcl_spec;
    use std::path::PathBuf;

    fn images() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images")
    }

    fn setup(name: &str) -> (PathBuf, GclSpec) {
        let d = std::env::temp_dir().join(format!("gclip-loader-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("broken.png"), b"\x89PNG but not really").unwrap();
        let mut lines = Vec::new();
        let names = [
            "emoji_apple_1f308.png",
            "emoji_google_1f600.png",
            "rgb_301x199.png",
            "p_trns_index.png",
            "jpeg_420_q85.jpg",
            "tiny_5x3.png",
            "l_301x199.png",
        ];
        for (i, n) in names.iter().enumerate() {
            let title = if i % 3 == 0 {
                "null".to_string()
            } else {
                format!("\"title {i}\"")
            };
            lines.push(format!(
                r#"{{"query": {{"text": "query {}"}}, "doc": {{"image": "{}", "title": {title}}}, "score": {}}}"#,
                i / 2, images().join(n).display(), i
            ));
        }
        lines.push(format!(
            r#"{{"query": {{"text": "q"}}, "doc": {{"image": "{}"}}, "score": 3}}"#,
            d.join("broken.png").display()
        ));
        std::fs::write(d.join("train.jsonl"), lines.join("\n")).unwrap();
        // The step tests' objective (text query; image 0.9 + title 0.1 document) without its
        // extra loss term.
        let spec = GclSpec {
            extra_terms: vec![],
            ..gcl_spec()
        };
        (d, spec)
    }

    /// `train.jsonl` in `d`, weighted by its `score_linear` column.
    fn train_jsonl(d: &std::path::Path, spec: &GclSpec) -> Dataset {
        load(
            &DataSpec {
                layout: Layout::Jsonl,
                path: d.join("train.jsonl"),
                image_root: None,
                score_column: "score_linear".into(),
            },
            spec,
        )
        .unwrap()
    }

    fn loader(d: &std::path::Path, spec: &GclSpec, augment: bool) -> Loader {
        let data = train_jsonl(d, spec);
        let tok = ClipTokenizer::open_clip_default()
            .unwrap()
            .with_context_length(16);
        Loader::new(
            data,
            spec,
            Arc::new(tok),
            LoaderConfig {
                batch_size: 4,
                seed: 9,
                sampler: BatchSampler::Random,
                prefetch: 1,
                augment: augment.then(AugmentConfig::default),
                preprocess: PreprocessConfig::open_clip(24),
            },
        )
        .unwrap()
    }

    fn flat(b: &Batch) -> (Vec<f32>, Vec<u64>, Vec<Vec<u32>>) {
        let FieldData::Image(px) = &b.doc[0].data else {
            panic!()
        };
        let FieldData::Text(ids) = &b.query[0].data else {
            panic!()
        };
        (
            px.flatten_all().unwrap().to_vec1().unwrap(),
            b.doc_keys.clone(),
            ids.clone(),
        )
    }

    /// 60 pairs: 6 queries × 10 documents, text fields only (query `q{i}`, document `d{j}`).
    fn grid_loader(
        sampler: BatchSampler,
        batch_size: usize,
        seed: u64,
    ) -> (Result<Loader, TrainError>, PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "gclip-loader-grid-{}-{batch_size}-{seed}-{sampler:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let mut lines = Vec::new();
        for q in 0..6 {
            for j in 0..10 {
                lines.push(format!(
                    r#"{{"query": {{"text": "q{q}"}}, "doc": {{"title": "d{j}"}}, "query_id": "q{q}", "doc_id": "d{j}", "score": {}}}"#,
                    (q + j) % 3
                ));
            }
        }
        std::fs::write(d.join("train.jsonl"), lines.join("\n")).unwrap();
        let field = |name: &str| FieldSpec {
            name: name.into(),
            kind: FieldKind::Text,
            weight: 1.0,
        };
        let spec = GclSpec {
            score_to_weight: ScoreToWeight::Linear,
            query_fields: vec![field("text")],
            doc_fields: vec![field("title")],
            extra_terms: vec![],
            mask_shared: true,
            weight_floor: 0.0,
        };
        let data = train_jsonl(&d, &spec);
        let tok = ClipTokenizer::open_clip_default()
            .unwrap()
            .with_context_length(8);
        let cfg = LoaderConfig {
            batch_size,
            seed,
            sampler,
            prefetch: 1,
            augment: None,
            preprocess: PreprocessConfig::open_clip(24),
        };
        (Loader::new(data, &spec, Arc::new(tok), cfg), d)
    }

    fn repeats(keys: &[u64]) -> usize {
        keys.len() - keys.iter().collect::<HashSet<_>>().len()
    }

    #[test]
    fn unique_sampler_never_repeats_a_query_or_document_in_a_batch() {
        let (random, d1) = grid_loader(BatchSampler::Random, 5, 3);
        let (unique, d2) = grid_loader(BatchSampler::Unique, 5, 3);
        let (mut random, mut unique) = (random.unwrap(), unique.unwrap());
        // The same number of batches per epoch as the random sampler.
        assert_eq!(random.batches_per_epoch(), 12);
        assert_eq!(unique.batches_per_epoch(), 12);
        let mut random_repeats = 0;
        let mut seen = HashSet::new();
        for epoch in 0..3 {
            random.start_epoch(epoch, 0).unwrap();
            unique.start_epoch(epoch, 0).unwrap();
            for _ in 0..12 {
                let r = random.next_batch().unwrap();
                random_repeats += repeats(&r.query_keys) + repeats(&r.doc_keys);
                let u = unique.next_batch().unwrap();
                assert_eq!(u.len(), 5);
                assert_eq!(repeats(&u.query_keys), 0, "{:?}", u.query_keys);
                assert_eq!(repeats(&u.doc_keys), 0, "{:?}", u.doc_keys);
                for (q, dk) in u.query_keys.iter().zip(&u.doc_keys) {
                    seen.insert((*q, *dk));
                }
            }
            assert!(unique.next_batch().is_err(), "12 batches per epoch");
        }
        // With 6 queries in batches of 5, random batches repeat queries; the unique sampler
        // still visits (nearly) every pair in three epochs.
        assert!(random_repeats > 0);
        assert!(seen.len() >= 55, "{} of 60 pairs seen", seen.len());
        // Deterministic: a fresh loader positioned at batch 7 of epoch 1 gives the same batch.
        let (again, d3) = grid_loader(BatchSampler::Unique, 5, 3);
        let mut again = again.unwrap();
        unique.start_epoch(1, 0).unwrap();
        let mut b7 = None;
        for _ in 0..8 {
            b7 = Some(unique.next_batch().unwrap());
        }
        again.start_epoch(1, 7).unwrap();
        let a7 = again.next_batch().unwrap();
        let b7 = b7.unwrap();
        assert_eq!((a7.query_keys, a7.doc_keys), (b7.query_keys, b7.doc_keys));
        for d in [d1, d2, d3] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn unique_sampler_refuses_batches_larger_than_the_distinct_queries() {
        // 6 distinct queries cannot fill a batch of 7 with distinct queries.
        let (bad, d1) = grid_loader(BatchSampler::Unique, 7, 1);
        let Err(e) = bad else {
            panic!("a batch of 7 was accepted")
        };
        assert!(
            e.to_string()
                .contains("6 distinct queries and 10 distinct documents"),
            "{e}"
        );
        let (ok, d2) = grid_loader(BatchSampler::Random, 7, 1);
        assert_eq!(ok.unwrap().batches_per_epoch(), 8);
        for d in [d1, d2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn batches_are_deterministic_bounded_and_count_bad_images() {
        let (d, spec) = setup("det");
        let mut a = loader(&d, &spec, true);
        assert_eq!(a.batches_per_epoch(), 2); // 8 pairs, batch 4
        a.start_epoch(0, 0).unwrap();
        let a0 = a.next_batch().unwrap();
        let a1 = a.next_batch().unwrap();
        assert!(a.next_batch().is_err(), "only two batches per epoch");
        // One of the 8 pairs is an unreadable file: dropped from its batch and counted.
        assert_eq!(a0.len() + a1.len(), 7);
        assert_eq!(a.skipped(), vec![("unreadable image".to_string(), 1)]);
        let b0 = &a0;
        let FieldData::Image(px) = &b0.doc[0].data else {
            panic!()
        };
        assert_eq!(px.dims(), &[b0.len(), 3, 24, 24]);
        let FieldData::Text(ids) = &b0.query[0].data else {
            panic!()
        };
        assert!(ids.iter().all(|r| r.len() == 16 && r[0] == 49406));
        // Titles missing in some rows are marked absent.
        let all_docs: Vec<bool> = [&a0, &a1]
            .iter()
            .flat_map(|b| b.doc[1].present.clone().unwrap_or(vec![true; b.len()]))
            .collect();
        assert_eq!(all_docs.iter().filter(|&&p| !p).count(), 3); // rows 0, 3, 6
                                                                 // A fresh loader positioned at batch 1 gives the same batch, pixels included.
        let mut b = loader(&d, &spec, true);
        b.start_epoch(0, 1).unwrap();
        assert_eq!(flat(&b.next_batch().unwrap()), flat(&a1));
        // Another epoch: another order and other crops.
        b.start_epoch(1, 0).unwrap();
        let e1 = [b.next_batch().unwrap(), b.next_batch().unwrap()];
        assert_ne!(flat(&e1[0]).0, flat(&a0).0);
        // Without augmentation an image is its centre-crop preprocessing.
        let mut c = loader(&d, &spec, false);
        c.start_epoch(0, 0).unwrap();
        let c0 = c.next_batch().unwrap();
        assert_eq!(c0.doc_keys, a0.doc_keys);
        assert_ne!(flat(&c0).0, flat(&a0).0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
