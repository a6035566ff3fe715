//! Depthwise convolution (one k x k filter per channel, as in MobileNet and EfficientNet
//! blocks) over NHWC maps: the geometry, with TensorFlow's "SAME" padding, the weights'
//! layout, and the driver that gives each thread a band of output rows and runs the
//! kernel of the table. The portable kernel ([`super::portable::depthwise`]) is the
//! reference the others are tested against.

use super::table::table;
use super::{for_each_band, Threads};

/// One build of the depthwise loop.
#[derive(Debug)]
pub struct DepthwiseKernel {
    pub name: &'static str,
    /// `(geometry, input, weights, ceiling, first_row, rows)`: output rows `first_row..`
    /// into `rows` (the caller checked the lengths).
    pub rows: fn(&DepthwiseGeometry, &[f32], &DepthwiseWeights, f32, usize, &mut [f32]),
}

/// The shape of one depthwise convolution over `[height, width, channels]` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Zero rows above and columns left of the input (the rest of "SAME" goes below and
    /// right).
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_height: usize,
    pub out_width: usize,
}

/// TensorFlow's "SAME" padding of one axis: `(before, after)`. The output has
/// `ceil(size / stride)` positions; an odd total pads one more after than before, so a
/// stride-2 layer on an even size pads only after (k = 3) or one before and two after
/// (k = 5), where a symmetric `k / 2` shifts every window by a pixel.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl DepthwiseGeometry {
    /// A "SAME"-padded depthwise convolution.
    pub fn same(
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
    ) -> Self {
        Self {
            channels,
            height,
            width,
            kernel,
            stride,
            pad_top: same_padding(height, kernel, stride).0,
            pad_left: same_padding(width, kernel, stride).0,
            out_height: height.div_ceil(stride),
            out_width: width.div_ceil(stride),
        }
    }

    pub fn input_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    pub fn output_len(&self) -> usize {
        self.out_height * self.out_width * self.channels
    }

    /// The filter taps `0..kernel` of one axis that land inside `0..size` for the window
    /// at output position `out` (the others read padding).
    pub fn taps_inside(&self, out: usize, pad: usize, size: usize) -> std::ops::Range<usize> {
        let start = (out * self.stride) as isize - pad as isize;
        let first = (-start).clamp(0, self.kernel as isize) as usize;
        let last = (size as isize - start).clamp(0, self.kernel as isize) as usize;
        first..last.max(first)
    }
}

/// A depthwise layer's weights, BatchNorm folded in: `[kernel, kernel, channels]`
/// (channels fastest, like the maps), and a bias per channel.
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    pub kernel: usize,
    pub channels: usize,
    pub values: Vec<f32>,
    pub bias: Vec<f32>,
}

impl DepthwiseWeights {
    /// From candle's and the files' `[channels, 1, kernel, kernel]` order.
    pub fn from_stored(stored: &[f32], channels: usize, kernel: usize, bias: Vec<f32>) -> Self {
        assert_eq!(
            stored.len(),
            channels * kernel * kernel,
            "depthwise weights"
        );
        assert_eq!(bias.len(), channels, "depthwise bias");
        let taps = kernel * kernel;
        let mut values = vec![0.0; stored.len()];
        for (channel, filter) in stored.chunks_exact(taps).enumerate() {
            for (tap, &value) in filter.iter().enumerate() {
                values[tap * channels + channel] = value;
            }
        }
        Self {
            kernel,
            channels,
            values,
            bias,
        }
    }
}

/// The largest filter side whose taps [`for_each_pixel`] lists.
#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub(crate) const MAX_KERNEL: usize = 5;

/// A SIMD kernel's rows: `pixel(taps, out)` for each output pixel (see
/// [`for_each_pixel`]) where its loop over blocks of four channels applies (channels a
/// multiple of four, filters up to [`MAX_KERNEL`]), after checking the lengths its raw
/// reads rely on; the portable loop elsewhere.
#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub(crate) fn rows_by_pixel(
    g: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    (first_row, rows): (usize, &mut [f32]),
    pixel: impl FnMut(&[[usize; 2]], &mut [f32]),
) {
    let channels = g.channels;
    if channels == 0 || !channels.is_multiple_of(4) || g.kernel > MAX_KERNEL {
        return super::portable::depthwise::rows(g, input, weights, ceiling, first_row, rows);
    }
    assert_eq!(input.len(), g.input_len(), "depthwise input");
    assert_eq!(weights.values.len(), g.kernel * g.kernel * channels);
    assert_eq!(weights.bias.len(), channels, "depthwise bias");
    for_each_pixel(g, first_row, rows, pixel);
}

/// Walks the output rows `first_row..` held in `rows` pixel by pixel, handing `visit`
/// each pixel's taps inside the map as `[input, weight]` offsets in values (the first of
/// the pixel's channels in `input`, of the tap's in the weights) and its outputs: the
/// geometry the SIMD kernels share, their loops then over channels only. For filters up
/// to [`MAX_KERNEL`].
#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub(crate) fn for_each_pixel(
    g: &DepthwiseGeometry,
    first_row: usize,
    rows: &mut [f32],
    mut visit: impl FnMut(&[[usize; 2]], &mut [f32]),
) {
    assert!(
        g.kernel <= MAX_KERNEL,
        "a {0} x {0} depthwise filter",
        g.kernel
    );
    let channels = g.channels;
    let row_len = g.out_width * channels;
    if row_len == 0 {
        return;
    }
    assert!(
        rows.len().is_multiple_of(row_len) && first_row + rows.len() / row_len <= g.out_height,
        "rows past the map"
    );
    let mut taps = [[0; 2]; MAX_KERNEL * MAX_KERNEL];
    for (oy, row) in (first_row..).zip(rows.chunks_exact_mut(row_len)) {
        let tap_rows = g.taps_inside(oy, g.pad_top, g.height);
        let top = (oy * g.stride) as isize - g.pad_top as isize;
        for (ox, out) in row.chunks_exact_mut(channels).enumerate() {
            let tap_columns = g.taps_inside(ox, g.pad_left, g.width);
            let left = (ox * g.stride) as isize - g.pad_left as isize;
            let mut count = 0;
            for ky in tap_rows.clone() {
                let y = (top + ky as isize) as usize;
                for kx in tap_columns.clone() {
                    let x = (left + kx as isize) as usize;
                    taps[count] = [
                        (y * g.width + x) * channels,
                        (ky * g.kernel + kx) * channels,
                    ];
                    count += 1;
                }
            }
            visit(&taps[..count], out);
        }
    }
}

/// `output = clamp(bias + sum of weights * min(input, ceiling), 0, ceiling)`: a
/// depthwise convolution between two ReLU6 (`ceiling` 6; infinity for ReLU). The
/// input's clamp completes the ReLU6 of the product before, whose stores apply only
/// `max(x, 0)`.
pub fn depthwise(
    geometry: &DepthwiseGeometry,
    input: &[f32],
    weights: &DepthwiseWeights,
    ceiling: f32,
    output: &mut [f32],
    threads: Threads,
) {
    assert_eq!(input.len(), geometry.input_len(), "depthwise input");
    assert_eq!(output.len(), geometry.output_len(), "depthwise output");
    assert_eq!(
        (weights.kernel, weights.channels),
        (geometry.kernel, geometry.channels),
        "depthwise weights"
    );
    let row_len = geometry.out_width * geometry.channels;
    let rows_per_band = geometry.out_height.div_ceil(threads.get()).max(1);
    let bands: Vec<_> = output
        .chunks_mut(rows_per_band * row_len)
        .enumerate()
        .collect();
    let kernel = table().depthwise.rows;
    for_each_band(bands, &|(band, rows): (usize, &mut [f32])| {
        kernel(
            geometry,
            input,
            weights,
            ceiling,
            band * rows_per_band,
            rows,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::table::variants;

    #[test]
    fn same_padding_is_tensorflows() {
        // Stride 1: symmetric.
        assert_eq!(same_padding(224, 3, 1), (1, 1));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        // Stride 2 on even sizes: more after than before.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        // Odd sizes.
        assert_eq!(same_padding(7, 3, 2), (1, 1));
        assert_eq!(same_padding(1, 5, 1), (2, 2));
        let g = DepthwiseGeometry::same(8, 28, 28, 5, 2);
        assert_eq!(
            (g.out_height, g.out_width, g.pad_top, g.pad_left),
            (14, 14, 1, 1)
        );
    }

    /// Every output value against the definition, one tap at a time, on odd sizes, both
    /// strides and kernels: the driver with one and several threads, and every kernel
    /// this CPU runs.
    #[test]
    fn the_driver_computes_the_definition() {
        let (height, width) = (9, 7);
        // Fewer channels than a block, and a whole block and a part.
        for (channels, kernel, stride) in [(5, 3, 1), (5, 3, 2), (5, 5, 1), (70, 5, 2), (70, 3, 1)]
        {
            let input: Vec<f32> = (0..height * width * channels)
                .map(|i| ((i * 37 % 23) as f32 - 8.0) * 0.5)
                .collect();
            let g = DepthwiseGeometry::same(channels, height, width, kernel, stride);
            let stored: Vec<f32> = (0..channels * kernel * kernel)
                .map(|i| ((i * 11 % 7) as f32 - 3.0) * 0.25)
                .collect();
            let bias: Vec<f32> = (0..channels).map(|c| c as f32 - 2.0).collect();
            let weights = DepthwiseWeights::from_stored(&stored, channels, kernel, bias.clone());
            // The driver (the table's kernel, in bands), then every kernel this CPU runs.
            let mut runs: Vec<(String, Vec<f32>)> = Vec::new();
            for threads in [1, 3] {
                let mut output = vec![f32::NAN; g.output_len()];
                depthwise(&g, &input, &weights, 6.0, &mut output, Threads(threads));
                runs.push((format!("driver, {threads} threads"), output));
            }
            for kernel in variants("depthwise", |k| k.depthwise, |k| k.name) {
                let mut output = vec![f32::NAN; g.output_len()];
                (kernel.rows)(&g, &input, &weights, 6.0, 0, &mut output);
                runs.push((kernel.name.to_string(), output));
            }
            for (run, output) in &runs {
                for (i, &got) in output.iter().enumerate() {
                    let (pixel, c) = (i / channels, i % channels);
                    let (oy, ox) = (pixel / g.out_width, pixel % g.out_width);
                    let mut sum = bias[c];
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let y = (oy * stride + ky) as isize - g.pad_top as isize;
                            let x = (ox * stride + kx) as isize - g.pad_left as isize;
                            if (0..height as isize).contains(&y) && (0..width as isize).contains(&x)
                            {
                                let value = input[(y as usize * width + x as usize) * channels + c];
                                sum += value.min(6.0) * stored[(c * kernel + ky) * kernel + kx];
                            }
                        }
                    }
                    let want = sum.clamp(0.0, 6.0);
                    assert!(
                        (got - want).abs() <= 1e-5,
                        "k{kernel} s{stride} {run} [{oy},{ox},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
