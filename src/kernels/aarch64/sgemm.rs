//! The f32 register tiles on aarch64 (`neon`): `R x 8` for R up to 8, 16 accumulators,
//! the rows' values four k at a time, `fmla` by lane. The driver that runs them over
//! blocks of a product is `gemm::tiled`, shared with 32-bit ARM.

use std::arch::aarch64::*;

use crate::kernels::gemm::tiled::Operands;

/// `c[R x 8] += a[R x k] * b[k x 8]` (the first `R` of `a`), strides in elements: 2R
/// accumulators, the rows' values four k at a time, `fmla` by lane.
///
/// # Safety
/// As `gemm::tiled`'s `tile`, with `R` rows.
#[inline(always)]
pub(crate) unsafe fn tile_rows<const R: usize>(t: Operands) {
    let Operands {
        k,
        mut b,
        ldb,
        c,
        ldc,
        ..
    } = t;
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut a: [*const f32; R] = crate::kernels::unrolled(|r| t.a[r]);
    // One k: its eight weights times lane `$lane` of each row's values.
    macro_rules! step {
        ($values:ident, $lane:literal) => {{
            let (low, high) = (vld1q_f32(b), vld1q_f32(b.add(4)));
            b = b.add(ldb);
            for (acc, values) in acc.iter_mut().zip(&$values) {
                acc[0] = vfmaq_laneq_f32::<$lane>(acc[0], low, *values);
                acc[1] = vfmaq_laneq_f32::<$lane>(acc[1], high, *values);
            }
        }};
    }
    for _ in 0..k / 4 {
        let values: [float32x4_t; R] = crate::kernels::unrolled(|r| vld1q_f32(a[r]));
        step!(values, 0);
        step!(values, 1);
        step!(values, 2);
        step!(values, 3);
        a = a.map(|row| row.add(4));
    }
    for _ in 0..k % 4 {
        let values: [float32x4_t; R] = crate::kernels::unrolled(|r| vld1q_dup_f32(a[r]));
        step!(values, 0);
        a = a.map(|row| row.add(1));
    }
    for (r, acc) in acc.iter().enumerate() {
        let c = c.add(r * ldc);
        vst1q_f32(c, vaddq_f32(vld1q_f32(c), acc[0]));
        vst1q_f32(c.add(4), vaddq_f32(vld1q_f32(c.add(4)), acc[1]));
    }
}
