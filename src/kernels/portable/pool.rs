//! The 2 x 2 max pooling loop, written so that the compiler vectorizes it: the portable
//! kernel, and what the x86 kernel compiles again with AVX-512 enabled.

use crate::kernels::pool::{larger, PoolKernel};

pub static POOL: PoolKernel = PoolKernel {
    name: "portable",
    max_pool_2x2: max_pool_2x2_rows,
};

#[inline(always)]
pub(crate) fn max_pool_2x2_rows(
    input: &[f32],
    row: usize,
    c: usize,
    out_width: usize,
    out: &mut [f32],
) {
    if c == 0 || out_width == 0 {
        return;
    }
    for (y, out_row) in out.chunks_exact_mut(out_width * c).enumerate() {
        let top = &input[2 * y * row..][..2 * out_width * c];
        let bottom = &input[(2 * y + 1) * row..][..2 * out_width * c];
        let pairs = top.chunks_exact(2 * c).zip(bottom.chunks_exact(2 * c));
        for (dst, (top, bottom)) in out_row.chunks_exact_mut(c).zip(pairs) {
            let (top_left, top_right) = top.split_at(c);
            let (bottom_left, bottom_right) = bottom.split_at(c);
            // Zipped, not indexed: the indexes' bounds checks kept it from vectorizing.
            let upper = top_left.iter().zip(top_right);
            let lower = bottom_left.iter().zip(bottom_right);
            for (d, ((&a, &b), (&c, &e))) in dst.iter_mut().zip(upper.zip(lower)) {
                *d = larger(larger(a, b), larger(c, e));
            }
        }
    }
}
