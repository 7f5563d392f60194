//! Evaluation, with metrics computed the way the reference benchmarks compute them.
//!
//! * [`zeroshot`]: zero-shot classification accuracy (top-1, top-5) on image-folder datasets;
//!   the class embeddings of a prompt ensemble.
//! * [`retrieval`]: text→image and image→text Recall@K, mean and median rank (open_clip).
//! * [`marqo_gs`]: Marqo-GS evaluation files (corpus, ground truth) and GCL's sampling of test
//!   queries.
//! * GCL's ranking evaluation of a model on Marqo-GS files is `crate::train::gs_ranking`, and
//!   the evaluation of a model on held-out pairs `crate::train::evaluate`: both embed rows of
//!   fields with training's field code, then score with the metrics here.
//! * [`ranking`]: graded-relevance ranking metrics of GCL's evaluation (nDCG, MAP, MRR, recall,
//!   precision, ERR, RBP), TREC qrels and run files, GCL's qrels of graded pairs.

pub mod marqo_gs;
pub mod ranking;
pub mod retrieval;
pub mod zeroshot;

/// A JSON object's entries in file order, values of type `V`: a map type would sort them, and
/// both GCL's corpus and pytrec_eval-style runs break ties between equal scores by file order.
pub(crate) struct InOrder<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for InOrder<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = InOrder<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(e) = m.next_entry()? {
                    v.push(e);
                }
                Ok(InOrder(v))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}
