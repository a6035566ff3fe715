//! The depthwise loop (`portable/depthwise.rs`) compiled for AVX2 and for AVX-512: 8 and
//! 16 lanes a vector over the channels where the baseline has 4.

use crate::kernels::depthwise::{DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights};
use crate::kernels::portable::depthwise::rows;

/// The portable loop compiled with `$feature` enabled, as the kernel `$name`.
macro_rules! compiled_with {
    ($kernel:ident, $name:literal, $feature:literal) => {
        pub static $kernel: DepthwiseKernel = DepthwiseKernel {
            name: $name,
            rows: |g, input, weights, ceiling, first_row, out| {
                /// # Safety
                /// The CPU has the feature.
                #[target_feature(enable = $feature)]
                unsafe fn compiled(
                    g: &DepthwiseGeometry,
                    input: &[f32],
                    weights: &DepthwiseWeights,
                    ceiling: f32,
                    first_row: usize,
                    out: &mut [f32],
                ) {
                    rows(g, input, weights, ceiling, first_row, out);
                }
                // SAFETY: listed only at levels whose CPU has the feature.
                unsafe { compiled(g, input, weights, ceiling, first_row, out) }
            },
        };
    };
}

compiled_with!(AVX2, "avx2", "avx2");
compiled_with!(AVX512, "avx512", "avx512f");
