//! Cross-modal retrieval metrics as open_clip's `get_clip_metrics` computes them: for matched
//! rows of image and text embeddings, the rank of each row's match among all rows, in both
//! directions; Recall@1/5/10 is the fraction ranked within the top K, mean rank `mean + 1` and
//! median rank `floor(median) + 1` of the 0-based ranks.
//!
//! Ties (equal similarities) are ranked by index, lower first, so a model that maps everything
//! to one point cannot score above chance.

/// Metrics of one direction.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DirectionMetrics {
    pub r_at_1: f64,
    pub r_at_5: f64,
    pub r_at_10: f64,
    pub mean_rank: f64,
    pub median_rank: f64,
}

/// Both directions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RetrievalMetrics {
    pub image_to_text: DirectionMetrics,
    pub text_to_image: DirectionMetrics,
}

impl RetrievalMetrics {
    /// Flat `(name, value)` pairs with open_clip's names (`image_to_text_R@1`, …).
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (dir, m) in [
            ("image_to_text", &self.image_to_text),
            ("text_to_image", &self.text_to_image),
        ] {
            out.push((format!("{dir}_R@1"), m.r_at_1));
            out.push((format!("{dir}_R@5"), m.r_at_5));
            out.push((format!("{dir}_R@10"), m.r_at_10));
            out.push((format!("{dir}_mean_rank"), m.mean_rank));
            out.push((format!("{dir}_median_rank"), m.median_rank));
        }
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// 0-based rank of candidate `target` among `scores` (ties: lower index first).
pub fn rank_of(scores: &[f32], target: usize) -> usize {
    let s = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &x)| x > s || (x == s && j < target))
        .count()
}

/// Metrics of ranks (0-based).
pub fn direction_metrics(ranks: &[usize]) -> DirectionMetrics {
    let n = ranks.len().max(1) as f64;
    let within = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / n;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let median = match sorted.len() {
        0 => 0.0,
        l if l % 2 == 1 => sorted[l / 2] as f64,
        l => (sorted[l / 2 - 1] + sorted[l / 2]) as f64 / 2.0,
    };
    DirectionMetrics {
        r_at_1: within(1),
        r_at_5: within(5),
        r_at_10: within(10),
        mean_rank: ranks.iter().sum::<usize>() as f64 / n + 1.0,
        median_rank: median.floor() + 1.0,
    }
}

/// Ranks of each query's target document by dot product: `queries` and `docs` are rows of
/// `dim` values (normalised for cosine similarity), `targets[i]` the document of query `i`.
pub fn target_ranks(queries: &[f32], docs: &[f32], dim: usize, targets: &[usize]) -> Vec<usize> {
    let docs: Vec<&[f32]> = docs.chunks_exact(dim).collect();
    queries
        .chunks_exact(dim)
        .zip(targets)
        .map(|(q, &t)| {
            let scores: Vec<f32> = docs.iter().map(|d| dot(q, d)).collect();
            rank_of(&scores, t)
        })
        .collect()
}

/// open_clip's retrieval metrics of matched image and text rows.
pub fn clip_retrieval(image: &[f32], text: &[f32], dim: usize) -> RetrievalMetrics {
    let n = image.len() / dim.max(1);
    let ids: Vec<usize> = (0..n).collect();
    RetrievalMetrics {
        image_to_text: direction_metrics(&target_ranks(image, text, dim, &ids)),
        text_to_image: direction_metrics(&target_ranks(text, image, dim, &ids)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_summaries() {
        // 3 images, 3 texts in 2-D: image 0 ↔ text 0 best, image 1 prefers text 2.
        let image = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let text = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
        let m = clip_retrieval(&image, &text, 2);
        // image→text ranks: 0 (1·1 best); image 1 scores (0, .8, 1): its text 1 at rank 1;
        // image 2 scores (.6, 1, .8): its text 2 at rank 1.
        assert_eq!(m.image_to_text.r_at_1, 1.0 / 3.0);
        assert_eq!(m.image_to_text.mean_rank, 2.0 / 3.0 + 1.0);
        assert_eq!(m.image_to_text.median_rank, 2.0);
        assert_eq!(m.image_to_text.r_at_5, 1.0);
        // Ties rank by index: a collapsed model gets rank i for row i.
        let same = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let c = clip_retrieval(&same, &same, 2);
        assert_eq!(c.text_to_image.r_at_1, 0.25);
        assert_eq!(c.text_to_image.mean_rank, 2.5);
        // numpy: floor(median([0, 1, 2, 3])) + 1 = floor(1.5) + 1 = 2
        assert_eq!(c.text_to_image.median_rank, 2.0);
        assert_eq!(direction_metrics(&[12, 0, 3]).r_at_10, 2.0 / 3.0);
        let names: Vec<String> = m.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "image_to_text_R@1");
        assert_eq!(names[9], "text_to_image_median_rank");
    }
}
