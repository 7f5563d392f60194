//! Linear layers whose weights are packed for the bf16 and int8 kernels of [`super::lowp`], as a
//! candle op: `act(x)·W + b` with `x` an f32 CPU tensor, `W` held outside candle in the kernels'
//! layout, `b` an f32 tensor. Inference only: these layers have no gradient.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};

use super::kernels::{contiguous_f32, Activation, LinearInput, RowBlocks};
use super::lowp::{self, Bf16Kernel, Int8Kernel, PackedBf16, PackedInt8};
use super::precision::{KernelChoice, Precision};

/// A weight packed for one precision, with the kernel variant chosen for it at load time.
#[derive(Debug)]
pub enum PackedWeight {
    Bf16(PackedBf16, Bf16Kernel),
    Int8(PackedInt8, Int8Kernel),
}

impl PackedWeight {
    /// Packs `w`, row-major `[out_dim, in_dim]` f32 (PyTorch's `nn.Linear` layout), for
    /// `precision` (not fp32).
    pub(crate) fn pack(
        w: &RowBlocks,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<Self, String> {
        match precision {
            Precision::Bf16 => Ok(PackedWeight::Bf16(
                PackedBf16::pack_rows(w)?,
                bf16_kernel(kernels),
            )),
            Precision::Int8 => Ok(PackedWeight::Int8(
                PackedInt8::pack_rows(w)?,
                int8_kernel(kernels),
            )),
            Precision::Fp32 => Err("fp32 weights are not packed".into()),
        }
    }

    /// A weight packed earlier (by [`Self::pack`], bytes as [`Self::as_bytes`] gives them),
    /// used in place at `byte_offset` in `map`.
    pub(crate) fn from_mapped(
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        in_dim: usize,
        out_dim: usize,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<Self, String> {
        match precision {
            Precision::Bf16 => Ok(PackedWeight::Bf16(
                PackedBf16::from_mapped(map, byte_offset, in_dim, out_dim)?,
                bf16_kernel(kernels),
            )),
            Precision::Int8 => Ok(PackedWeight::Int8(
                PackedInt8::from_mapped(map, byte_offset, in_dim, out_dim)?,
                int8_kernel(kernels),
            )),
            Precision::Fp32 => Err("fp32 weights are not packed".into()),
        }
    }

    /// The packed bytes, as a converted-weights file stores them.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            PackedWeight::Bf16(w, _) => w.as_bytes(),
            PackedWeight::Int8(w, _) => w.as_bytes(),
        }
    }

    /// `(in_dim, out_dim)`
    pub fn dims(&self) -> (usize, usize) {
        match self {
            PackedWeight::Bf16(w, _) => (w.in_dim(), w.out_dim()),
            PackedWeight::Int8(w, _) => (w.in_dim(), w.out_dim()),
        }
    }

    pub fn precision(&self) -> Precision {
        match self {
            PackedWeight::Bf16(..) => Precision::Bf16,
            PackedWeight::Int8(..) => Precision::Int8,
        }
    }

    /// The kernel variant this weight runs with, by name (for `gclip bench`).
    pub fn kernel_name(&self) -> String {
        match self {
            PackedWeight::Bf16(_, k) => k.name().to_string(),
            PackedWeight::Int8(_, k) => k.name().to_string(),
        }
    }

    /// Whether the weight is used in place in a converted-weights file (not held in memory).
    pub fn is_mapped(&self) -> bool {
        match self {
            PackedWeight::Bf16(w, _) => w.is_mapped(),
            PackedWeight::Int8(w, _) => w.is_mapped(),
        }
    }

    /// Bytes held by the packed weight.
    pub fn bytes(&self) -> usize {
        self.as_bytes().len()
    }
}

/// The bf16 kernel variant `kernels` asks for on this CPU.
fn bf16_kernel(kernels: KernelChoice) -> Bf16Kernel {
    match kernels {
        KernelChoice::Fastest => Bf16Kernel::best(),
        KernelChoice::Portable => Bf16Kernel::Portable,
    }
}

/// The int8 kernel variant `kernels` asks for on this CPU.
fn int8_kernel(kernels: KernelChoice) -> Int8Kernel {
    match kernels {
        KernelChoice::Fastest => Int8Kernel::best(),
        KernelChoice::Portable => Int8Kernel::Portable,
    }
}

/// `act(x)·W + b` over packed weights (a [`CustomOp2`] of `x` and `b`), or `act(x)·W + b + r`
/// with a residual `r` of the output's shape (a [`CustomOp3`] of `x`, `b` and `r`): the
/// kernels apply the activation as they convert their input and add the residual as they store
/// their output, so neither an activated copy of `x` nor a separate sum is made.
pub(crate) struct PackedLinearOp {
    pub weight: Arc<PackedWeight>,
    pub input_activation: Option<Activation>,
}

impl PackedLinearOp {
    fn run(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (bs, bl): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let b = contiguous_f32(bs, bl, "linear bias")?;
        let (in_dim, out_dim) = self.weight.dims();
        let LinearInput { x, rows, shape } = LinearInput::new(
            contiguous_f32(xs, xl, "linear input")?,
            xl.shape(),
            (in_dim, out_dim),
            (b, bl.shape()),
            None,
        )?;
        let residual = match residual {
            Some((rs, rl)) if rl.shape() == &shape => Some(contiguous_f32(rs, rl, "residual")?),
            Some((_, rl)) => candle_core::bail!(
                "linear: residual {:?} does not match the output {shape:?}",
                rl.shape()
            ),
            None => None,
        };
        let fused = lowp::Fused {
            act: self.input_activation,
            residual,
        };
        let threads = candle_core::utils::get_num_threads();
        let dst = match &*self.weight {
            PackedWeight::Bf16(w, k) => lowp::linear_bf16_fused(&x, rows, w, b, fused, *k, threads),
            PackedWeight::Int8(w, k) => lowp::linear_int8_fused(&x, rows, w, b, fused, *k, threads),
        }
        .map_err(|e| candle_core::Error::Msg(format!("packed linear: {e}")))?;
        Ok((CpuStorage::F32(dst), shape))
    }
}

impl CustomOp2 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "gclip-packed-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((xs, xl), (bs, bl), None)
    }
}

impl CustomOp3 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "gclip-packed-linear-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((xs, xl), (bs, bl), Some((rs, rl)))
    }
}

/// A residual block's MLP with both weights bf16 on AMX or AVX-512 BF16, `x + fc2(act(fc1(h)))`,
/// as a [`CustomOp3`] of `h`, fc2's bias and the residual `x`: [`lowp::mlp_bf16`] finishes fc1's
/// tiles with the activation straight into fc2's bf16 input. Equal bit for bit to fc1 and fc2
/// as two [`PackedLinearOp`]s.
pub(crate) struct PackedMlpOp {
    fc1: Arc<PackedWeight>,
    /// Read in place at each call (a tensor clone shares the storage).
    fc1_bias: candle_core::Tensor,
    fc2: Arc<PackedWeight>,
    activation: Activation,
}

impl PackedMlpOp {
    /// The fused MLP of these two layers, when both are bf16 on the same kernel, AMX or AVX-512
    /// BF16, and fc1's width fits the kernel's panels; `None` otherwise (the layers then run one
    /// after the other).
    pub(crate) fn new(
        fc1: &Arc<PackedWeight>,
        fc1_bias: &candle_core::Tensor,
        fc2: &Arc<PackedWeight>,
        activation: Activation,
    ) -> Option<Self> {
        let fits = match (&**fc1, &**fc2) {
            (PackedWeight::Bf16(w1, k1), PackedWeight::Bf16(w2, k2)) => {
                k1 == k2
                    && matches!(k1, Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16)
                    && w1.out_dim() == w2.in_dim()
                    && w1.out_dim().is_multiple_of(lowp::NR)
            }
            _ => false,
        };
        fits.then(|| Self {
            fc1: fc1.clone(),
            fc1_bias: fc1_bias.clone(),
            fc2: fc2.clone(),
            activation,
        })
    }
}

impl CustomOp3 for PackedMlpOp {
    fn name(&self) -> &'static str {
        "gclip-packed-mlp"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (PackedWeight::Bf16(fc1, kernel), PackedWeight::Bf16(fc2, _)) =
            (&*self.fc1, &*self.fc2)
        else {
            candle_core::bail!("mlp: both weights must be bf16");
        };
        let (b1_storage, b1_layout) = self.fc1_bias.storage_and_layout();
        let candle_core::Storage::Cpu(b1_storage) = &*b1_storage else {
            candle_core::bail!("mlp: the hidden bias must be on the CPU");
        };
        let b1 = contiguous_f32(b1_storage, b1_layout, "mlp hidden bias")?;
        let b2 = contiguous_f32(bs, bl, "mlp output bias")?;
        let LinearInput { x, rows, shape } = LinearInput::new(
            contiguous_f32(hs, hl, "mlp input")?,
            hl.shape(),
            (fc1.in_dim(), fc2.out_dim()),
            (b2, bl.shape()),
            None,
        )?;
        if rl.shape() != &shape {
            candle_core::bail!(
                "mlp: residual {:?} does not match the output {shape:?}",
                rl.shape()
            );
        }
        let residual = contiguous_f32(rs, rl, "residual")?;
        let threads = candle_core::utils::get_num_threads();
        let dst = lowp::mlp_bf16(
            &x,
            rows,
            fc1,
            b1,
            self.activation,
            fc2,
            b2,
            Some(residual),
            *kernel,
            threads,
        )
        .map_err(|e| candle_core::Error::Msg(format!("packed mlp: {e}")))?;
        Ok((CpuStorage::F32(dst), shape))
    }
}
