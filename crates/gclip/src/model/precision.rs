//! Numeric precision of a loaded model, chosen at load time.
//!
//! `fp32` runs every layer in f32, exactly as the reference does. `bf16` and `int8` change only
//! the weights of the transformer blocks' linear layers (attention q/k/v and output, MLP), which
//! hold nearly all of a tower's weights and multiply-adds: they are packed once, at load time,
//! into the layout of the low-precision kernels ([`super::lowp`]). The image tower's patch
//! embedding runs in bf16 in both, and on CPUs with AMX so do the attention's two products.
//! Everything else (LayerNorm, softmax, GELU, final projection and normalisation) stays in
//! f32, and activations travel between layers in f32: each packed layer converts its input
//! rows on the way in (to bf16, or to int8 with one scale per token).

use std::fmt;
use std::str::FromStr;

use super::lowp::Bf16Kernel;

/// The precision of a model's transformer weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere: the reference's numbers.
    #[default]
    Fp32,
    /// bf16 weights (half the memory), bf16 × bf16 products accumulated in f32.
    Bf16,
    /// int8 weights (one scale per output channel), int8 activations (one scale per token),
    /// products accumulated in i32.
    Int8,
}

impl Precision {
    /// Every precision, in the order of the command-line help.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Int8];

    /// The name used on the command line, in collections and in the HTTP API.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            _ => Err(format!(
                "unknown precision {s:?}: expected one of fp32, bf16, int8"
            )),
        }
    }
}

/// How a trainable layer (dense f32 weight) computes its matrix products, forward and backward:
/// in f32, or in bf16 with f32 accumulation on a bf16 kernel (mixed-precision training: the f32
/// weights stay the masters that the optimizer updates; see [`super::mixed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenseProducts {
    #[default]
    F32,
    Bf16(Bf16Kernel),
}

/// Which kernel variants the packed layers run: the fastest this CPU has (the default), or the
/// portable ones that every CPU runs (to compare them, or to rule a kernel out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    #[default]
    Fastest,
    Portable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        let e = "fp16".parse::<Precision>().unwrap_err();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }
}
