//! The portable depthwise convolution: for each output pixel, the bias, then each tap
//! inside the input as a loop over the channels (contiguous in NHWC, so the compiler
//! vectorizes it), then the clamp. The reference the others are tested against, and
//! what the x86 kernels compile again with wider vectors (no fused multiply-add: every
//! build gives the same bits).

use crate::kernels::depthwise::{DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights};

/// `min(v, ceiling)` as one `minps`-like instruction (`f32::min`'s NaN rule took two
/// more); a NaN input gives `ceiling`.
#[inline(always)]
fn below(v: f32, ceiling: f32) -> f32 {
    if v < ceiling {
        v
    } else {
        ceiling
    }
}

pub static DEPTHWISE: DepthwiseKernel = DepthwiseKernel {
    name: "portable",
    rows,
};

/// Output rows `first_row..` of the layer into `rows` (whole rows of
/// `out_width * channels` values).
#[inline(always)]
pub(crate) fn rows(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    first_row: usize,
    rows: &mut [f32],
) {
    let channels = g.channels;
    let row_len = g.out_width * channels;
    for (oy, row) in (first_row..).zip(rows.chunks_exact_mut(row_len)) {
        let tap_rows = g.taps_inside(oy, g.pad_top, g.height);
        let top = (oy * g.stride) as isize - g.pad_top as isize;
        for (ox, out) in row.chunks_exact_mut(channels).enumerate() {
            let tap_columns = g.taps_inside(ox, g.pad_left, g.width);
            let left = (ox * g.stride) as isize - g.pad_left as isize;
            out.copy_from_slice(&weights.bias);
            for ky in tap_rows.clone() {
                let y = (top + ky as isize) as usize;
                for kx in tap_columns.clone() {
                    let x = (left + kx as isize) as usize;
                    let pixel = &input[(y * g.width + x) * channels..][..channels];
                    let tap = &weights.values[(ky * g.kernel + kx) * channels..][..channels];
                    for ((o, &v), &w) in out.iter_mut().zip(pixel).zip(tap) {
                        *o += below(v, ceiling) * w;
                    }
                }
            }
            for o in out.iter_mut() {
                *o = below(o.max(0.0), ceiling);
            }
        }
    }
}
