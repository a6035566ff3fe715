//! The depthwise loop in NEON: each output pixel's channels in blocks of 16 held in four
//! registers from the bias to the store, one `fmla` per tap and four channels (the
//! portable loop, vectorized by the compiler, loaded and stored the sums at every tap and
//! multiplied and added apart). Maps whose channels are not a multiple of four and
//! kernels above 5 x 5 (none of EfficientNet-Lite0's) take the portable loop.

use core::arch::aarch64::*;

use crate::kernels::depthwise::{
    rows_by_pixel, DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights,
};

pub static NEON: DepthwiseKernel = DepthwiseKernel { name: "neon", rows };

fn rows(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    first_row: usize,
    rows: &mut [f32],
) {
    rows_by_pixel(
        g,
        input,
        weights,
        ceiling,
        (first_row, rows),
        |taps, out| {
            // SAFETY: every tap offset plus `channels` is within `input` and
            // `weights.values` (`rows_by_pixel` keeps the taps inside the map, whose lengths
            // it checked), `out` and the bias hold `channels` values, a multiple of four.
            unsafe { pixel(input, weights, taps, ceiling, out) }
        },
    );
}

/// One output pixel: `out = clamp(bias + sum over taps of min(input, ceiling) * weight, 0,
/// ceiling)`, sixteen channels at a time, then four.
///
/// # Safety
/// `out.len()` is a multiple of four and at most the bias's length; each `[pixel,
/// weight]` offset has `out.len()` values after it in `input` and `weights.values`.
#[inline]
unsafe fn pixel(
    input: &[f32],
    weights: &DepthwiseWeights,
    taps: &[[usize; 2]],
    ceiling: f32,
    out: &mut [f32],
) {
    let (input, values) = (input.as_ptr(), weights.values.as_ptr());
    let (bias, out_ptr, channels) = (weights.bias.as_ptr(), out.as_mut_ptr(), out.len());
    let (zero, top) = (vdupq_n_f32(0.0), vdupq_n_f32(ceiling));
    let clamp = |v| vminq_f32(vmaxq_f32(v, zero), top);
    let mut c = 0;
    while c + 16 <= channels {
        let mut sums = [0, 1, 2, 3].map(|i| vld1q_f32(bias.add(c + 4 * i)));
        for &[pixel, weight] in taps {
            let (x, w) = (input.add(pixel + c), values.add(weight + c));
            for (i, sum) in sums.iter_mut().enumerate() {
                let v = vminq_f32(vld1q_f32(x.add(4 * i)), top);
                *sum = vfmaq_f32(*sum, v, vld1q_f32(w.add(4 * i)));
            }
        }
        for (i, sum) in sums.into_iter().enumerate() {
            vst1q_f32(out_ptr.add(c + 4 * i), clamp(sum));
        }
        c += 16;
    }
    while c < channels {
        let mut sum = vld1q_f32(bias.add(c));
        for &[pixel, weight] in taps {
            let v = vminq_f32(vld1q_f32(input.add(pixel + c)), top);
            sum = vfmaq_f32(sum, v, vld1q_f32(values.add(weight + c)));
        }
        vst1q_f32(out_ptr.add(c), clamp(sum));
        c += 4;
    }
}
