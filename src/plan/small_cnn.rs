//! The small CNN's plan: [`crate::models::small_cnn::SmallCnn`] compiled for inference
//! like the ResNet's (NHWC maps, weights laid out once, bias and ReLU in the product's
//! store, buffers reused). Its hidden dense layer reads the last block's pooled map
//! flattened, `[h, w, c]`, which is what a convolution whose kernel covers the whole map
//! reads for its one output pixel: it runs as that convolution, so the plan's f32 and
//! int8 products, and their threads, serve it too.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

use super::{
    on_pool_thread, with_f32_values, Arena, Conv2d, ConvWeights, Epilogue, FeatureMap, MapView,
    Scratch,
};
use crate::kernels::f32_weights::F32Weights;
use crate::kernels::im2col::PaddedRows;
use crate::kernels::{for_each_band, pool, Finish, Threads};
use crate::models::layers::ConvReluPool;
use crate::models::small_cnn::{SmallCnn, CONV_BLOCKS, DENSE_LAYERS};
use crate::weights::int8::{Int8Kernel, Int8Weights};

/// Buffers of one forward pass; see [`super::Arena`].
#[derive(Debug, Default)]
struct Workspace {
    x: FeatureMap,
    pooled: FeatureMap,
    /// One per thread: the strips of a block's rectified map it pools.
    bands: Vec<Band>,
    hidden: FeatureMap,
    scratch: Scratch,
}

/// A thread's buffers for its band of a block.
#[derive(Debug, Default)]
struct Band {
    rectified: FeatureMap,
    scratch: Scratch,
}

/// Bytes of a block's rectified map a thread computes at a time, then pools while they
/// are still in L2: computed whole, the first block's 2.8 MB went out to L3 and back.
const STRIP_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct SmallCnnPlan {
    input_side: usize,
    /// Each followed by ReLU and 2 x 2 max pooling.
    blocks: Vec<Conv2d>,
    /// The hidden dense layer (then ReLU), as a convolution over the whole last map.
    hidden: Conv2d,
    /// The logit's dense layer: one output, a dot product.
    logit_kernel: Vec<f32>,
    logit_bias: f32,
    arena: Arena<Workspace>,
}

/// Where the plan's kernels come from.
#[derive(Clone, Copy)]
enum Kernels<'a> {
    /// The model's f32 tensors.
    F32,
    /// Kernels as the int8 weights store them (the model may hold placeholders for them).
    Int8(&'a Int8Weights),
}

impl SmallCnnPlan {
    /// Compiles the network in f32.
    pub fn new(model: &SmallCnn) -> Result<Self> {
        Self::build(model, Kernels::F32)
    }

    /// Compiles the network at int8 with its kernels as `weights` store them. The first
    /// block, whose input is the image (signed when the preprocessing subtracts a mean),
    /// and the one-output logit layer run in f32 on their dequantized values.
    pub fn from_int8(model: &SmallCnn, weights: &Int8Weights) -> Result<Self> {
        Self::build(model, Kernels::Int8(weights))
    }

    fn build(model: &SmallCnn, kernels: Kernels) -> Result<Self> {
        let blocks = model.conv_blocks();
        let mut side = model.input_side();
        let mut planned = Vec::with_capacity(blocks.len());
        for (i, (block, name)) in blocks.into_iter().zip(CONV_BLOCKS).enumerate() {
            let (k, _, inputs, outputs) = block.kernel().dims4()?;
            let shape = [k, k, inputs, outputs];
            let int8 = i > 0;
            planned.push(layer(
                kernels,
                name,
                block.kernel(),
                shape,
                block.bias(),
                int8,
            )?);
            side = ConvReluPool::output_side(side);
        }
        let [hidden, logit] = model.dense_layers();
        let (inputs, outputs) = hidden.kernel().dims2()?;
        let channels = inputs / (side * side).max(1);
        let shape = [side, side, channels, outputs];
        let name = DENSE_LAYERS[0];
        let hidden = layer(kernels, name, hidden.kernel(), shape, hidden.bias(), true)?;
        Ok(Self {
            input_side: model.input_side(),
            blocks: planned,
            hidden,
            logit_kernel: f32_vec(logit.kernel())?,
            logit_bias: f32_vec(logit.bias())?[0],
            arena: Arena::default(),
        })
    }

    /// The logit (the dog's log-odds) of one `[3, side, side]` image.
    ///
    /// # Panics
    /// If the image is not of the side the network was built for (the caller checks).
    pub fn forward(&self, chw: &[f32], height: usize, width: usize, threads: Threads) -> f32 {
        let side = self.input_side;
        assert!(
            height == side && width == side,
            "the small CNN takes {side}x{side} images, got {height}x{width}"
        );
        on_pool_thread(threads, || {
            self.arena.with(|ws| {
                ws.x.load_chw(chw, (3, height, width), threads);
                for block in &self.blocks {
                    block.forward_pooled(&ws.x, &mut ws.pooled, &mut ws.bands, threads);
                    std::mem::swap(&mut ws.x, &mut ws.pooled);
                }
                let hidden = &mut ws.hidden;
                self.hidden
                    .forward(&ws.x, Epilogue::Relu, hidden, &mut ws.scratch, threads);
                let products = hidden.data().iter().zip(&self.logit_kernel);
                products.map(|(h, k)| h * k).sum::<f32>() + self.logit_bias
            })
        })
    }

    /// Frees the idle buffers.
    pub fn release_memory(&self) {
        self.arena.clear();
    }
}

impl Conv2d {
    /// `pooled = max_pool_2x2(relu(conv(x)))` (an odd last row or column dropped). Each
    /// thread takes a band of pooled rows and runs it strip by strip: the rectified rows
    /// of a strip, computed from the input rows they read, are pooled while in cache.
    fn forward_pooled(
        &self,
        x: &FeatureMap,
        pooled: &mut FeatureMap,
        bands: &mut Vec<Band>,
        threads: Threads,
    ) {
        let reach = self.kernel - 1;
        let (conv_height, conv_width) = (x.height - reach, x.width - reach);
        pooled.reset(conv_height / 2, conv_width / 2, self.out_channels);
        let (pooled_width, n) = (pooled.width, self.out_channels);
        let pooled_row = (pooled_width * n).max(1);
        let rows_per_band = pooled.height.div_ceil(threads.get()).max(1);
        let conv_row_bytes = conv_width * n * size_of::<f32>();
        let rows_per_strip = (STRIP_BYTES / (2 * conv_row_bytes).max(1)).max(1);
        bands.resize_with(threads.get(), Band::default);
        let work: Vec<_> = pooled
            .data_mut()
            .chunks_mut(rows_per_band * pooled_row)
            .zip(bands.iter_mut())
            .enumerate()
            .collect();
        for_each_band(work, &|(i, (out, band)): (
            usize,
            (&mut [f32], &mut Band),
        )| {
            let strips = out.chunks_mut(rows_per_strip * pooled_row).enumerate();
            for (j, out) in strips {
                let (first, rows) = (
                    i * rows_per_band + j * rows_per_strip,
                    out.len() / pooled_row,
                );
                let strip = x.view().rows(2 * first, 2 * rows + reach);
                let Band { rectified, scratch } = band;
                // Rectified rows, `row_pixels` apart.
                let (rectified, row_pixels) = match &self.weights {
                    ConvWeights::F32(weights) if weights.runs_columns() => (
                        self.forward_in_place(weights, strip, 2 * rows, rectified),
                        x.width,
                    ),
                    _ => {
                        self.forward_view(strip, Epilogue::Relu, rectified, scratch, Threads::ONE);
                        (rectified.data(), conv_width)
                    }
                };
                let shape = (rows, pooled_width);
                pool::max_pool_2x2(rectified, row_pixels, n, shape, out);
            }
        });
    }

    /// `relu(conv(strip) + bias)`, the `rows` output rows of a strip, read in place from
    /// it ([`PaddedRows::valid_in_place`]): the output rows are as wide as the input's,
    /// the product's tiles run across them (none cut short where a row ends: the CNN's
    /// rows of 148, 72 and 34 pixels left tiles of 8, 2 and 6 rows, at a fraction of
    /// the 14-row tile's speed), and the input rows are not copied first. Returns the
    /// rectified rows, `kernel - 1` extra pixels ending each but the last.
    fn forward_in_place<'a>(
        &self,
        weights: &F32Weights,
        strip: MapView,
        rows: usize,
        rectified: &'a mut FeatureMap,
    ) -> &'a [f32] {
        let (width, n) = (strip.width, self.out_channels);
        let in_place = PaddedRows::valid_in_place(strip.data, width, self.kernel, strip.channels);
        let pixels = in_place.valid_pixels(rows);
        rectified.reset(rows, width, n);
        let out = &mut rectified.data_mut()[..pixels * n];
        weights.run_padded(
            0,
            pixels,
            &in_place,
            out,
            &Finish::from_bias(&self.bias, true),
        );
        out
    }
}

/// Lays out the Keras layer `name` (kernel `tensor` seen as `shape`, `[k, k, in, out]`),
/// at int8 when `int8` and the kernels are stored so.
fn layer(
    kernels: Kernels,
    name: &str,
    tensor: &Tensor,
    shape: [usize; 4],
    bias: &Tensor,
    int8: bool,
) -> Result<Conv2d> {
    let bias = f32_vec(bias)?;
    let conv = match kernels {
        Kernels::F32 => with_f32_values(tensor, |values| Conv2d::from_keras(values, shape, &bias))?,
        Kernels::Int8(weights) => {
            let stored = weights
                .kernel(&format!("{name}.kernel"))
                .with_context(|| format!("the int8 weights have no int8 kernel {name}.kernel"))?;
            let stored = Int8Kernel {
                shape: &shape,
                ..stored
            };
            match int8 {
                true => Conv2d::from_keras_int8(stored, &bias),
                false => Conv2d::from_keras(&stored.dequantized(), shape, &bias),
            }
        }
    };
    conv.with_context(|| format!("layer {name}"))
}

fn f32_vec(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;
    use crate::models::small_cnn::INPUT_SIZE;
    use crate::weights::int8::ChannelAxis;
    use crate::weights::CheckedWeights;
    use candle_core::{Device, Module};
    use candle_nn::{VarBuilder, VarMap};

    const SIDE: usize = 40;

    /// The network at an input side, with seeded random kernels and biases (scaled by
    /// fan-in, so activations keep their size); the logit's kernel is positive, so the
    /// logit (less its bias) sums the rectified hidden units without cancellation and
    /// its quantization error is relative to its size.
    fn random_cnn(side: usize) -> (SmallCnn, VarMap) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = SmallCnn::with_input(side, vb).unwrap();
        let mut rng = Lcg(41);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let dims = var.dims();
            let fan_in: usize = dims[..dims.len() - 1].iter().product::<usize>().max(1);
            let values: Vec<f32> = rng
                .vec(var.elem_count())
                .into_iter()
                .map(|v| match name.as_str() {
                    "dense2.kernel" => (1.5 + v) / (fan_in as f32).sqrt(),
                    bias if bias.ends_with("bias") => 0.1 * v,
                    _ => v * (3.0 / fan_in as f32).sqrt(),
                })
                .collect();
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
        drop(data);
        (model, varmap)
    }

    /// A seeded image, values in 0..1.
    fn image(side: usize, seed: u64) -> Tensor {
        let values = Lcg(seed)
            .vec(3 * side * side)
            .iter()
            .map(|v| (v + 1.0) / 2.0)
            .collect();
        Tensor::from_vec(values, (1, 3, side, side), &Device::Cpu).unwrap()
    }

    fn chw(image: &Tensor) -> Vec<f32> {
        image.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// At a small side (one strip a band), an odd one (odd maps before each pooling) and
    /// the real one (bands of several strips).
    #[test]
    fn the_plan_computes_what_the_candle_module_computes() {
        for side in [SIDE, 47, INPUT_SIZE] {
            let (model, _) = random_cnn(side);
            let plan = SmallCnnPlan::new(&model).unwrap();
            let image = image(side, side as u64);
            let expected = model.forward(&image).unwrap().to_vec1::<f32>().unwrap()[0];
            for threads in 1..=3 {
                let ours = plan.forward(&chw(&image), side, side, Threads(threads));
                let tolerance = 1e-4 * (1.0 + expected.abs());
                assert!(
                    (ours - expected).abs() < tolerance,
                    "{threads} threads: {ours} vs {expected}"
                );
            }
        }
    }

    /// At int8 the plan runs the stored kernels (on a structure holding placeholders for
    /// the convolutions' kernels): near the module on the dequantized kernels, which
    /// differs by the activations' quantization only.
    #[test]
    fn the_int8_plan_tracks_the_dequantized_module() {
        let (model, varmap) = random_cnn(SIDE);
        let tensors = varmap.data().lock().unwrap().clone();
        let tensors = tensors
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()));
        let weights =
            Int8Weights::quantize(tensors, ChannelAxis::Last, &[], Default::default()).unwrap();
        let build = |tensors| {
            CheckedWeights::from_tensors(std::path::Path::new("test"), tensors)
                .build(|vb| SmallCnn::with_input(SIDE, vb))
                .unwrap()
        };
        let dequantized = build(weights.dequantized().unwrap());
        let structure = build(weights.with_conv_placeholders().unwrap());
        let plan = SmallCnnPlan::from_int8(&structure, &weights).unwrap();
        let exact = SmallCnnPlan::new(&model).unwrap();
        let bias = model.dense_layers()[1].bias().to_vec1::<f32>().unwrap()[0];
        for case in 0..8 {
            let image = image(SIDE, case);
            let expected = dequantized
                .forward(&image)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
            let ours = plan.forward(&chw(&image), SIDE, SIDE, Threads(1 + case as usize % 2));
            let f32_logit = exact.forward(&chw(&image), SIDE, SIDE, Threads::ONE);
            // The hidden units' weighted sum, the part quantization touches.
            let size = (expected - bias).abs();
            assert!(size > 0.1, "case {case}: a logit of some size ({size})");
            assert!(
                (ours - expected).abs() < 0.03 * size,
                "case {case}: {ours} vs {expected}"
            );
            assert!(ours != f32_logit, "case {case}: the int8 plan runs int8");
        }

        let f32_only = Int8Weights::quantize(
            weights.dequantized().unwrap(),
            ChannelAxis::Last,
            &["conv2.kernel"],
            Default::default(),
        )
        .unwrap();
        let error = SmallCnnPlan::from_int8(&structure, &f32_only).unwrap_err();
        assert!(
            format!("{error:#}").contains("no int8 kernel conv2.kernel"),
            "{error:#}"
        );
    }
}
