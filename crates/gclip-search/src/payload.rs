//! Posting lists of field values, so that a filter's equality, tag and numeric range
//! conditions give the documents that can match without evaluating the filter on every document
//! (at 100,000 documents that evaluation alone costs milliseconds: each document's fields are a
//! separate map in memory).
//!
//! Equality follows the filter's rules: a number equals a string that parses to it, a boolean
//! equals the string `"true"`/`"false"`, a list equals any of its items. Ranges compare numbers
//! (and strings that parse to numbers) with a number. Where the lists answer a filter exactly,
//! the candidates need no further check; otherwise they are a superset, checked with
//! [`Filter::matches`].

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::document::Fields;
use crate::filter::{Filter, Op};

/// Strings longer than this are not indexed (long text is not filtered by equality); a query for
/// such a string falls back to evaluating the filter on every document.
const MAX_INDEXED_STRING: usize = 256;

/// A value as equality sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Canonical {
    Str(String),
    /// The bits of an f64 (with -0.0 as 0.0).
    Num(u64),
    Bool(bool),
}

fn number(x: f64) -> Canonical {
    Canonical::Num(if x == 0.0 { 0.0f64 } else { x }.to_bits())
}

/// An f64 ordered by `total_cmp` (NaN is never indexed).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Sorted slot lists by field and value.
#[derive(Default)]
pub(crate) struct PayloadIndex {
    equal: HashMap<String, HashMap<Canonical, Vec<u32>>>,
    /// Numeric values (numbers, and strings that parse to numbers) in order, for ranges.
    numeric: HashMap<String, BTreeMap<Ordered, Vec<u32>>>,
    /// Per field name, how many documents hold it and with what kinds of values, so that a
    /// filter on a field no document has, or comparing a field with a kind of value it never
    /// holds, is an error rather than a silent "no results".
    kinds: HashMap<String, FieldKinds>,
}

/// How many documents hold a field, and how many of them hold a number (or a string that is
/// one) or a string that is not a number, in the value or among a list's items.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FieldKinds {
    documents: usize,
    numbers: usize,
    texts: usize,
}

impl FieldKinds {
    fn of(value: &Value) -> Self {
        let mut kinds = FieldKinds {
            documents: 1,
            ..Default::default()
        };
        let items = match value {
            Value::Array(items) => items.as_slice(),
            one => std::slice::from_ref(one),
        };
        for item in items {
            match item {
                Value::Number(_) => kinds.numbers = 1,
                Value::String(s) if s.parse::<f64>().is_ok() => kinds.numbers = 1,
                Value::String(_) => kinds.texts = 1,
                _ => {}
            }
        }
        kinds
    }
}

/// The slots that can match a filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidates {
    /// Sorted.
    pub rows: Vec<u32>,
    /// Every row matches (no need to evaluate the filter on them).
    pub exact: bool,
}

/// What a stored value is indexed under: equality keys, and its number if it has one.
fn document_values(value: &Value, keys: &mut Vec<Canonical>, numbers: &mut Vec<f64>) {
    match value {
        Value::Array(items) => {
            for item in items {
                if !item.is_array() {
                    document_values(item, keys, numbers);
                }
            }
        }
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                keys.push(number(x));
                numbers.push(x);
            }
        }
        Value::String(s) => {
            if s.len() <= MAX_INDEXED_STRING {
                keys.push(Canonical::Str(s.clone()));
            }
            if let Ok(x) = s.parse::<f64>() {
                keys.push(number(x));
                numbers.push(x);
            }
        }
        Value::Bool(b) => keys.push(Canonical::Bool(*b)),
        Value::Null | Value::Object(_) => {}
    }
}

/// The keys under which every stored value equal to `want` is found, and whether everything
/// found there is equal to it; None when that cannot be told from the index.
fn query_keys(want: &Value) -> Option<(Vec<Canonical>, bool)> {
    Some(match want {
        Value::Number(n) => (vec![number(n.as_f64()?)], true),
        Value::String(s) => {
            if s.len() > MAX_INDEXED_STRING {
                return None;
            }
            match s.parse::<f64>() {
                // "1" also finds 1.0 and "1.0", which equal the number 1 but not the string "1".
                Ok(x) => (vec![Canonical::Str(s.clone()), number(x)], false),
                Err(_) => (vec![Canonical::Str(s.clone())], true),
            }
        }
        Value::Bool(b) => (
            vec![
                Canonical::Bool(*b),
                Canonical::Str(if *b { "true" } else { "false" }.into()),
            ],
            true,
        ),
        // Nothing equals null, an object or a list.
        _ => (Vec::new(), true),
    })
}

/// Per field: its equality keys and its numbers, each once.
fn indexed_values(fields: &Fields) -> Vec<(&str, Vec<Canonical>, Vec<f64>)> {
    fields
        .iter()
        .map(|(name, value)| {
            let (mut keys, mut numbers) = (Vec::new(), Vec::new());
            document_values(value, &mut keys, &mut numbers);
            dedup(&mut keys);
            numbers.retain(|x| !x.is_nan());
            numbers.sort_by(f64::total_cmp);
            numbers.dedup_by(|a, b| a.total_cmp(b).is_eq());
            (name.as_str(), keys, numbers)
        })
        .collect()
}

fn dedup(keys: &mut Vec<Canonical>) {
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
}

fn add_slot(list: &mut Vec<u32>, slot: u32) {
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

fn remove_slot(list: &mut Vec<u32>, slot: u32) {
    if let Ok(at) = list.binary_search(&slot) {
        list.remove(at);
    }
}

impl PayloadIndex {
    /// Records the fields of the document in `slot`.
    pub fn insert(&mut self, slot: usize, fields: &Fields) {
        for (name, value) in fields {
            let add = FieldKinds::of(value);
            let kinds = self.kinds.entry(name.clone()).or_default();
            kinds.documents += add.documents;
            kinds.numbers += add.numbers;
            kinds.texts += add.texts;
        }
        let slot = slot as u32;
        for (name, keys, numbers) in indexed_values(fields) {
            if !keys.is_empty() {
                let by_value = self.equal.entry(name.to_string()).or_default();
                for key in keys {
                    add_slot(by_value.entry(key).or_default(), slot);
                }
            }
            if !numbers.is_empty() {
                let by_number = self.numeric.entry(name.to_string()).or_default();
                for x in numbers {
                    add_slot(by_number.entry(Ordered(x)).or_default(), slot);
                }
            }
        }
    }

    /// Forgets the fields of the document in `slot`.
    pub fn remove(&mut self, slot: usize, fields: &Fields) {
        for (name, value) in fields {
            let gone = FieldKinds::of(value);
            if let Some(kinds) = self.kinds.get_mut(name) {
                kinds.documents = kinds.documents.saturating_sub(gone.documents);
                kinds.numbers = kinds.numbers.saturating_sub(gone.numbers);
                kinds.texts = kinds.texts.saturating_sub(gone.texts);
                if kinds.documents == 0 {
                    self.kinds.remove(name);
                }
            }
        }
        let slot = slot as u32;
        for (name, keys, numbers) in indexed_values(fields) {
            if let Some(by_value) = self.equal.get_mut(name) {
                for key in keys {
                    if let Some(list) = by_value.get_mut(&key) {
                        remove_slot(list, slot);
                        if list.is_empty() {
                            by_value.remove(&key);
                        }
                    }
                }
            }
            if let Some(by_number) = self.numeric.get_mut(name) {
                for x in numbers {
                    if let Some(list) = by_number.get_mut(&Ordered(x)) {
                        remove_slot(list, slot);
                        if list.is_empty() {
                            by_number.remove(&Ordered(x));
                        }
                    }
                }
            }
        }
    }

    /// Refuses a filter that can only be a mistake, for a collection with documents: a condition
    /// on a field no document has, a numeric range on a field that never holds a number, or an
    /// equality between a field that holds only numbers and a word that is not one. Each would
    /// otherwise give "no results" (or, negated, everything) without saying why.
    pub fn check_filter(&self, filter: &Filter) -> Result<(), String> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        // A stack rather than recursion: the parser bounds the depth, but this costs nothing.
        let mut todo = vec![filter];
        while let Some(f) = todo.pop() {
            let (field, op, value) = match f {
                Filter::And(parts) | Filter::Or(parts) => {
                    todo.extend(parts);
                    continue;
                }
                Filter::Not(inner) => {
                    todo.push(inner.as_ref());
                    continue;
                }
                Filter::Truthy(field) => (field, None, None),
                Filter::Compare { field, op, value } => (field, Some(*op), Some(value)),
            };
            // `id` is the document's id, not a field.
            if field == "id" {
                continue;
            }
            let Some(kinds) = self.kinds.get(field) else {
                return Err(format!(
                    "filter: no document has a field `{field}` (fields: {})",
                    self.field_names()
                ));
            };
            let is_range = matches!(op, Some(Op::Lt | Op::Le | Op::Gt | Op::Ge));
            match value {
                Some(Value::Number(n)) if is_range && kinds.numbers == 0 => {
                    return Err(format!(
                        "filter: `{field}` is compared with the number {n}, but no document's \
                         `{field}` is a number"
                    ));
                }
                Some(Value::String(s))
                    if !is_range
                        && s.parse::<f64>().is_err()
                        && kinds.texts == 0
                        && kinds.numbers > 0 =>
                {
                    return Err(format!(
                        "filter: `{field}` holds numbers only, and `{s}` is not a number"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The field names documents have, sorted, for messages (the first 20).
    fn field_names(&self) -> String {
        const SHOWN: usize = 20;
        let mut names: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
        names.sort_unstable();
        let more = names.len().saturating_sub(SHOWN);
        names.truncate(SHOWN);
        let mut list = names.join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        list
    }

    /// The slots that include every document `filter` can match, or None when the filter has
    /// no indexed condition to narrow it (a string range, a negation, `!=`, a bare field, an
    /// `OR` with such a branch).
    pub fn candidates(&self, filter: &Filter) -> Option<Candidates> {
        match filter {
            // `id` is not a field: the filter reads it from the document's id.
            Filter::Compare { field, .. } if field == "id" => None,
            Filter::Compare {
                field,
                op: Op::Eq,
                value,
            } => {
                let (keys, exact) = query_keys(value)?;
                let lists: Vec<&[u32]> = self
                    .equal
                    .get(field)
                    .map(|m| {
                        keys.iter()
                            .filter_map(|k| m.get(k))
                            .map(Vec::as_slice)
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Candidates {
                    rows: sorted_union(&lists),
                    exact,
                })
            }
            Filter::Compare { field, op, value } if *op != Op::Ne => {
                let bound = Ordered(value.as_f64().filter(|x| !x.is_nan())?);
                use std::ops::Bound::{Excluded, Included, Unbounded};
                let range = match op {
                    Op::Lt => (Unbounded, Excluded(bound)),
                    Op::Le => (Unbounded, Included(bound)),
                    Op::Gt => (Excluded(bound), Unbounded),
                    _ => (Included(bound), Unbounded),
                };
                let lists: Vec<&[u32]> = self
                    .numeric
                    .get(field)
                    .map(|m| m.range(range).map(|(_, l)| l.as_slice()).collect())
                    .unwrap_or_default();
                let rows = sorted_union(&lists);
                Some(Candidates { rows, exact: true })
            }
            Filter::And(parts) => {
                let mut sets: Vec<Candidates> =
                    parts.iter().filter_map(|p| self.candidates(p)).collect();
                let exact = sets.len() == parts.len() && sets.iter().all(|c| c.exact);
                sets.sort_by_key(|c| c.rows.len());
                let mut sets = sets.into_iter();
                let first = sets.next()?.rows;
                let rows = sets.fold(first, |acc, c| intersect(&acc, &c.rows));
                Some(Candidates { rows, exact })
            }
            Filter::Or(parts) => {
                let sets: Vec<Candidates> = parts
                    .iter()
                    .map(|p| self.candidates(p))
                    .collect::<Option<_>>()?;
                let lists: Vec<&[u32]> = sets.iter().map(|c| c.rows.as_slice()).collect();
                Some(Candidates {
                    rows: sorted_union(&lists),
                    exact: sets.iter().all(|c| c.exact),
                })
            }
            _ => None,
        }
    }
}

/// The sorted union of sorted lists: small ones merged by a sort, large ones (a range over many
/// values) through a bit per slot, which costs a pass over the slots instead of a sort of
/// everything collected.
fn sorted_union(lists: &[&[u32]]) -> Vec<u32> {
    let total: usize = lists.iter().map(|l| l.len()).sum();
    if let [only] = lists {
        return only.to_vec();
    }
    if total < 4096 {
        let mut rows: Vec<u32> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        rows.sort_unstable();
        rows.dedup();
        return rows;
    }
    let slots = lists
        .iter()
        .filter_map(|l| l.last())
        .max()
        .map_or(0, |&m| m as usize + 1);
    let bits = slot_bits(lists.iter().flat_map(|l| l.iter().copied()), slots);
    let mut rows = Vec::with_capacity(total);
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            rows.push((w * 64) as u32 + word.trailing_zeros());
            word &= word - 1;
        }
    }
    rows
}

/// A bit per slot (`slots` of them), set for the given ones.
pub(crate) fn slot_bits(rows: impl IntoIterator<Item = u32>, slots: usize) -> Vec<u64> {
    let mut bits = vec![0u64; slots.div_ceil(64)];
    for r in rows {
        bits[r as usize / 64] |= 1 << (r % 64);
    }
    bits
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if small.len() * 16 < large.len() {
        return small
            .iter()
            .copied()
            .filter(|x| large.binary_search(x).is_ok())
            .collect();
    }
    // Lists of similar size: one merge pass.
    let mut out = Vec::with_capacity(small.len());
    let (mut i, mut j) = (0, 0);
    while i < small.len() && j < large.len() {
        match small[i].cmp(&large[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(small[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn filters_that_can_only_be_mistakes_are_refused() {
        let mut index = PayloadIndex::default();
        let check =
            |index: &PayloadIndex, text: &str| index.check_filter(&Filter::parse(text).unwrap());
        // An empty collection has no fields to check against.
        assert_eq!(check(&index, "nosuch:x"), Ok(()));
        let cat = fields(json!({"text": "a cat", "price": 5, "tags": ["red", "small"]}));
        let dog = fields(json!({"text": "a dog", "price": "20", "sold": true}));
        index.insert(0, &cat);
        index.insert(1, &dog);
        for fine in [
            "price >= 10",
            "price:5",
            "price:\"20\"",
            "tags:red",
            "text:\"a cat\"",
            "sold",
            "NOT sold",
            "id:a",
            "text >= b",
            "price >= 1 AND (tags:red OR sold)",
        ] {
            assert_eq!(check(&index, fine), Ok(()), "{fine}");
        }
        let message = check(&index, "price >= 1 AND nosuch:x").unwrap_err();
        assert!(
            message.contains("no document has a field `nosuch` (fields: price, sold, tags, text)"),
            "{message}"
        );
        assert!(check(&index, "NOT colour")
            .unwrap_err()
            .contains("`colour`"));
        let message = check(&index, "tags >= 3").unwrap_err();
        assert!(
            message.contains("no document's `tags` is a number"),
            "{message}"
        );
        let message = check(&index, "price:red").unwrap_err();
        assert!(message.contains("`price` holds numbers only"), "{message}");
        // Removing the only document with a field forgets it.
        index.remove(1, &dog);
        assert!(check(&index, "sold").unwrap_err().contains("`sold`"));
    }

    /// Documents with mixed types; every filter's candidates must include every match, be
    /// exactly the matches when marked exact, and narrow when the filter is indexable.
    #[test]
    fn candidates_never_miss_a_match_and_exact_ones_are_exact() {
        let docs: Vec<Fields> = (0..300)
            .map(|i| {
                let mut f = fields(json!({
                    "category": format!("c{}", i % 7),
                    "n": i % 5,
                    "price": (i * 37) % 101,
                    "tags": [format!("t{}", i % 3), format!("t{}", i % 4)],
                    "flag": i % 2 == 0,
                    "scores": [i % 10, (i * 3) % 10],
                }));
                // Numbers stored as strings, booleans as strings, a missing field.
                if i % 11 == 0 {
                    f.insert("n".into(), json!(format!("{}", i % 5)));
                    f.insert("price".into(), json!(format!("{}", (i * 37) % 101)));
                }
                if i % 13 == 0 {
                    f.insert("flag".into(), json!("true"));
                }
                if i % 17 == 0 {
                    f.remove("category");
                    f.insert("price".into(), json!("cheap"));
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
        // Replace some, as updates do.
        let mut docs = docs;
        for slot in (0..300).step_by(23) {
            index.remove(slot, &docs[slot]);
            docs[slot] = fields(json!({"category": "c1", "n": 2.0, "tags": ["t9"], "price": -1}));
            index.insert(slot, &docs[slot]);
        }
        let indexable = [
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
            "price < 10",
            "price <= 10",
            "price > 90",
            "price >= 90 OR price < 0",
            "scores > 8",
            "scores >= 3 AND scores < 4",
            "price < 50 AND NOT flag",
        ];
        let not_indexable = [
            "NOT category = c1",
            "category != c1",
            "category = c1 OR tags:t1 OR n != 3",
            "id = x",
            "flag",
            "price < 'b'",
        ];
        let mut exact_seen = 0;
        for text in indexable.iter().chain(&not_indexable) {
            let filter = Filter::parse(text).unwrap();
            let matching: Vec<u32> = (0..docs.len())
                .filter(|&s| filter.matches("x", &docs[s]))
                .map(|s| s as u32)
                .collect();
            match index.candidates(&filter) {
                Some(c) => {
                    assert!(indexable.contains(text), "{text}: should not be indexable");
                    assert!(c.rows.windows(2).all(|w| w[0] < w[1]), "{text}: not sorted");
                    for m in &matching {
                        assert!(c.rows.binary_search(m).is_ok(), "{text}: missed slot {m}");
                    }
                    if c.exact {
                        exact_seen += 1;
                        assert_eq!(c.rows, matching, "{text}: marked exact");
                    }
                    assert!(c.rows.len() < docs.len(), "{text}: did not narrow");
                }
                None => assert!(not_indexable.contains(text), "{text}: should be indexable"),
            }
        }
        assert!(exact_seen >= 12, "{exact_seen} exact answers");
        // Many values in range (the union through bits) and lists of similar size (merged).
        let many: Vec<Fields> = (0..20_000)
            .map(|i| fields(json!({"price": (i * 7919) % 1000, "category": format!("c{}", i % 7)})))
            .collect();
        let mut big = PayloadIndex::default();
        for (slot, f) in many.iter().enumerate().rev() {
            big.insert(slot, f);
        }
        for text in [
            "price < 500",
            "price >= 100 AND category = c2",
            "price > 998",
        ] {
            let filter = Filter::parse(text).unwrap();
            let matching: Vec<u32> = (0..many.len())
                .filter(|&s| filter.matches("x", &many[s]))
                .map(|s| s as u32)
                .collect();
            let c = big.candidates(&filter).unwrap();
            assert!(c.exact, "{text}");
            assert_eq!(c.rows, matching, "{text}");
        }
        // Superset, not exact: "2" finds the number 2 and "2.0", which do not equal the string.
        let c = index
            .candidates(&Filter::parse("n = '2'").unwrap())
            .unwrap();
        assert!(!c.exact);
    }
}
