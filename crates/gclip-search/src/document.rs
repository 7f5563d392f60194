//! Documents, their fields, and how a collection turns fields into one vector.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, SearchError};

/// A document's fields: text (strings), an image (a local path, as a string), numbers,
/// keywords/tags (arrays of strings) and booleans.
pub type Fields = serde_json::Map<String, Value>;

/// A document as stored: its id and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub fields: Fields,
}

/// What a field holds, for embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Image,
}

/// One embedded field and its weight in the document vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedField {
    pub name: String,
    pub modality: Modality,
    pub weight: f32,
}

/// Which fields a collection embeds, and how they combine: one field, or
/// `normalise(Σ w_k · normalise(e_k))` over the fields a document has, with the weights of the
/// present fields renormalised to sum to one (as GCL evaluates and Marqo indexes multi-field
/// documents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedSpec {
    pub fields: Vec<EmbedField>,
}

impl EmbedSpec {
    /// Parses `NAME[:WEIGHT],…`, e.g. `image` or `title:0.3,image:0.7`. Fields named in
    /// `image_fields` hold image paths, the others text.
    pub fn parse(spec: &str, image_fields: &[String]) -> Result<Self> {
        let mut fields = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.rsplit_once(':') {
                Some((n, w)) => {
                    let w: f32 = w.trim().parse().map_err(|_| {
                        SearchError::Invalid(format!(
                            "embedding spec {part:?}: weight {w:?} is not a number"
                        ))
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1.0),
            };
            if name.is_empty() {
                return Err(SearchError::Invalid(format!(
                    "embedding spec {part:?}: empty field name"
                )));
            }
            if !weight.is_finite() || weight <= 0.0 {
                return Err(SearchError::Invalid(format!(
                    "embedding spec {part:?}: weights must be positive"
                )));
            }
            if fields.iter().any(|f: &EmbedField| f.name == name) {
                return Err(SearchError::Invalid(format!(
                    "embedding spec: field {name:?} named twice"
                )));
            }
            let modality = if image_fields.iter().any(|f| f == name) {
                Modality::Image
            } else {
                Modality::Text
            };
            fields.push(EmbedField {
                name: name.to_string(),
                modality,
                weight,
            });
        }
        if fields.is_empty() {
            return Err(SearchError::Invalid("embedding spec names no field".into()));
        }
        Ok(Self { fields })
    }

    /// One image field called `image` (what `gclip index DIR` creates).
    pub fn image() -> Self {
        Self {
            fields: vec![EmbedField {
                name: "image".into(),
                modality: Modality::Image,
                weight: 1.0,
            }],
        }
    }

    /// The spec written back in `parse` syntax, with modalities: `title(text):0.3,…`.
    pub fn describe(&self) -> String {
        self.fields
            .iter()
            .map(|f| {
                let m = match f.modality {
                    Modality::Text => "text",
                    Modality::Image => "image",
                };
                format!("{}({m}):{}", f.name, f.weight)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The names of the image fields.
    pub fn image_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.modality == Modality::Image)
            .map(|f| f.name.as_str())
    }

    /// The names of the text fields.
    pub fn text_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.modality == Modality::Text)
            .map(|f| f.name.as_str())
    }
}

/// The value of an embedded field of a document, when it has a usable one (a non-empty string).
pub fn field_input<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
        _ => None,
    }
}

/// Dot product, written so that the compiler vectorises it (eight independent accumulators).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for k in chunks * 8..n {
        s += a[k] * b[k];
    }
    s
}

/// Scales a vector to unit length in place; false when it is zero (or not finite).
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if !norm.is_finite() || norm <= 1e-12 {
        return false;
    }
    for x in v.iter_mut() {
        *x /= norm;
    }
    true
}

/// `normalise(Σ w_k · normalise(e_k))`, with the weights renormalised over the parts given (the
/// fields a document has) so that their absolute values sum to one. Parts are `(weight, vector)`; weights may be
/// negative (a query part that pushes away). None when nothing is left (no parts, a zero sum of
/// weights, or vectors that cancel out).
pub fn combine(parts: &[(f32, &[f32])]) -> Option<Vec<f32>> {
    let first = parts.first()?;
    let dim = first.1.len();
    let total: f32 = parts.iter().map(|(w, _)| w.abs()).sum();
    let scale = if total.abs() > 1e-12 { total } else { 1.0 };
    let mut out = vec![0.0f32; dim];
    for (w, v) in parts {
        if v.len() != dim {
            return None;
        }
        let mut unit = v.to_vec();
        if !normalize(&mut unit) {
            continue;
        }
        let w = w / scale;
        for (o, x) in out.iter_mut().zip(&unit) {
            *o += w * x;
        }
    }
    normalize(&mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_weights_and_modalities() {
        let s = EmbedSpec::parse("title:0.3, image:0.7", &["image".into()]).unwrap();
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.fields[0].modality, Modality::Text);
        assert_eq!(s.fields[1].modality, Modality::Image);
        assert!((s.fields[1].weight - 0.7).abs() < 1e-6);
        assert!(EmbedSpec::parse("title:x", &[]).is_err());
        assert!(EmbedSpec::parse("title:-1", &[]).is_err());
        assert!(EmbedSpec::parse("a,a", &[]).is_err());
        assert!(EmbedSpec::parse(" , ", &[]).is_err());
    }

    #[test]
    fn combine_renormalises_present_fields() {
        let a = [3.0f32, 0.0];
        let b = [0.0f32, 0.5];
        // Equal weights: the bisector, whatever the input lengths.
        let v = combine(&[(0.2, &a), (0.2, &b)]).unwrap();
        assert!((v[0] - v[1]).abs() < 1e-6 && (dot(&v, &v) - 1.0).abs() < 1e-5);
        // One field alone gives that field's direction, whatever its weight.
        let v = combine(&[(0.1, &b)]).unwrap();
        assert!((v[1] - 1.0).abs() < 1e-6);
        // A negative part pushes away.
        let v = combine(&[(1.0, &a), (-0.5, &b)]).unwrap();
        assert!(v[0] > 0.0 && v[1] < 0.0);
        // Cancelling parts leave nothing.
        assert!(combine(&[(1.0, &a), (-1.0, &a)]).is_none());
        assert!(combine(&[]).is_none());
    }

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.01).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }
}
