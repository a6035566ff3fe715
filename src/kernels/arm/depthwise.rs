//! The depthwise loop for 32-bit ARM with NEON: the pixels' taps listed by
//! `depthwise::rows_by_pixel`, each pixel's channels by the assembly of
//! `depthwise_pixel.S`, sixteen in registers from the bias to the store (the portable loop
//! is scalar here: stable Rust has no NEON on this target). Maps whose channels are not a
//! multiple of four and filters above 5 x 5 take the portable loop.

use crate::kernels::depthwise::{
    rows_by_pixel, DepthwiseGeometry, DepthwiseKernel, DepthwiseWeights,
};

// `raw`: the braces are NEON register lists, not format arguments.
std::arch::global_asm!(include_str!("depthwise_pixel.S"), options(raw));

/// Arguments of the assembly, as `depthwise_pixel.S` lays them out.
#[repr(C)]
struct DepthwisePixel {
    input: *const f32,
    weights: *const f32,
    /// `[pixel, weight]` offsets in values, `count` pairs.
    taps: *const [usize; 2],
    count: usize,
    bias: *const f32,
    out: *mut f32,
    channels: usize,
    ceiling: f32,
}

extern "C" {
    /// One pixel's `channels` outputs (see `depthwise_pixel.S`).
    #[link_name = "edge_classify_depthwise_pixel_armv7"]
    fn depthwise_pixel_asm(pixel: *const DepthwisePixel);
}

pub static NEON: DepthwiseKernel = DepthwiseKernel {
    name: "neon-armv7",
    rows,
};

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
            if taps.is_empty() {
                // A window wholly in the padding (not with "SAME" padding): the bias alone.
                let clamp = |b: f32| b.max(0.0).min(ceiling);
                out.iter_mut()
                    .zip(&weights.bias)
                    .for_each(|(o, &b)| *o = clamp(b));
                return;
            }
            let pixel = DepthwisePixel {
                input: input.as_ptr(),
                weights: weights.values.as_ptr(),
                taps: taps.as_ptr(),
                count: taps.len(),
                bias: weights.bias.as_ptr(),
                out: out.as_mut_ptr(),
                channels: g.channels,
                ceiling,
            };
            // SAFETY: the level runs only where the CPU has NEON (`super::has_neon`); every
            // tap's offset plus `channels` is within `input` and `weights.values`
            // (`rows_by_pixel` keeps the taps inside the map, whose lengths it checked),
            // `out` and the bias hold `channels` values, a multiple of four.
            unsafe { depthwise_pixel_asm(&pixel) }
        },
    );
}
