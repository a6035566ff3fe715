//! Inference plans: a trained candle model compiled at load into what the CPU runs fast —
//! NHWC activations, BatchNorm already folded, weights laid out once as the right-hand
//! matrix of each product, bias and residual added by the product's accumulator, and
//! buffers reused from call to call. The candle modules stay the readable definition
//! (and the training path); each plan is tested against its module.

pub mod resnet;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

use crate::kernels::gemm::MatMul;
use crate::kernels::im2col::Window;
use rayon::prelude::*;

use crate::kernels::{pool, Threads};

/// One image's activations, height x width x channels, channels fastest.
#[derive(Debug, Default)]
pub struct FeatureMap {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl FeatureMap {
    /// Reshapes in place, keeping the allocation when it is large enough.
    fn reset(&mut self, height: usize, width: usize, channels: usize) {
        self.height = height;
        self.width = width;
        self.channels = channels;
        self.data.resize(height * width * channels, 0.0);
    }

    /// Copies a `[channels, height, width]` image into NHWC order.
    pub fn load_chw(&mut self, chw: &[f32], channels: usize, height: usize, width: usize) {
        assert_eq!(chw.len(), channels * height * width);
        self.reset(height, width, channels);
        let plane = height * width;
        for (pixel, dst) in self.data.chunks_exact_mut(channels).enumerate() {
            for (c, d) in dst.iter_mut().enumerate() {
                *d = chw[c * plane + pixel];
            }
        }
    }
}

/// A convolution (BatchNorm folded in) ready to run as one matrix product.
#[derive(Debug, Clone)]
pub struct Conv2d {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// `[kernel, kernel, in_channels, out_channels]`: the product's right-hand matrix.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// What a convolution adds to its product before the activation.
pub enum Epilogue<'a> {
    /// Bias, then ReLU.
    Relu,
    /// Bias plus a shortcut of the output's shape, then ReLU (a residual block's end).
    AddRelu(&'a [f32]),
    /// Bias only.
    Linear,
}

impl Conv2d {
    /// Lays out a candle convolution (`[out, in, k, k]` weights, optional bias).
    pub fn from_candle(conv: &candle_nn::Conv2d) -> Result<Self> {
        let config = conv.config();
        ensure!(
            config.groups == 1 && config.dilation == 1,
            "grouped or dilated convolutions are not planned"
        );
        let (out_channels, in_channels, kh, kw) = conv.weight().dims4()?;
        ensure!(kh == kw, "square kernels only, got {kh}x{kw}");
        let weights = conv
            .weight()
            .to_dtype(DType::F32)?
            .permute((2, 3, 1, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match conv.bias() {
            Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; out_channels],
        };
        Ok(Self {
            in_channels,
            out_channels,
            kernel: kh,
            stride: config.stride,
            padding: config.padding,
            weights,
            bias,
        })
    }

    fn window(&self, input: &FeatureMap) -> Window {
        Window {
            height: input.height,
            width: input.width,
            channels: input.channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// `output = epilogue(conv(input) + bias)`; `lowered` is scratch for im2col.
    ///
    /// With several threads, each one takes a band of output pixels and runs the whole
    /// pipeline on it (lowering, product, epilogue): no thread waits for another, and
    /// each band's lowered rows are still in cache when its product reads them.
    pub fn forward(
        &self,
        input: &FeatureMap,
        epilogue: Epilogue,
        output: &mut FeatureMap,
        lowered: &mut Vec<f32>,
        threads: Threads,
    ) {
        assert_eq!(input.channels, self.in_channels, "input channels");
        let window = self.window(input);
        let (rows, patch) = (window.rows(), window.patch_len());
        output.reset(window.out_height(), window.out_width(), self.out_channels);
        if !window.is_identity() {
            lowered.resize(rows * patch, 0.0);
        }
        let shortcut = match epilogue {
            Epilogue::AddRelu(shortcut) => {
                assert_eq!(shortcut.len(), output.data.len(), "shortcut shape");
                Some(shortcut)
            }
            _ => None,
        };
        let relu = !matches!(epilogue, Epilogue::Linear);
        let bands = threads.get().min(rows.div_ceil(MIN_ROWS_PER_THREAD)).max(1);
        let rows_per_band = rows.div_ceil(bands);
        let band = |first_row: usize, out: &mut [f32], lowered: &mut [f32]| {
            let band_rows = out.len() / self.out_channels;
            let a: &[f32] = if window.is_identity() {
                &input.data[first_row * patch..(first_row + band_rows) * patch]
            } else {
                window.lower_rows(&input.data, first_row, lowered);
                lowered
            };
            // The accumulator starts at bias (+ shortcut), so the product adds onto it.
            for row in out.chunks_exact_mut(self.out_channels) {
                row.copy_from_slice(&self.bias);
            }
            if let Some(shortcut) = shortcut {
                let start = first_row * self.out_channels;
                let len = out.len();
                out.iter_mut()
                    .zip(&shortcut[start..start + len])
                    .for_each(|(o, s)| *o += s);
            }
            MatMul {
                m: band_rows,
                n: self.out_channels,
                k: patch,
                a,
                lda: patch,
                b: &self.weights,
            }
            .accumulate(out, Threads::ONE);
            if relu {
                pool::relu(out);
            }
        };
        let out_bands = output.data.chunks_mut(rows_per_band * self.out_channels);
        if window.is_identity() {
            if bands == 1 {
                band(0, &mut output.data, &mut []);
            } else {
                out_bands
                    .enumerate()
                    .par_bridge()
                    .for_each(|(i, out)| band(i * rows_per_band, out, &mut []));
            }
        } else {
            let lowered_bands = lowered.chunks_mut(rows_per_band * patch);
            if bands == 1 {
                band(0, &mut output.data, lowered);
            } else {
                out_bands
                    .zip(lowered_bands)
                    .enumerate()
                    .par_bridge()
                    .for_each(|(i, (out, lowered))| band(i * rows_per_band, out, lowered));
            }
        }
    }
}

/// Below this many output pixels per thread, splitting a convolution costs more than it
/// saves (ResNet-50's last stage has 49 pixels: two threads still pay off there).
const MIN_ROWS_PER_THREAD: usize = 16;

/// A fully connected layer, `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct Dense {
    inputs: usize,
    outputs: usize,
    /// `[inputs, outputs]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    pub fn from_candle(linear: &candle_nn::Linear) -> Result<Self> {
        let (outputs, inputs) = linear.weight().dims2()?;
        let weights = linear
            .weight()
            .to_dtype(DType::F32)?
            .t()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match linear.bias() {
            Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; outputs],
        };
        Ok(Self {
            inputs,
            outputs,
            weights,
            bias,
        })
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn forward(&self, input: &[f32], threads: Threads) -> Vec<f32> {
        assert_eq!(input.len(), self.inputs, "dense input length");
        let mut out = self.bias.clone();
        MatMul {
            m: 1,
            n: self.outputs,
            k: self.inputs,
            a: input,
            lda: self.inputs,
            b: &self.weights,
        }
        .accumulate(&mut out, threads);
        out
    }
}

/// A pool of reusable per-call buffers, so concurrent callers never share one and a
/// steady stream of requests allocates nothing.
#[derive(Debug, Default)]
pub struct Arena<T> {
    free: std::sync::Mutex<Vec<T>>,
}

impl<T: Default> Arena<T> {
    pub fn with<R>(&self, work: impl FnOnce(&mut T) -> R) -> R {
        let mut buffers = self.lock().pop().unwrap_or_default();
        let result = work(&mut buffers);
        self.lock().push(buffers);
        result
    }

    /// Frees every idle buffer (memory goes back once the pool is quiet).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A panic while holding the lock leaves only a Vec of buffers: still usable.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns a `[n, c, h, w]` batch into one NHWC feature map per image.
pub fn images_chw(batch: &Tensor) -> Result<(usize, usize, usize, Vec<Vec<f32>>)> {
    let (n, c, h, w) = batch.dims4().context("expected a [n, c, h, w] batch")?;
    let images = (0..n)
        .map(|i| batch.get(i)?.flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((c, h, w, images))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;
    use candle_core::{Device, Module};

    fn random_tensor(rng: &mut Lcg, shape: &[usize]) -> Tensor {
        let len = shape.iter().product();
        Tensor::from_vec(rng.vec(len), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn planned_convolutions_match_candle_over_strides_padding_and_odd_sizes() {
        let mut rng = Lcg(3);
        for case in 0..60 {
            let kernel = [1, 3, 7][rng.below(3)];
            let (cin, cout) = (1 + rng.below(6), 1 + rng.below(20));
            let (h, w) = (kernel + rng.below(12), kernel + rng.below(12));
            let config = candle_nn::Conv2dConfig {
                padding: rng.below(kernel / 2 + 1),
                stride: 1 + rng.below(2),
                ..Default::default()
            };
            let weight = random_tensor(&mut rng, &[cout, cin, kernel, kernel]);
            let bias = random_tensor(&mut rng, &[cout]);
            let candle_conv = candle_nn::Conv2d::new(weight, Some(bias), config);
            let input = random_tensor(&mut rng, &[1, cin, h, w]);
            let expected = candle_conv.forward(&input).unwrap();
            let (_, _, out_h, out_w) = expected.dims4().unwrap();
            let shortcut = rng.vec(out_h * out_w * cout);

            let planned = Conv2d::from_candle(&candle_conv).unwrap();
            let mut x = FeatureMap::default();
            x.load_chw(&input.flatten_all().unwrap().to_vec1().unwrap(), cin, h, w);
            let (mut out, mut lowered) = (FeatureMap::default(), Vec::new());
            let threads = Threads(1 + case % 3);
            planned.forward(
                &x,
                Epilogue::AddRelu(&shortcut),
                &mut out,
                &mut lowered,
                threads,
            );

            let expected = expected
                .permute((0, 2, 3, 1))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!((out.height, out.width, out.channels), (out_h, out_w, cout));
            for (i, (ours, theirs)) in out.data.iter().zip(&expected).enumerate() {
                let theirs = (theirs + shortcut[i]).max(0.0);
                assert!((ours - theirs).abs() < 1e-4, "case {case}, element {i}");
            }
        }
    }
}
