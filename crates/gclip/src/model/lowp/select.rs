//! The kernel variants of the bf16 and int8 products and the run-time CPU checks that tell
//! which of them this machine can run.

use super::*;

/// bf16 kernel variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA (Zen 1-3, Intel Haswell to Comet Lake): bf16 widened to f32 once per
    /// block of weights (staged), then f32 FMA.
    Avx2,
    /// AVX-512F: bf16 widened to f32, f32 FMA.
    Avx512,
    /// AVX-512 BF16: `vdpbf16ps`.
    Avx512Bf16,
    /// AMX-BF16 tiles (`tdpbf16ps`, Intel Sapphire Rapids+), AVX-512 BF16 for the edges.
    Amx,
}

/// int8 kernel variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// Plain Rust, any CPU (i32 accumulation).
    Portable,
    /// AVX2: `vpmaddubsw` on |a| and the weights carrying a's sign, which cannot saturate
    /// (|a|, |w| <= 127), then `vpmaddwd` to i32; exact like the others.
    Avx2,
    /// AVX-512 VNNI: `vpdpbusd`.
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`, Intel Sapphire Rapids+), AVX-512 VNNI for the edges; equal
    /// to the VNNI kernel bit for bit.
    Amx,
}

#[cfg(target_arch = "x86_64")]
pub(super) use crate::model::kernels::has_avx2_fma;
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_avx2_fma() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_avx512() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512bf16() -> bool {
    has_avx512()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_avx512bf16() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512vnni() -> bool {
    has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_avx512vnni() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(super) fn has_amx_bf16() -> bool {
    has_avx512bf16() && amx::support().bf16
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_amx_bf16() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(super) fn has_amx_int8() -> bool {
    has_avx512vnni() && std::arch::is_x86_feature_detected!("avx512bw") && amx::support().int8
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_amx_int8() -> bool {
    false
}

/// f32 panel kernel variants ([`super::linear_f32_fused`] over [`super::PackedF32`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum F32PanelKernel {
    /// AVX2 + FMA: 6 rows × 16 columns of accumulators, each panel in two halves.
    Avx2,
    /// AVX-512F: 14 rows × 32 columns of accumulators.
    Avx512,
}

impl F32PanelKernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            F32PanelKernel::Avx2 => has_avx2_fma(),
            F32PanelKernel::Avx512 => has_avx512(),
        }
    }
    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<F32PanelKernel> {
        [F32PanelKernel::Avx2, F32PanelKernel::Avx512]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            F32PanelKernel::Avx2 => "f32-panels-avx2",
            F32PanelKernel::Avx512 => "f32-panels-avx512",
        }
    }
}

impl Bf16Kernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Portable => true,
            Bf16Kernel::Avx2 => has_avx2_fma(),
            Bf16Kernel::Avx512 => has_avx512(),
            Bf16Kernel::Avx512Bf16 => has_avx512bf16(),
            Bf16Kernel::Amx => has_amx_bf16(),
        }
    }
    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<Bf16Kernel> {
        [
            Bf16Kernel::Portable,
            Bf16Kernel::Avx2,
            Bf16Kernel::Avx512,
            Bf16Kernel::Avx512Bf16,
            Bf16Kernel::Amx,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }
    /// The fastest variant this CPU can run.
    pub fn best() -> Bf16Kernel {
        *Self::available().last().unwrap_or(&Bf16Kernel::Portable)
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Portable => "bf16-portable",
            Bf16Kernel::Avx2 => "bf16-avx2",
            Bf16Kernel::Avx512 => "bf16-avx512",
            Bf16Kernel::Avx512Bf16 => "bf16-avx512bf16",
            Bf16Kernel::Amx => "bf16-amx",
        }
    }
}

impl Int8Kernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Int8Kernel::Portable => true,
            Int8Kernel::Avx2 => has_avx2_fma(),
            Int8Kernel::Avx512Vnni => has_avx512vnni(),
            Int8Kernel::Amx => has_amx_int8(),
        }
    }
    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<Int8Kernel> {
        [
            Int8Kernel::Portable,
            Int8Kernel::Avx2,
            Int8Kernel::Avx512Vnni,
            Int8Kernel::Amx,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }
    /// The fastest variant this CPU can run.
    pub fn best() -> Int8Kernel {
        *Self::available().last().unwrap_or(&Int8Kernel::Portable)
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Portable => "int8-portable",
            Int8Kernel::Avx2 => "int8-avx2",
            Int8Kernel::Avx512Vnni => "int8-avx512vnni",
            Int8Kernel::Amx => "int8-amx",
        }
    }
}
