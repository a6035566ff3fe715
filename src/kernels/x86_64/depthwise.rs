//! The depthwise loop (`portable/depthwise.rs`) compiled for AVX2 and for AVX-512: 8 and
//! 16 lanes a vector over the channels where the baseline has 4.

use crate::kernels::depthwise::{DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights};
use crate::kernels::portable::depthwise::rows;

pub static AVX2: DepthwiseKernel = DepthwiseKernel {
    name: "avx2",
    // SAFETY: listed only at levels whose CPU has AVX2.
    rows: |g, input, weights, ceiling, first_row, out| unsafe {
        rows_avx2(g, input, weights, ceiling, first_row, out)
    },
};

pub static AVX512: DepthwiseKernel = DepthwiseKernel {
    name: "avx512",
    // SAFETY: listed only at levels whose CPU has AVX-512F.
    rows: |g, input, weights, ceiling, first_row, out| unsafe {
        rows_avx512(g, input, weights, ceiling, first_row, out)
    },
};

/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    first_row: usize,
    out: &mut [f32],
) {
    rows(g, input, weights, ceiling, first_row, out);
}

/// # Safety
/// AVX-512F is present.
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    first_row: usize,
    out: &mut [f32],
) {
    rows(g, input, weights, ceiling, first_row, out);
}
