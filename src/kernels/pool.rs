//! Pooling over NHWC activations.

use super::im2col::Window;
use super::table::table;
use super::{for_each_band, Threads};

/// Max pooling; padded positions are ignored (as if they held -inf). With several
/// threads, each takes a band of output rows.
pub fn max_pool(window: &Window, input: &[f32], out: &mut [f32], threads: Threads) {
    let c = window.channels;
    assert_eq!(input.len(), window.height * window.width * c);
    let (out_h, out_w) = (window.out_height(), window.out_width());
    let out = &mut out[..out_h * out_w * c];
    let row_len = out_w * c;
    let rows_per_band = out_h.div_ceil(threads.get()).max(1);
    let band = |(i, band): (usize, &mut [f32])| {
        max_pool_rows(window, input, i * rows_per_band, band);
    };
    let bands = out.chunks_mut(rows_per_band * row_len.max(1)).enumerate();
    for_each_band(bands.collect(), &band);
}

/// Output rows `first_row..` of a max pooling, as many as `out` holds.
fn max_pool_rows(window: &Window, input: &[f32], first_row: usize, out: &mut [f32]) {
    let c = window.channels;
    let out_w = window.out_width();
    out.fill(f32::NEG_INFINITY);
    for (i, dst) in out.chunks_exact_mut(c).enumerate() {
        let (oy, ox) = (first_row + i / out_w, i % out_w);
        for (_, pixel) in window.taps_in_image(oy, ox) {
            let src = &input[pixel * c..][..c];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = larger(*d, s);
            }
        }
    }
}

/// 2 x 2 max pooling, stride 2, over an NHWC map whose rows are `row_pixels` apart
/// (wider than the map when a convolution left extra pixels at their ends): `out` gets
/// `out_height x out_width` pixels of `channels`, read from the first `2 x out_width`
/// pixels of input rows `0..2 x out_height`. Four loads and three maxima a vector,
/// where [`max_pool`]'s taps, from a window of any size, took a tenth of the small CNN's
/// pass (its rectified maps pooled while in L2).
pub fn max_pool_2x2(
    input: &[f32],
    row_pixels: usize,
    channels: usize,
    (out_height, out_width): (usize, usize),
    out: &mut [f32],
) {
    assert!(
        2 * out_width <= row_pixels,
        "pooled rows within the input rows"
    );
    let row = row_pixels * channels;
    let reads = match out_height {
        0 => 0,
        h => (2 * h - 1) * row + 2 * out_width * channels,
    };
    assert!(input.len() >= reads, "input rows for every pooled row");
    let out = &mut out[..out_height * out_width * channels];
    (table().pool.max_pool_2x2)(input, row, channels, out_width, out);
}

/// One build of the 2 x 2 pooling loop.
#[derive(Debug)]
pub struct PoolKernel {
    pub name: &'static str,
    /// `(input, row, channels, out_width, out)`: `out`'s rows pooled from pairs of input
    /// rows `row` values apart (the caller checked the bounds).
    pub max_pool_2x2: fn(&[f32], usize, usize, usize, &mut [f32]),
}

/// Mean over all pixels of an NHWC image, one value per channel.
pub fn global_average(input: &[f32], channels: usize, out: &mut [f32]) {
    let out = &mut out[..channels];
    out.fill(0.0);
    let pixels = input.len() / channels;
    for pixel in input.chunks_exact(channels) {
        for (o, x) in out.iter_mut().zip(pixel) {
            *o += x;
        }
    }
    let scale = 1.0 / pixels as f32;
    out.iter_mut().for_each(|o| *o *= scale);
}

/// `max(x, 0)` in place (NaN becomes 0).
pub fn relu(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = larger(*v, 0.0));
}

/// `b` when it is the larger, else `a`: a comparison, not `f32::max`, which on 32-bit ARM
/// is a call to libm's `fmaxf` per value (VFP has no max instruction). Vectorizes to
/// `maxps` on x86.
#[inline(always)]
pub fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;

    #[test]
    fn max_pool_matches_candle_on_odd_sizes() {
        use candle_core::{Device, Tensor};
        let mut rng = Lcg(5);
        for case in 0..30 {
            let window = Window {
                height: 3 + rng.below(10),
                width: 3 + rng.below(10),
                channels: 1 + rng.below(4),
                kernel: 3,
                stride: 2,
                padding: 1,
            };
            let input = rng.vec(window.height * window.width * window.channels);
            let mut ours = vec![0.0; window.rows() * window.channels];
            max_pool(&window, &input, &mut ours, Threads(1 + case % 3));
            // candle: NCHW, -inf padding by hand.
            let (h, w, c) = (window.height, window.width, window.channels);
            let nchw = Tensor::from_vec(input, (1, h, w, c), &Device::Cpu)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let padded = nchw
                .pad_with_same(3, 1, 1)
                .unwrap()
                .pad_with_same(2, 1, 1)
                .unwrap();
            let expected = padded
                .max_pool2d_with_stride(3, 2)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours, expected, "{window:?}");
        }
    }

    /// The 2 x 2 pooling against the window's on odd sizes, rows as wide as the map and
    /// wider (extra pixels at the ends, which it must not read into its output).
    #[test]
    fn max_pool_2x2_matches_the_window_pooling() {
        let kernels = crate::kernels::table::variants("pool", |k| k.pool, |k| k.name);
        let mut rng = Lcg(8);
        for case in 0..40 {
            let (height, width) = (2 + rng.below(9), 2 + rng.below(9));
            let channels = [1, 3, 16, 17, 32, 64][case % 6];
            let extra = case % 3;
            let window = Window {
                height,
                width,
                channels,
                kernel: 2,
                stride: 2,
                padding: 0,
            };
            let input = rng.vec(height * width * channels);
            let mut expected = vec![0.0; window.rows() * channels];
            max_pool(&window, &input, &mut expected, Threads::ONE);
            // The same rows, `extra` pixels of large values after each.
            let row_pixels = width + extra;
            let mut wide = vec![1e9; height * row_pixels * channels];
            for (wide, row) in wide
                .chunks_exact_mut(row_pixels * channels)
                .zip(input.chunks_exact(width * channels))
            {
                wide[..row.len()].copy_from_slice(row);
            }
            let shape = (window.out_height(), window.out_width());
            if case % 2 == 0 {
                // Ending where the last pooled pixel's reads do, as a convolution's
                // output whose last row has no extra pixels.
                let last = (2 * shape.0 - 1) * row_pixels + 2 * shape.1;
                wide.truncate(last * channels);
            }
            let mut ours = vec![f32::NAN; window.rows() * channels + 5];
            max_pool_2x2(&wide, row_pixels, channels, shape, &mut ours);
            assert_eq!(
                ours[..expected.len()],
                expected,
                "{window:?}, {extra} extra"
            );
            assert!(
                ours[expected.len()..].iter().all(|v| v.is_nan()),
                "{window:?}"
            );
            // Every kernel this CPU runs, not only the table's.
            for kernel in &kernels {
                let mut direct = vec![f32::NAN; expected.len()];
                let row = row_pixels * channels;
                (kernel.max_pool_2x2)(&wide, row, channels, shape.1, &mut direct);
                assert_eq!(
                    direct, expected,
                    "{window:?}, {extra} extra, {}",
                    kernel.name
                );
            }
        }
    }

    #[test]
    fn global_average_is_the_channel_mean() {
        let mut out = [0.0; 2];
        global_average(&[1.0, 10.0, 3.0, 20.0], 2, &mut out);
        assert_eq!(out, [2.0, 15.0]);
    }
}
