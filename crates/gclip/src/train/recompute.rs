//! Activation checkpointing (`train.activation_checkpointing`): a tower's forward pass keeps
//! only the residual stream at each block boundary, without graphs, and the backward pass
//! recomputes one block at a time from its kept input.
//!
//! candle's backward keeps every activation of a graph until the whole pass ends, so the
//! backward traversal of the towers is owned here instead: starting from the gradient of the
//! loss with respect to the tower's embedding, the head, then each block from the last to the
//! first, then the stem, is rebuilt with a graph on a leaf holding its kept input and
//! back-propagated from `Σ output ∘ ∂loss/∂output` (the same surrogate as gradient caching).
//! The leaf's gradient is the next gradient down. Only one block's graph is alive at a time; the
//! kept boundaries cost `(blocks + 1) × rows × tokens × width` floats, a fraction of one
//! block's activations (the MLP's hidden layer alone is four widths, attention a tokens² map
//! per head).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::params::ParamSet;
use super::step::FieldData;
use crate::model::Clip;

/// The residual stream of one chunk of one field at every block boundary (`blocks + 1`
/// tensors, detached), and for texts where each row is pooled.
#[derive(Debug)]
pub struct BlockTrace {
    boundaries: Vec<Tensor>,
    pooled_rows: Option<Tensor>,
}

/// The stem's output for rows `start..start+len` (with a graph) and, for texts, the pooled rows.
fn stem(
    clip: &Clip,
    data: &FieldData,
    start: usize,
    len: usize,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    match data {
        FieldData::Text(ids) => {
            let s = clip.text.stem(&ids[start..start + len])?;
            Ok((s.x, Some(s.pooled_rows)))
        }
        FieldData::Image(px) => Ok((clip.vision.stem(&px.narrow(0, start, len)?)?, None)),
    }
}

fn blocks<'a>(
    clip: &'a Clip,
    data: &FieldData,
) -> (&'a [crate::model::layers::ResidualBlock], bool) {
    match data {
        FieldData::Text(_) => (&clip.text.transformer.blocks, true),
        FieldData::Image(_) => (&clip.vision.transformer.blocks, false),
    }
}

fn head(clip: &Clip, x: &Tensor, pooled_rows: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match pooled_rows {
        Some(rows) => clip.text.head(x, rows),
        None => clip.vision.head(x),
    }
}

/// Embeds rows `start..start+len` of a field (`[len, embed]`, not normalised, detached) and
/// keeps the block boundaries for [`backward`]. No graph outlives the block that built it.
pub fn forward(
    clip: &Clip,
    data: &FieldData,
    start: usize,
    len: usize,
) -> candle_core::Result<(Tensor, BlockTrace)> {
    let (x, pooled_rows) = stem(clip, data, start, len)?;
    let (blocks, causal) = blocks(clip, data);
    let mut boundaries = Vec::with_capacity(blocks.len() + 1);
    boundaries.push(x.detach());
    for b in blocks {
        let y = b
            .forward(&boundaries[boundaries.len() - 1], causal)?
            .detach();
        boundaries.push(y);
    }
    let last = &boundaries[boundaries.len() - 1];
    let embedding = head(clip, last, pooled_rows.as_ref())?.detach();
    Ok((
        embedding,
        BlockTrace {
            boundaries,
            pooled_rows,
        },
    ))
}

/// Adds the gradients in `store` of the trainable parameters to `grads` (one slot per
/// parameter of `params`, in its order).
pub(crate) fn accumulate(
    grads: &mut [Option<Tensor>],
    params: &ParamSet,
    store: &GradStore,
) -> candle_core::Result<()> {
    for (acc, p) in grads.iter_mut().zip(&params.params) {
        if let Some(g) = store.get(p.var.as_tensor()) {
            *acc = Some(match acc.take() {
                None => g.clone(),
                Some(a) => (a + g)?,
            });
        }
    }
    Ok(())
}

/// Back-propagates `g_embedding` (`∂loss/∂embedding` of the rows [`forward`] embedded into
/// `trace`) through the tower, one block at a time, adding the parameter gradients to `grads`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    clip: &Clip,
    data: &FieldData,
    start: usize,
    len: usize,
    trace: BlockTrace,
    g_embedding: &Tensor,
    params: &ParamSet,
    grads: &mut [Option<Tensor>],
) -> candle_core::Result<()> {
    let BlockTrace {
        mut boundaries,
        pooled_rows,
    } = trace;
    let (blocks, causal) = blocks(clip, data);
    // Each stage: rebuild it on a leaf holding its input, back-propagate the surrogate, keep
    // the leaf's gradient for the stage below. A stage whose input gets no gradient (nothing
    // below it can change the loss) ends the pass.
    let through = |stage_input: Tensor,
                   g_out: &Tensor,
                   grads: &mut [Option<Tensor>],
                   run: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>|
     -> candle_core::Result<Option<Tensor>> {
        let leaf = Var::from_tensor(&stage_input)?;
        drop(stage_input);
        let out = run(leaf.as_tensor())?;
        let store = (out * g_out)?.sum_all()?.backward()?;
        accumulate(grads, params, &store)?;
        Ok(store.get(leaf.as_tensor()).cloned())
    };
    let Some(top) = boundaries.pop() else {
        candle_core::bail!("an empty block trace");
    };
    let mut g = match through(top, &g_embedding.detach(), grads, &|x| {
        head(clip, x, pooled_rows.as_ref())
    })? {
        Some(g) => g,
        None => return Ok(()),
    };
    for b in blocks.iter().rev() {
        let Some(input) = boundaries.pop() else {
            candle_core::bail!("a block trace shorter than the tower");
        };
        g = match through(input, &g, grads, &|x| b.forward(x, causal))? {
            Some(g) => g,
            None => return Ok(()),
        };
    }
    let (x, _) = stem(clip, data, start, len)?;
    let store = (x * g)?.sum_all()?.backward()?;
    accumulate(grads, params, &store)
}
