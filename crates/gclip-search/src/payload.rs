//! Posting lists of field values, so that a filter's equality and tag conditions give the
//! documents that can match without evaluating the filter on every document (at a million
//! documents that evaluation alone costs tens of milliseconds).
//!
//! The lists give a *superset* of the matching documents: each candidate is still checked with
//! [`Filter::matches`], so the index only has to never miss one. Values are keyed by a hash of
//! (field, canonical value); a hash collision adds candidates, never loses one. Equality follows
//! the filter's rules: a number equals a string that parses to it, a boolean equals the string
//! `"true"`/`"false"`, a list equals any of its items.

use std::collections::HashMap;

use serde_json::Value;

use crate::document::Fields;
use crate::filter::{Filter, Op};

/// Strings longer than this are not indexed (long text is not filtered by equality); a query for
/// such a string falls back to evaluating the filter on every document.
const MAX_INDEXED_STRING: usize = 256;

/// Sorted slot lists by hashed (field, value).
#[derive(Default)]
pub(crate) struct PayloadIndex {
    postings: HashMap<u64, Vec<u32>>,
}

enum Canonical<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
}

fn hash_key(field: &str, value: Canonical<'_>) -> u64 {
    use xxhash_rust::xxh3::Xxh3;
    let mut h = Xxh3::new();
    h.update(field.as_bytes());
    h.update(&[0xff]);
    match value {
        Canonical::Str(s) => {
            h.update(b"s");
            h.update(s.as_bytes());
        }
        Canonical::Num(x) => {
            // 0.0 and -0.0 are equal numbers.
            let x = if x == 0.0 { 0.0 } else { x };
            h.update(b"n");
            h.update(&x.to_bits().to_le_bytes());
        }
        Canonical::Bool(b) => h.update(if b { b"t" } else { b"f" }),
    }
    h.digest()
}

/// The keys a stored value is found under.
fn document_keys(field: &str, value: &Value, out: &mut Vec<u64>) {
    match value {
        Value::Array(items) => {
            for item in items {
                if !item.is_array() {
                    document_keys(field, item, out);
                }
            }
        }
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push(hash_key(field, Canonical::Num(x)));
            }
        }
        Value::String(s) => {
            if s.len() <= MAX_INDEXED_STRING {
                out.push(hash_key(field, Canonical::Str(s)));
            }
            if let Ok(x) = s.parse::<f64>() {
                out.push(hash_key(field, Canonical::Num(x)));
            }
        }
        Value::Bool(b) => out.push(hash_key(field, Canonical::Bool(*b))),
        Value::Null | Value::Object(_) => {}
    }
}

/// The keys under which every stored value equal to `want` is found; None when that cannot be
/// told from the index.
fn query_keys(field: &str, want: &Value) -> Option<Vec<u64>> {
    Some(match want {
        Value::Number(n) => vec![hash_key(field, Canonical::Num(n.as_f64()?))],
        Value::String(s) => {
            if s.len() > MAX_INDEXED_STRING {
                return None;
            }
            let mut keys = vec![hash_key(field, Canonical::Str(s))];
            if let Ok(x) = s.parse::<f64>() {
                keys.push(hash_key(field, Canonical::Num(x)));
            }
            keys
        }
        Value::Bool(b) => vec![
            hash_key(field, Canonical::Bool(*b)),
            hash_key(field, Canonical::Str(if *b { "true" } else { "false" })),
        ],
        // Nothing equals null, an object or a list.
        _ => Vec::new(),
    })
}

fn all_keys(fields: &Fields) -> Vec<u64> {
    let mut keys = Vec::new();
    for (name, value) in fields {
        document_keys(name, value, &mut keys);
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl PayloadIndex {
    /// Records the fields of the document in `slot`.
    pub fn insert(&mut self, slot: usize, fields: &Fields) {
        let slot = slot as u32;
        for key in all_keys(fields) {
            let list = self.postings.entry(key).or_default();
            // Documents arrive mostly in slot order: appending is the common case.
            match list.last() {
                Some(&last) if last >= slot => {
                    if let Err(at) = list.binary_search(&slot) {
                        list.insert(at, slot);
                    }
                }
                _ => list.push(slot),
            }
        }
    }

    /// Forgets the fields of the document in `slot`.
    pub fn remove(&mut self, slot: usize, fields: &Fields) {
        let slot = slot as u32;
        for key in all_keys(fields) {
            if let Some(list) = self.postings.get_mut(&key) {
                if let Ok(at) = list.binary_search(&slot) {
                    list.remove(at);
                }
                if list.is_empty() {
                    self.postings.remove(&key);
                }
            }
        }
    }

    /// Slots (sorted) that include every document `filter` can match, or None when the filter
    /// has no indexed condition to narrow it (a range, a negation, an `OR` with such a branch).
    pub fn candidates(&self, filter: &Filter) -> Option<Vec<u32>> {
        match filter {
            Filter::Compare {
                field,
                op: Op::Eq,
                value,
            } if field != "id" => {
                let mut out: Vec<u32> = Vec::new();
                for key in query_keys(field, value)? {
                    if let Some(list) = self.postings.get(&key) {
                        out = union(&out, list);
                    }
                }
                Some(out)
            }
            Filter::And(parts) => {
                let mut sets: Vec<Vec<u32>> =
                    parts.iter().filter_map(|p| self.candidates(p)).collect();
                sets.sort_by_key(Vec::len);
                let mut sets = sets.into_iter();
                let first = sets.next()?;
                Some(sets.fold(first, |acc, s| intersect(&acc, &s)))
            }
            Filter::Or(parts) => {
                let mut out: Vec<u32> = Vec::new();
                for p in parts {
                    out = union(&out, &self.candidates(p)?);
                }
                Some(out)
            }
            _ => None,
        }
    }
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .copied()
        .filter(|x| large.binary_search(x).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    /// Documents with mixed types; every filter's candidates must include every match, and
    /// indexable filters must narrow.
    #[test]
    fn candidates_never_miss_a_match() {
        let docs: Vec<Fields> = (0..300)
            .map(|i| {
                let mut f = fields(json!({
                    "category": format!("c{}", i % 7),
                    "n": i % 5,
                    "tags": [format!("t{}", i % 3), format!("t{}", i % 4)],
                    "flag": i % 2 == 0,
                }));
                // Numbers stored as strings, booleans as strings, a missing field.
                if i % 11 == 0 {
                    f.insert("n".into(), json!(format!("{}", i % 5)));
                }
                if i % 13 == 0 {
                    f.insert("flag".into(), json!("true"));
                }
                if i % 17 == 0 {
                    f.remove("category");
                }
                if i % 19 == 0 {
                    f.insert("n".into(), json!(format!("{}.0", i % 5)));
                }
                f
            })
            .collect();
        let mut index = PayloadIndex::default();
        for (slot, f) in docs.iter().enumerate() {
            index.insert(slot, f);
        }
        // Replace and remove some, as updates do.
        let mut docs = docs;
        for slot in (0..300).step_by(23) {
            index.remove(slot, &docs[slot]);
            docs[slot] = fields(json!({"category": "c1", "n": 2.0, "tags": ["t9"]}));
            index.insert(slot, &docs[slot]);
        }
        let narrowing = [
            "category = c3",
            "n = 2",
            "n = '2'",
            "n = 2.0",
            "tags:t2",
            "flag = true",
            "category = c1 AND n = 2",
            "(category = c1 OR category = c2) AND tags:t0",
            "tags:t9 OR n = 4",
            "category = c1 AND price > 3",
            "category = nothing",
        ];
        let not_indexable = [
            "n > 2",
            "NOT category = c1",
            "category != c1",
            "category = c1 OR n > 3",
            "id = x",
            "flag",
        ];
        for text in narrowing.iter().chain(&not_indexable) {
            let filter = Filter::parse(text).unwrap();
            let matching: Vec<u32> = (0..docs.len())
                .filter(|&s| filter.matches("x", &docs[s]))
                .map(|s| s as u32)
                .collect();
            match index.candidates(&filter) {
                Some(c) => {
                    assert!(
                        !not_indexable.contains(text),
                        "{text}: should not be indexable"
                    );
                    assert!(c.windows(2).all(|w| w[0] < w[1]), "{text}: not sorted");
                    for m in &matching {
                        assert!(c.binary_search(m).is_ok(), "{text}: missed slot {m}");
                    }
                    assert!(c.len() < docs.len(), "{text}: did not narrow");
                }
                None => assert!(not_indexable.contains(text), "{text}: should be indexable"),
            }
        }
        // Exactly the right sets for plain keyword conditions.
        let c = index
            .candidates(&Filter::parse("category = c3").unwrap())
            .unwrap();
        let want: Vec<u32> = (0..300u32)
            .filter(|&s| docs[s as usize].get("category") == Some(&json!("c3")))
            .collect();
        assert_eq!(c, want);
    }
}
