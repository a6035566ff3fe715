//! Lowering a convolution to a matrix product on NHWC activations: every output pixel
//! becomes one row holding its receptive field, ordered (kernel row, kernel column,
//! channel) to match the packed weights of [`crate::plan::Conv2d`]. Padding lanes are
//! written as zeros (garbage there could decode to denormals and slow the product down).
//! int8 convolutions lower and quantize in one pass ([`Window::lower_quantized`]). The f32
//! kernel on AVX-512 reads windows of several pixels in place instead, from the input
//! rows copied with their zero padding ([`Window::pad_rows`], [`PaddedRows`]).

use super::pool::larger;
use super::quantize;

/// Image rows of a convolution's input, zero padding included, as [`Window::pad_rows`]
/// leaves them: output pixel `(y, x)`'s lowered row is, kernel row by kernel row (`ky`),
/// the `kernel x channels` values from padded pixel `(stride * y + ky, stride * x)` on, so
/// the rows of pixels side by side in an image row lie `stride x channels` values apart.
#[derive(Debug)]
pub struct PaddedRows<'a> {
    pub(crate) data: &'a [f32],
    /// The padded image row that is `data`'s first.
    pub(crate) first_row: usize,
    pub(crate) out_width: usize,
    pub(crate) padded_width: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) channels: usize,
}

impl<'a> PaddedRows<'a> {
    /// The rows of a valid (unpadded) stride-1 convolution, read in place from its input
    /// `data` (image rows of `width` pixels) with no copy: its output pixels are counted
    /// over the input's whole width, so that one image row's rows continue into the
    /// next's at the same step and a kernel's tiles run across image rows. The last
    /// `kernel - 1` pixels of each output row are windows that wrap around into the next
    /// image row: extra pixels, which the caller ignores (and a last output row leaves
    /// out, whose windows would read past `data`).
    pub fn valid_in_place(data: &'a [f32], width: usize, kernel: usize, channels: usize) -> Self {
        Self {
            data,
            first_row: 0,
            out_width: width,
            padded_width: width,
            kernel,
            stride: 1,
            channels,
        }
    }

    /// The output pixels of [`Self::valid_in_place`] rows for `out_rows` output rows:
    /// every row as wide as the input's but the last, whose wrapping windows would read
    /// past `data`.
    pub fn valid_pixels(&self, out_rows: usize) -> usize {
        (out_rows * self.out_width + 1).saturating_sub(self.kernel)
    }

    /// Whether one image row's output pixels continue into the next's at the same step
    /// ([`Self::valid_in_place`]).
    pub fn rows_continue(&self) -> bool {
        self.stride == 1 && self.out_width == self.padded_width
    }

    /// Values from one output pixel's row to the next one's in the same image row.
    pub fn pixel_step(&self) -> usize {
        self.stride * self.channels
    }

    /// Values in one kernel row of a lowered row.
    pub fn kernel_row_len(&self) -> usize {
        self.kernel * self.channels
    }

    /// Where output pixel `pixel`'s kernel row `ky` starts in `data`.
    pub fn kernel_row_start(&self, pixel: usize, ky: usize) -> usize {
        let (y, x) = (pixel / self.out_width, pixel % self.out_width);
        let row = y * self.stride + ky - self.first_row;
        (row * self.padded_width + x * self.stride) * self.channels
    }
}

/// Geometry of a square convolution window over an NHWC image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Length of one lowered row.
    pub fn patch_len(&self) -> usize {
        self.kernel * self.kernel * self.channels
    }

    pub fn rows(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Whether the input is already the lowered matrix (1x1, stride 1, no padding).
    pub fn is_identity(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Whether a product can read this window's rows in place from [`Self::pad_rows`]: a
    /// window of several pixels (1 x 1 ones read their input as it is, or lowered when
    /// strided) that overlaps the image.
    pub fn reads_padded(&self) -> bool {
        self.kernel > 1 && self.padding < self.kernel
    }

    /// Values [`Self::pad_rows`] writes at most for `pixels` output pixels from anywhere
    /// in the image.
    pub fn padded_len(&self, pixels: usize) -> usize {
        let out_rows = pixels.div_ceil(self.out_width()) + 1;
        let padded_rows = (out_rows - 1) * self.stride + self.kernel;
        padded_rows * (self.width + 2 * self.padding) * self.channels
    }

    /// The input rows that output pixels `first_pixel..first_pixel + pixels` read, with
    /// their zero padding around them, written into `scratch` (at least
    /// [`Self::padded_len`] long), which a kernel then reads in place ([`PaddedRows`]):
    /// a ninth of what lowering them writes (3 x 3, stride 1), a twelfth (7 x 7, stride 2).
    pub fn pad_rows<'a>(
        &self,
        input: &[f32],
        first_pixel: usize,
        pixels: usize,
        scratch: &'a mut [f32],
    ) -> PaddedRows<'a> {
        assert!(
            self.reads_padded(),
            "a window of several pixels over the image"
        );
        assert_eq!(input.len(), self.height * self.width * self.channels);
        assert!(pixels > 0 && first_pixel + pixels <= self.rows());
        let (c, pad, out_width) = (self.channels, self.padding, self.out_width());
        let padded_width = self.width + 2 * pad;
        let first_y = first_pixel / out_width;
        let last_y = (first_pixel + pixels - 1) / out_width;
        let first_row = first_y * self.stride;
        let rows = (last_y - first_y) * self.stride + self.kernel;
        let data = &mut scratch[..rows * padded_width * c];
        // Padded row `first_row + i` holds input row `first_row + i - pad`.
        for (i, row) in data.chunks_exact_mut(padded_width * c).enumerate() {
            match (first_row + i)
                .checked_sub(pad)
                .filter(|&y| y < self.height)
            {
                Some(y) => {
                    row[..pad * c].fill(0.0);
                    row[pad * c..][..self.width * c]
                        .copy_from_slice(&input[y * self.width * c..][..self.width * c]);
                    row[(pad + self.width) * c..].fill(0.0);
                }
                None => row.fill(0.0),
            }
        }
        PaddedRows {
            data,
            first_row,
            out_width,
            padded_width,
            kernel: self.kernel,
            stride: self.stride,
            channels: c,
        }
    }

    /// Writes rows `first_row..` of the lowered `rows x patch_len` matrix of `input` into
    /// `out`, as many as fit. Works on f32 and on quantized (u8) activations alike.
    pub fn lower_rows<T: Copy + Default>(&self, input: &[T], first_row: usize, out: &mut [T]) {
        assert_eq!(input.len(), self.height * self.width * self.channels);
        let out_width = self.out_width();
        for (i, row) in out.chunks_exact_mut(self.patch_len()).enumerate() {
            let pixel = first_row + i;
            self.lower_pixel(input, pixel / out_width, pixel % out_width, row);
        }
    }

    /// Rows `first_row..first_row + rows` of the lowered matrix: the input itself when the
    /// window is the identity, else lowered into `scratch`.
    pub fn lowered_band<'a, T: Copy + Default>(
        &self,
        input: &'a [T],
        first_row: usize,
        rows: usize,
        scratch: &'a mut [T],
    ) -> &'a [T] {
        let patch = self.patch_len();
        if self.is_identity() {
            &input[first_row * patch..(first_row + rows) * patch]
        } else {
            self.lower_rows(input, first_row, scratch);
            scratch
        }
    }

    fn lower_pixel<T: Copy + Default>(
        &self,
        input: &[T],
        out_y: usize,
        out_x: usize,
        row: &mut [T],
    ) {
        self.lower_pixel_with(input, out_y, out_x, row, |from, to| {
            to.copy_from_slice(from)
        });
    }

    /// Fills one output pixel's lowered row: `convert` takes each run of input values
    /// that lands in the row (a whole kernel row when it lies inside the image, else one
    /// pixel's channels); padding lanes get `D::default()`.
    fn lower_pixel_with<S, D: Copy + Default>(
        &self,
        input: &[S],
        out_y: usize,
        out_x: usize,
        row: &mut [D],
        mut convert: impl FnMut(&[S], &mut [D]),
    ) {
        let c = self.channels;
        let span = self.kernel * c;
        for ky in 0..self.kernel {
            let dst = &mut row[ky * span..(ky + 1) * span];
            let y = (out_y * self.stride + ky) as isize - self.padding as isize;
            if y < 0 || y >= self.height as isize {
                dst.fill(D::default());
                continue;
            }
            let x0 = (out_x * self.stride) as isize - self.padding as isize;
            let row_start = y as usize * self.width;
            if x0 >= 0 && x0 as usize + self.kernel <= self.width {
                // The whole kernel row lies inside the image: one contiguous run.
                let start = (row_start + x0 as usize) * c;
                convert(&input[start..start + span], dst);
                continue;
            }
            for kx in 0..self.kernel {
                let x = x0 + kx as isize;
                let lane = &mut dst[kx * c..(kx + 1) * c];
                if x < 0 || x >= self.width as isize {
                    lane.fill(D::default());
                } else {
                    let start = (row_start + x as usize) * c;
                    convert(&input[start..start + c], lane);
                }
            }
        }
    }

    /// The largest of `pixel_max(pixel)` over one output pixel's receptive field (0 when it
    /// lies in the padding only): the largest value of its lowered row.
    fn field_max(&self, pixel_max: impl Fn(usize) -> f32, out_y: usize, out_x: usize) -> f32 {
        self.taps_in_image(out_y, out_x)
            .fold(0f32, |largest, (_, pixel)| {
                larger(largest, pixel_max(pixel))
            })
    }

    /// The taps (`ky * kernel + kx`) of output pixel `(out_y, out_x)`'s window that lie
    /// inside the image, each with the input pixel (`y * width + x`) it reads.
    pub fn taps_in_image(
        &self,
        out_y: usize,
        out_x: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        // The window's taps from `start` (padding included) that land in `0..len`.
        let inside = |start: usize, len: usize| {
            let first = self.padding.saturating_sub(start);
            first..self.kernel.min((len + self.padding).saturating_sub(start))
        };
        // Where the window starts, counting the padding as image.
        let (y0, x0) = (out_y * self.stride, out_x * self.stride);
        let (rows, cols) = (inside(y0, self.height), inside(x0, self.width));
        rows.flat_map(move |ky| {
            let y = y0 + ky - self.padding;
            cols.clone().map(move |kx| {
                (
                    ky * self.kernel + kx,
                    y * self.width + x0 + kx - self.padding,
                )
            })
        })
    }

    /// Rows `first_row..` of the lowered matrix of non-negative activations, quantized to
    /// `0..=max` straight from the f32 input (no f32 copy of the rows): each row gets its
    /// own scale, its largest value / `max` (0 for a row of zeros), written to
    /// `row_scales`. `pixel_max`, when given, holds each input pixel's largest value
    /// ([`quantize::maxima`]), so each row's largest value costs nine lookups instead of a
    /// pass over the row: worth it where windows overlap. Without it (1 x 1 windows, whose
    /// pixels each serve one row at most) each row's pixels are scanned.
    pub fn lower_quantized(
        &self,
        input: &[f32],
        pixel_max: Option<&[f32]>,
        first_row: usize,
        max: u8,
        out: &mut [u8],
        row_scales: &mut [f32],
    ) {
        let channels = self.channels;
        assert_eq!(input.len(), self.height * self.width * channels);
        if let Some(pixel_max) = pixel_max {
            assert_eq!(pixel_max.len(), self.height * self.width);
        }
        let largest_of = |pixel: usize| match pixel_max {
            Some(pixel_max) => pixel_max[pixel],
            None => quantize::max_value(&input[pixel * channels..][..channels]),
        };
        let out_width = self.out_width();
        for (i, (row, row_scale)) in out
            .chunks_exact_mut(self.patch_len())
            .zip(row_scales)
            .enumerate()
        {
            let (out_y, out_x) = ((first_row + i) / out_width, (first_row + i) % out_width);
            let largest = self.field_max(largest_of, out_y, out_x);
            if largest <= 0.0 {
                row.fill(0);
                *row_scale = 0.0;
                continue;
            }
            let scale = largest / max as f32;
            let inverse = 1.0 / scale;
            self.lower_pixel_with(input, out_y, out_x, row, |from, to| {
                quantize::quantize(from, inverse, max, to)
            });
            *row_scale = scale;
        }
    }

    /// The adjoint of lowering: adds every lane of the full lowered matrix back onto the
    /// input pixel it was copied from (padding lanes are dropped). Used for a
    /// convolution's input gradient.
    pub fn raise_add(&self, lowered: &[f32], image: &mut [f32]) {
        assert_eq!(lowered.len(), self.rows() * self.patch_len());
        assert_eq!(image.len(), self.height * self.width * self.channels);
        let (c, out_width) = (self.channels, self.out_width());
        for (pixel, row) in lowered.chunks_exact(self.patch_len()).enumerate() {
            let (out_y, out_x) = (pixel / out_width, pixel % out_width);
            for (tap, input_pixel) in self.taps_in_image(out_y, out_x) {
                let lane = &row[tap * c..][..c];
                for (to, from) in image[input_pixel * c..][..c].iter_mut().zip(lane) {
                    *to += from;
                }
            }
        }
    }

    /// The portable reference, one element at a time.
    pub fn lower_reference(&self, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows() * self.patch_len());
        for oy in 0..self.out_height() {
            for ox in 0..self.out_width() {
                for ky in 0..self.kernel {
                    for kx in 0..self.kernel {
                        let y = (oy * self.stride + ky) as isize - self.padding as isize;
                        let x = (ox * self.stride + kx) as isize - self.padding as isize;
                        let inside = (0..self.height as isize).contains(&y)
                            && (0..self.width as isize).contains(&x);
                        for ch in 0..self.channels {
                            out.push(if inside {
                                input[(y as usize * self.width + x as usize) * self.channels + ch]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;

    #[test]
    fn lowering_matches_the_reference_over_strides_padding_and_odd_sizes() {
        let mut rng = Lcg(11);
        for _ in 0..150 {
            let kernel = [1, 3, 5, 7][rng.below(4)];
            let window = Window {
                height: kernel + rng.below(9),
                width: kernel + rng.below(9),
                channels: 1 + rng.below(5),
                kernel,
                stride: 1 + rng.below(3),
                padding: rng.below(kernel / 2 + 1),
            };
            let input = rng.vec(window.height * window.width * window.channels);
            let mut out = vec![f32::NAN; window.rows() * window.patch_len()];
            // In two parts, as the threads of a convolution do.
            let split = rng.below(window.rows() + 1);
            let (head, tail) = out.split_at_mut(split * window.patch_len());
            window.lower_rows(&input, 0, head);
            window.lower_rows(&input, split, tail);
            assert_eq!(out, window.lower_reference(&input), "{window:?}");
        }
    }

    /// Lowering and quantizing in one pass gives what quantizing each lowered row of the
    /// reference does: the same scales and the same bytes.
    #[test]
    fn quantized_lowering_matches_quantizing_the_reference_rows() {
        let mut rng = Lcg(13);
        for case in 0..150 {
            let kernel = [1, 3, 7][rng.below(3)];
            let window = Window {
                height: kernel + rng.below(9),
                width: kernel + rng.below(9),
                channels: 1 + rng.below(9),
                kernel,
                stride: 1 + rng.below(3),
                padding: rng.below(kernel / 2 + 1),
            };
            // Post-ReLU activations: about half zeros, so some rows are all zero.
            let input: Vec<f32> = rng
                .vec(window.height * window.width * window.channels)
                .iter()
                .map(|x| if case % 5 == 0 { 0.0 } else { x.max(0.0) })
                .collect();
            let max = [127, 255][rng.below(2)];
            let patch = window.patch_len();
            let mut pixel_max = vec![0.0; window.height * window.width];
            quantize::maxima(&input, window.channels, &mut pixel_max);
            let mut out = vec![7u8; window.rows() * patch];
            let mut scales = vec![-1.0; window.rows()];
            let split = rng.below(window.rows() + 1);
            let (head, tail) = out.split_at_mut(split * patch);
            let (head_scales, tail_scales) = scales.split_at_mut(split);
            // Every other case finds each row's largest value by scanning its pixels.
            let pixel_max = (case % 2 == 0).then_some(&pixel_max[..]);
            window.lower_quantized(&input, pixel_max, 0, max, head, head_scales);
            window.lower_quantized(&input, pixel_max, split, max, tail, tail_scales);

            let reference = window.lower_reference(&input);
            for (row, (bytes, &scale)) in reference
                .chunks_exact(patch)
                .zip(out.chunks_exact(patch).zip(&scales))
            {
                let largest = quantize::max_value(row);
                let mut expected = vec![0u8; patch];
                let expected_scale = if largest > 0.0 {
                    let scale = largest / max as f32;
                    quantize::quantize(row, 1.0 / scale, max, &mut expected);
                    scale
                } else {
                    0.0
                };
                assert_eq!(scale, expected_scale, "{window:?}");
                assert_eq!(bytes, expected, "{window:?}");
            }
        }
    }

    /// <lower(x), g> == <x, raise(g)> for every geometry: raising is lowering's adjoint.
    #[test]
    fn raising_is_the_adjoint_of_lowering() {
        let mut rng = Lcg(12);
        for _ in 0..100 {
            let kernel = [1, 3, 5][rng.below(3)];
            let window = Window {
                height: kernel + rng.below(7),
                width: kernel + rng.below(7),
                channels: 1 + rng.below(4),
                kernel,
                stride: 1 + rng.below(2),
                padding: rng.below(kernel / 2 + 1),
            };
            let x = rng.vec(window.height * window.width * window.channels);
            let g = rng.vec(window.rows() * window.patch_len());
            let lowered = window.lower_reference(&x);
            let mut raised = vec![0.0; x.len()];
            window.raise_add(&g, &mut raised);
            let dot =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a * b) as f64).sum::<f64>();
            let (lhs, rhs) = (dot(&lowered, &g), dot(&x, &raised));
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{window:?}: {lhs} vs {rhs}"
            );
        }
    }
}
