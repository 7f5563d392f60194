//! The documents of an open collection as searches read them, and the changes its derived
//! indexes catch up from.
//!
//! The store ([`crate::sqlite`]) owns both and writes them; the derived indexes ([`crate::ann`],
//! [`crate::lexical`]) and the query planner ([`crate::planner`]) only read them. This module
//! sits below all of them and imports none of them.

use std::collections::HashMap;

use crate::document::Fields;
use crate::payload::PayloadIndex;
use crate::quant;

/// Documents in memory, in slots: fields for filtering and results, vectors for exact search.
pub(crate) struct Mem {
    pub dim: usize,
    pub rowids: Vec<i64>,
    pub ids: Vec<String>,
    pub fields: Vec<Fields>,
    pub alive: Vec<bool>,
    pub vectors: Vec<f32>,
    /// The vectors as 8-bit codes and their scales, for fast scans.
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub by_id: HashMap<String, usize>,
    pub by_rowid: HashMap<i64, usize>,
    /// Which slots hold which field values, to narrow filtered searches.
    pub payload: PayloadIndex,
    free: Vec<usize>,
}

impl Mem {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            rowids: Vec::new(),
            ids: Vec::new(),
            fields: Vec::new(),
            alive: Vec::new(),
            vectors: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            by_id: HashMap::new(),
            by_rowid: HashMap::new(),
            payload: PayloadIndex::default(),
            free: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn put(&mut self, rowid: i64, id: &str, fields: Fields, vector: &[f32]) {
        let dim = self.dim;
        let slot = match self.by_id.get(id) {
            Some(&s) => {
                self.by_rowid.remove(&self.rowids[s]);
                self.payload.remove(s, &self.fields[s]);
                s
            }
            None => match self.free.pop() {
                Some(s) => s,
                None => {
                    self.rowids.push(0);
                    self.ids.push(String::new());
                    self.fields.push(Fields::new());
                    self.alive.push(false);
                    self.vectors.resize(self.vectors.len() + dim, 0.0);
                    self.codes.resize(self.codes.len() + dim, 0);
                    self.scales.push(0.0);
                    self.rowids.len() - 1
                }
            },
        };
        self.rowids[slot] = rowid;
        self.ids[slot] = id.to_string();
        self.payload.insert(slot, &fields);
        self.fields[slot] = fields;
        self.alive[slot] = true;
        self.vectors[slot * dim..(slot + 1) * dim].copy_from_slice(vector);
        self.scales[slot] = quant::quantize(vector, &mut self.codes[slot * dim..(slot + 1) * dim]);
        self.by_id.insert(id.to_string(), slot);
        self.by_rowid.insert(rowid, slot);
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<i64> {
        let slot = self.by_id.remove(id)?;
        let rowid = self.rowids[slot];
        self.by_rowid.remove(&rowid);
        self.alive[slot] = false;
        self.payload.remove(slot, &self.fields[slot]);
        self.fields[slot] = Fields::new();
        self.ids[slot].clear();
        let dim = self.dim;
        self.vectors[slot * dim..(slot + 1) * dim].fill(0.0);
        self.codes[slot * dim..(slot + 1) * dim].fill(0);
        self.scales[slot] = 0.0;
        self.free.push(slot);
        Some(rowid)
    }

    pub(crate) fn set_fields(&mut self, slot: usize, fields: Fields) {
        self.payload.remove(slot, &self.fields[slot]);
        self.payload.insert(slot, &fields);
        self.fields[slot] = fields;
    }

    pub(crate) fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }
}

/// What changed after a generation: rowids deleted (tombstones) and rowids written.
pub(crate) struct Changes {
    pub removed: Vec<i64>,
    pub written: Vec<i64>,
}
