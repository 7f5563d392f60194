//! The precision of a training run's matrix products (`train.precision`).
//!
//! `fp32` multiplies in f32, as open_clip's default. `bf16` is mixed precision, as open_clip's
//! `--precision amp_bf16`: the transformer blocks' linear layers multiply in bf16 with f32
//! accumulation, forward and backward ([`crate::model::mixed`]); the weights, the optimizer
//! state, LayerNorm, attention scores and softmax, the activations between layers, the loss and
//! its logit scale stay f32. So a checkpoint is the same in either precision (f32 masters), and
//! a run can resume in the other one.

use std::fmt;
use std::str::FromStr;

use crate::model::backward::KeptPrecision;
use crate::model::lowp::Bf16Kernel;
use crate::model::DenseProducts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TrainPrecision {
    #[default]
    Fp32,
    Bf16,
}

impl TrainPrecision {
    pub fn name(self) -> &'static str {
        match self {
            TrainPrecision::Fp32 => "fp32",
            TrainPrecision::Bf16 => "bf16",
        }
    }

    /// The precision the blocks keep their products' outputs in between the passes unless
    /// told otherwise: bf16 in bf16 training, as PyTorch's bf16 autocast keeps them.
    pub fn kept_activations(self) -> KeptPrecision {
        match self {
            TrainPrecision::Fp32 => KeptPrecision::F32,
            TrainPrecision::Bf16 => KeptPrecision::Bf16,
        }
    }

    /// How the linear layers multiply in this precision, on the fastest kernel of this CPU.
    pub fn products(self) -> DenseProducts {
        match self {
            TrainPrecision::Fp32 => DenseProducts::F32,
            TrainPrecision::Bf16 => DenseProducts::Bf16(Bf16Kernel::best()),
        }
    }
}

impl fmt::Display for TrainPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrainPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(TrainPrecision::Fp32),
            "bf16" | "bfloat16" | "amp_bf16" => Ok(TrainPrecision::Bf16),
            "int8" | "i8" => Err(format!(
                "training precision {s:?} is for inference only (no gradients through int8): \
                 choose fp32 or bf16"
            )),
            _ => Err(format!(
                "unknown training precision {s:?}: choose fp32 or bf16"
            )),
        }
    }
}

impl TryFrom<String> for TrainPrecision {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrainPrecision> for String {
    fn from(p: TrainPrecision) -> Self {
        p.name().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_inference_only_or_unknown_ones_are_refused() {
        for p in [TrainPrecision::Fp32, TrainPrecision::Bf16] {
            assert_eq!(p.name().parse::<TrainPrecision>().unwrap(), p);
        }
        assert_eq!(
            "amp_bf16".parse::<TrainPrecision>().unwrap(),
            TrainPrecision::Bf16
        );
        let e = "int8".parse::<TrainPrecision>().unwrap_err();
        assert!(e.contains("int8") && e.contains("fp32 or bf16"), "{e}");
        let e = "fp16".parse::<TrainPrecision>().unwrap_err();
        assert!(e.contains("fp16") && e.contains("fp32 or bf16"), "{e}");
        assert_eq!(TrainPrecision::Fp32.products(), DenseProducts::F32);
        assert!(matches!(
            TrainPrecision::Bf16.products(),
            DenseProducts::Bf16(_)
        ));
    }
}
