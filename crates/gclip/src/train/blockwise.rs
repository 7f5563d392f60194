//! The towers' backward pass, walked block by block here instead of by candle's autograd.
//!
//! candle's backward keeps every activation of a graph until the whole pass ends and sums each
//! gradient into a fresh zero tensor, so the traversal of the towers is owned here: the forward
//! pass runs the stem, each residual block and the head without graphs and keeps, per block,
//! either what its backward pass reads ([`Keep::Activations`]) or only its input
//! ([`Keep::Boundaries`], activation checkpointing of all or a share of the blocks: such a
//! block is recomputed in the backward pass). Starting from the gradient of the loss with
//! respect to the tower's embedding, the backward pass rebuilds the head with a graph on a leaf
//! holding the last block's output, then
//! runs each block's own backward pass ([`ResidualBlock::backward`]) from the last to the first,
//! each activation dropped as soon as it is read, then the stem with a graph. A block whose
//! weights the fused kernels cannot run (other devices and dtypes) is rebuilt with a graph on
//! its kept input and back-propagated by candle instead, one block's graph alive at a time.
//!
//! Blocks below the lowest trainable parameter are not walked at all.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

use super::params::ParamSet;
use super::step::FieldData;
use crate::model::backward::{BlockActivations, KeptPrecision, ParamGrad};
use crate::model::layers::{EmbeddingTable, ResidualBlock};
use crate::model::Clip;

/// What a tower's forward pass keeps for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    /// Each block's activations: nothing is recomputed.
    Activations,
    /// Activation checkpointing of a share of the blocks (in (0, 1]; 1: every block), spread
    /// evenly over the tower ([`recomputes`]): such a block keeps its input only and the
    /// backward pass recomputes it (`rows × tokens × width` floats, a fraction of its
    /// activations); the others keep their activations. The share trades memory for the
    /// recomputation's time.
    Boundaries(f64),
}

/// Whether block `index` is one of those that a checkpointed `share` of the blocks recomputes:
/// the blocks where `⌊(index + 1)·share⌋` steps up, `⌊blocks·share⌋` of them, evenly spread
/// (all for 1, every second one for ½).
pub fn recomputes(index: usize, share: f64) -> bool {
    // The small margin keeps shares such as 0.3 · 10 from rounding just below a whole number.
    let upto = |i: usize| (i as f64 * share + 1e-9).floor();
    upto(index + 1) > upto(index)
}

/// What the forward pass kept of one block.
#[derive(Debug)]
enum KeptBlock {
    Activations(BlockActivations),
    Input(Tensor),
}

/// What the forward pass of one chunk of one field kept for [`backward`].
#[derive(Debug)]
pub struct BlockTrace {
    blocks: Vec<KeptBlock>,
    /// The last block's output (the head's input).
    top: Tensor,
    /// For texts, the flat row each text is pooled at.
    pooled_rows: Option<Tensor>,
    /// How the blocks' activations are kept, recomputed ones included.
    precision: KeptPrecision,
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

/// Whether any parameter of the tower's stem trains.
fn stem_trains(clip: &Clip, data: &FieldData) -> bool {
    match data {
        FieldData::Text(_) => {
            let t = &clip.text;
            t.position_embedding.is_variable()
                || matches!(&t.token_embedding, EmbeddingTable::Tensor(e) if e.is_variable())
        }
        FieldData::Image(_) => {
            let v = &clip.vision;
            [
                &v.patch_embed,
                &v.class_embedding,
                &v.position_embedding,
                &v.ln_pre.weight,
                &v.ln_pre.bias,
            ]
            .iter()
            .any(|t| t.is_variable())
        }
    }
}

fn blocks<'a>(clip: &'a Clip, data: &FieldData) -> (&'a [ResidualBlock], bool) {
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
/// keeps what `keep` asks for [`backward`], in `precision`. No graph outlives the block that
/// built it.
pub fn forward(
    clip: &Clip,
    data: &FieldData,
    start: usize,
    len: usize,
    keep: Keep,
    precision: KeptPrecision,
) -> candle_core::Result<(Tensor, BlockTrace)> {
    let (x, pooled_rows) = stem(clip, data, start, len)?;
    let (blocks, causal) = blocks(clip, data);
    let mut kept = Vec::with_capacity(blocks.len());
    let mut x = x.detach();
    for (index, b) in blocks.iter().enumerate() {
        if b.owns_backward(&x) {
            let (y, activations) = b.forward_kept(&x, causal, precision)?;
            kept.push(match keep {
                Keep::Boundaries(share) if recomputes(index, share) => KeptBlock::Input(x),
                _ => KeptBlock::Activations(activations),
            });
            x = y;
        } else {
            let y = b.forward(&x, causal)?.detach();
            kept.push(KeptBlock::Input(x));
            x = y;
        }
    }
    let embedding = head(clip, &x, pooled_rows.as_ref())?.detach();
    Ok((
        embedding,
        BlockTrace {
            blocks: kept,
            top: x,
            pooled_rows,
            precision,
        },
    ))
}

/// Adds `grad` to the slot of `param` (one slot per parameter of a [`ParamSet`], in its order).
fn add_grad(
    grads: &mut [Option<Tensor>],
    slot: Option<usize>,
    grad: Tensor,
) -> candle_core::Result<()> {
    let Some(acc) = slot.and_then(|i| grads.get_mut(i)) else {
        candle_core::bail!("a gradient for a tensor that is not a trainable parameter");
    };
    *acc = Some(match acc.take() {
        None => grad,
        Some(a) => (a + grad)?,
    });
    Ok(())
}

/// Adds the gradients in `store` of the trainable parameters to `grads` (one slot per
/// parameter of `params`, in its order).
pub(crate) fn accumulate(
    grads: &mut [Option<Tensor>],
    params: &ParamSet,
    store: &GradStore,
) -> candle_core::Result<()> {
    for (i, p) in params.params.iter().enumerate() {
        if let Some(g) = store.get(p.var.as_tensor()) {
            add_grad(grads, Some(i), g.clone())?;
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
        blocks: kept,
        top,
        pooled_rows,
        precision,
    } = trace;
    let (blocks, causal) = blocks(clip, data);
    if kept.len() != blocks.len() {
        candle_core::bail!("a block trace of another tower");
    }
    let slots: HashMap<TensorId, usize> = params
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| (p.var.as_tensor().id(), i))
        .collect();
    // A stage run by candle: rebuilt with a graph on a leaf holding its input, back-propagated
    // from the surrogate `Σ output ∘ ∂loss/∂output`; the leaf's gradient is the next one down.
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
    // The walk stops at the lowest block that trains, or goes on to the stem when it trains.
    let stem_trains = stem_trains(clip, data);
    let lowest = if stem_trains {
        0
    } else {
        match blocks.iter().position(ResidualBlock::trains) {
            Some(i) => i,
            None => blocks.len(),
        }
    };
    let Some(mut g) = through(top, &g_embedding.detach(), grads, &|x| {
        head(clip, x, pooled_rows.as_ref())
    })?
    else {
        return Ok(());
    };
    let mut owned_grads: Vec<ParamGrad> = Vec::new();
    for (i, (b, kept)) in blocks.iter().zip(kept).enumerate().rev() {
        if i < lowest {
            return Ok(());
        }
        let activations = match kept {
            KeptBlock::Activations(a) => a,
            KeptBlock::Input(x) if b.owns_backward(&x) => b.activations(&x, causal, precision)?,
            KeptBlock::Input(x) => {
                g = match through(x, &g, grads, &|x| b.forward(x, causal))? {
                    Some(g) => g,
                    None => return Ok(()),
                };
                continue;
            }
        };
        g = b.backward(activations, &g, causal, &mut owned_grads)?;
        for (param, grad) in owned_grads.drain(..) {
            add_grad(grads, slots.get(&param.id()).copied(), grad)?;
        }
    }
    if !stem_trains {
        return Ok(());
    }
    let (x, _) = stem(clip, data, start, len)?;
    let store = (x * g)?.sum_all()?.backward()?;
    accumulate(grads, params, &store)
}
