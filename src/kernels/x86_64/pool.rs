//! The 2 x 2 max pooling loop (`portable/pool.rs`) compiled for AVX-512: 16 lanes a
//! vector where the baseline has 4.

use crate::kernels::pool::PoolKernel;
use crate::kernels::portable::pool::max_pool_2x2_rows;

pub static AVX512: PoolKernel = PoolKernel {
    name: "avx512",
    // SAFETY: `plug` lists it only at a level whose CPU has AVX-512F.
    max_pool_2x2: |input, row, channels, out_width, out| unsafe {
        max_pool_2x2_avx512(input, row, channels, out_width, out)
    },
};

/// # Safety
/// AVX-512F is present.
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_2x2_avx512(
    input: &[f32],
    row: usize,
    channels: usize,
    out_width: usize,
    out: &mut [f32],
) {
    max_pool_2x2_rows(input, row, channels, out_width, out);
}
