//! The depthwise loop in NEON: each output pixel's channels in blocks of 16 held in four
//! registers from the bias to the store, one `fmla` per tap and four channels (the
//! portable loop, vectorized by the compiler, loaded and stored the sums at every tap and
//! multiplied and added apart). Maps whose channels are not a multiple of four and
//! kernels above 5 x 5 (none of EfficientNet-Lite0's) take the portable loop.

use core::arch::aarch64::*;

use crate::kernels::depthwise::{DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights};
use crate::kernels::portable;

/// The largest filter side whose taps one pixel's list holds.
const MAX_KERNEL: usize = 5;

pub static NEON: DepthwiseKernel = DepthwiseKernel { name: "neon", rows };

fn rows(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    first_row: usize,
    rows: &mut [f32],
) {
    let channels = g.channels;
    let row_len = g.out_width * channels;
    if !channels.is_multiple_of(4) || row_len == 0 || g.kernel > MAX_KERNEL {
        return portable::depthwise::rows(g, input, weights, ceiling, first_row, rows);
    }
    // What the raw reads below rely on.
    assert_eq!(input.len(), g.input_len(), "depthwise input");
    assert_eq!(weights.values.len(), g.kernel * g.kernel * channels);
    assert_eq!(weights.bias.len(), channels, "depthwise bias");
    assert!(
        first_row + rows.len() / row_len <= g.out_height,
        "rows past the map"
    );
    for (oy, row) in (first_row..).zip(rows.chunks_exact_mut(row_len)) {
        let tap_rows = g.taps_inside(oy, g.pad_top, g.height);
        let top = (oy * g.stride) as isize - g.pad_top as isize;
        for (ox, out) in row.chunks_exact_mut(channels).enumerate() {
            let tap_columns = g.taps_inside(ox, g.pad_left, g.width);
            let left = (ox * g.stride) as isize - g.pad_left as isize;
            // The taps inside the map, as offsets of their pixels and of their weights.
            let mut taps = [(0usize, 0usize); MAX_KERNEL * MAX_KERNEL];
            let mut count = 0;
            for ky in tap_rows.clone() {
                let y = (top + ky as isize) as usize;
                for kx in tap_columns.clone() {
                    let x = (left + kx as isize) as usize;
                    taps[count] = (
                        (y * g.width + x) * channels,
                        (ky * g.kernel + kx) * channels,
                    );
                    count += 1;
                }
            }
            // SAFETY: every tap offset plus `channels` is within `input` and
            // `weights.values` (the taps are inside the map, checked above), `out` and
            // the bias hold `channels` values, a multiple of four.
            unsafe { pixel(input, weights, &taps[..count], ceiling, out) };
        }
    }
}

/// One output pixel: `out = clamp(bias + sum over taps of min(input, ceiling) * weight, 0,
/// ceiling)`, sixteen channels at a time, then four.
///
/// # Safety
/// `out.len()` is a multiple of four and at most the bias's length; each `(pixel,
/// weight)` offset has `out.len()` values after it in `input` and `weights.values`.
#[inline]
unsafe fn pixel(
    input: &[f32],
    weights: &DepthwiseWeights,
    taps: &[(usize, usize)],
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
        for &(pixel, weight) in taps {
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
        for &(pixel, weight) in taps {
            let v = vminq_f32(vld1q_f32(input.add(pixel + c)), top);
            sum = vfmaq_f32(sum, v, vld1q_f32(values.add(weight + c)));
        }
        vst1q_f32(out_ptr.add(c), clamp(sum));
        c += 4;
    }
}
