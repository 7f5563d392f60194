//! Run-time choice of instruction set: each kernel's generic body compiled for AVX-512, for
//! AVX2 + FMA and for the baseline, and the checks that pick one.

/// Generates a run-time dispatcher `$name` that calls `$generic` compiled with AVX-512 when the
/// CPU has it, with AVX2 and FMA when it has those (Zen 2/3, Intel before Ice Lake), and the
/// baseline (SSE2) build otherwise. `$generic` must be `#[inline(always)]` so that it is compiled
/// inside each variant. The variants give identical results: Rust never contracts `a * b + c`
/// into an FMA on its own, and the kernels fix their summation order with explicit partial sums.
/// Exported for the other crates' kernels (the search crate's quantized scans).
#[macro_export]
macro_rules! simd_dispatch {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? = $generic:ident) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if $crate::model::kernels::has_avx512() {
                    // SAFETY: `wide` only needs the AVX-512 features checked just above.
                    return unsafe { wide($($arg),*) };
                }
                if $crate::model::kernels::has_avx2_fma() {
                    // SAFETY: `avx2` only needs the AVX2 and FMA features checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Whether this CPU runs the AVX-512 variants of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && has_avx2_fma()
    })
}

/// Whether this CPU runs the AVX2 + FMA variants of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    })
}
