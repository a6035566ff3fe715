//! Channels-last (NHWC) layers for the networks we train, as candle ops with their own
//! backward passes.
//!
//! candle's `conv2d` backward runs through `conv_transpose2d` (~90 ms per 150x150 image
//! for the small CNN on a 2-core x86), and chaining conv, bias, ReLU and pooling as
//! separate candle ops allocates, zero-fills and sums a gradient the size of every
//! intermediate map. [`ConvReluPool`] is Keras' `Conv2D(activation="relu")` +
//! `MaxPooling2D` as one op instead: image by image, the forward lowers to patches,
//! multiplies, adds the bias, rectifies, pools and remembers which tap won each window;
//! the backward routes the pooled gradient back through those taps and forms the kernel,
//! bias and input gradients while the image is still in cache.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::iter::Either;
use rayon::prelude::*;

use crate::kernels::gemm::{self, View};
use crate::kernels::im2col::Window;
use crate::kernels::Threads;

/// A 3x3 convolution (stride 1, no padding: Keras' "valid"), ReLU, then 2x2 max pooling
/// (stride 2, an odd last row or column dropped), over NHWC maps. The kernel is stored
/// as Keras does, `[3, 3, in, out]`, which is already the `[9 * in, out]` matrix the
/// patches multiply.
#[derive(Debug, Clone)]
pub struct ConvReluPool {
    kernel: Tensor,
    bias: Tensor,
}

impl ConvReluPool {
    pub fn new(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        let (kernel, bias) = glorot_layer(&vb, (3, 3, inputs, outputs), 9 * (inputs + outputs))?;
        Ok(Self { kernel, bias })
    }

    /// The side of the output for an input side.
    pub fn output_side(input: usize) -> usize {
        input.saturating_sub(2) / 2
    }

    /// `[3, 3, in, out]`.
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for ConvReluPool {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op3(
            &self.kernel.contiguous()?,
            &self.bias,
            ConvReluPoolOp::default(),
        )
    }
}

/// A dense layer with a Keras-layout kernel `[in, out]`.
#[derive(Debug, Clone)]
pub struct Dense {
    kernel: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn new(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        let (kernel, bias) = glorot_layer(&vb, (inputs, outputs), inputs + outputs)?;
        Ok(Self { kernel, bias })
    }

    /// `[in, out]`.
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.kernel)?.broadcast_add(&self.bias)
    }
}

/// A layer's `kernel` (Glorot uniform over `fan_in + fan_out`, Keras' default) and zero
/// `bias` (sized by the kernel's last axis).
fn glorot_layer<S: Into<Shape>>(
    vb: &VarBuilder,
    shape: S,
    fans: usize,
) -> Result<(Tensor, Tensor)> {
    let shape = shape.into();
    let outputs = *shape.dims().last().expect("a kernel has axes");
    let bound = (6.0 / fans as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let kernel = vb.get_with_hints(shape, "kernel", init)?;
    let bias = vb.get_with_hints(outputs, "bias", candle_nn::Init::Const(0.0))?;
    Ok((kernel, bias))
}

/// The mean binary cross-entropy of logits against 0/1 targets, in the stable form
/// `max(z, 0) - z t + log(1 + exp(-|z|))`.
pub fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let softplus_of_minus_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (logits.relu()? - (logits * targets)?)?
        .add(&softplus_of_minus_abs)?
        .mean_all()
}

/// NCHW (our preprocessing's layout) to NHWC, detached: inputs are data, never trained.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("the network takes f32 inputs, got {:?}", x.dtype());
    }
    Ok(x.permute((0, 2, 3, 1))?.contiguous()?.detach())
}

/// The last axis' logit per row: `[n, 1]` -> `[n]`.
pub fn squeeze_logit(x: &Tensor) -> Result<Tensor> {
    x.squeeze(D::Minus1)
}

/// Keeps only the `f32` slice of a contiguous CPU tensor.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{op} takes f32 tensors");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op} takes contiguous tensors"),
    }
}

/// The geometry of one block: input `n x h x w x c`, `outputs` filters.
#[derive(Debug, Clone, Copy)]
struct Block {
    n: usize,
    window: Window,
    outputs: usize,
}

impl Block {
    fn new(x: &Layout, kernel: &Layout, bias: &Layout) -> Result<Self> {
        let (n, h, w, c) = match x.shape().dims() {
            &[n, h, w, c] => (n, h, w, c),
            dims => candle_core::bail!("conv-relu-pool takes NHWC maps, got {dims:?}"),
        };
        let outputs = match kernel.shape().dims() {
            &[3, 3, inputs, outputs] if inputs == c => outputs,
            dims => candle_core::bail!("a [3, 3, {c}, out] kernel for {c} channels, got {dims:?}"),
        };
        if bias.shape().dims() != [outputs] {
            candle_core::bail!("a bias of {outputs}, got {:?}", bias.shape().dims());
        }
        if h < 4 || w < 4 {
            candle_core::bail!("conv-relu-pool needs maps of at least 4x4, got {h}x{w}");
        }
        let window = Window {
            height: h,
            width: w,
            channels: c,
            kernel: 3,
            stride: 1,
            padding: 0,
        };
        Ok(Self { n, window, outputs })
    }

    fn image_len(&self) -> usize {
        self.window.height * self.window.width * self.window.channels
    }

    fn pooled(&self) -> (usize, usize) {
        (self.window.out_height() / 2, self.window.out_width() / 2)
    }

    fn pooled_len(&self) -> usize {
        let (h, w) = self.pooled();
        h * w * self.outputs
    }

    /// One image's rectified map `[rows, outputs]`, with its patches left in `patches`.
    fn rectified(
        &self,
        image: &[f32],
        kernel: &[f32],
        bias: &[f32],
        patches: &mut Vec<f32>,
        map: &mut Vec<f32>,
    ) {
        let (rows, patch) = (self.window.rows(), self.window.patch_len());
        patches.resize(rows * patch, 0.0);
        self.window.lower_rows(image, 0, patches);
        map.resize(rows * self.outputs, 0.0);
        for row in map.chunks_exact_mut(self.outputs) {
            row.copy_from_slice(bias);
        }
        gemm::product(
            View::row_major(patches, rows, patch),
            View::row_major(kernel, patch, self.outputs),
            map,
            true,
            Threads::ONE,
        );
        map.iter_mut().for_each(|value| *value = value.max(0.0));
    }

    /// For pooled output `at` (`(y * pooled_w + x) * outputs + ch`): the map index of its
    /// window's top-left tap, and the offsets of the four taps from it.
    fn window_of(&self, at: usize) -> (usize, [usize; 4]) {
        let (width, o) = (self.window.out_width(), self.outputs);
        let pooled_w = self.pooled().1;
        let (pixel, ch) = (at / o, at % o);
        let (y, x) = (pixel / pooled_w, pixel % pooled_w);
        let top = (2 * y * width + 2 * x) * o + ch;
        (top, [0, o, width * o, (width + 1) * o])
    }
}

/// A pooled output's route back into its window: which tap held the maximum, or
/// [`CLIPPED`] when the maximum was 0 (the ReLU passes no gradient there).
const CLIPPED: u8 = 4;

/// The forward op; it keeps each pooled output's route for its backward, which then
/// needs no second product.
#[derive(Default)]
struct ConvReluPoolOp {
    routes: std::sync::OnceLock<std::sync::Arc<Vec<u8>>>,
}

impl CustomOp3 for ConvReluPoolOp {
    fn name(&self) -> &'static str {
        "conv-relu-pool"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        kernel_storage: &CpuStorage,
        kernel_layout: &Layout,
        bias_storage: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let kernel = contiguous_f32(kernel_storage, kernel_layout, self.name())?;
        let bias = contiguous_f32(bias_storage, bias_layout, self.name())?;
        let block = Block::new(x_layout, kernel_layout, bias_layout)?;
        let (pooled_h, pooled_w) = block.pooled();
        let mut out = vec![0f32; block.n * block.pooled_len()];
        let mut routes = vec![CLIPPED; out.len()];
        out.par_chunks_mut(block.pooled_len())
            .zip(routes.par_chunks_mut(block.pooled_len()))
            .zip(x.par_chunks(block.image_len()))
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(patches, map), ((out, routes), image)| {
                    block.rectified(image, kernel, bias, patches, map);
                    for (at, (out, route)) in out.iter_mut().zip(routes.iter_mut()).enumerate() {
                        let (top, taps) = block.window_of(at);
                        let mut best = 0;
                        for tap in 1..4 {
                            if map[top + taps[tap]] > map[top + taps[best]] {
                                best = tap;
                            }
                        }
                        *out = map[top + taps[best]];
                        *route = if *out > 0.0 { best as u8 } else { CLIPPED };
                    }
                },
            );
        // A repeated forward of the same op (not something candle does) keeps the first.
        let _ = self.routes.set(std::sync::Arc::new(routes));
        let shape = (block.n, pooled_h, pooled_w, block.outputs);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The network's input needs no gradient (it is detached data).
        let wants_input = x.track_op();
        let routes = self
            .routes
            .get()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("backward before forward".into()))?;
        let packed = x.apply_op3_no_bwd(
            &grad_res.contiguous()?,
            &Tensor::cat(&[&kernel.flatten_all()?, bias], 0)?,
            &ConvReluPoolGrad {
                wants_input,
                routes,
            },
        )?;
        let (kernel_len, bias_len) = (kernel.elem_count(), bias.elem_count());
        let grad_kernel = packed.narrow(0, 0, kernel_len)?.reshape(kernel.shape())?;
        let grad_bias = packed.narrow(0, kernel_len, bias_len)?;
        let grad_x = if wants_input {
            let start = kernel_len + bias_len;
            Some(
                packed
                    .narrow(0, start, x.elem_count())?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        Ok((grad_x, Some(grad_kernel), Some(grad_bias)))
    }
}

/// The gradients of [`ConvReluPoolOp`], packed as `[d kernel, d bias, d x]` (`d x` only
/// when wanted; candle ops return one tensor), summed over images in one partial sum per
/// thread. Its third argument is the flat `[kernel..., bias...]` parameter vector.
struct ConvReluPoolGrad {
    wants_input: bool,
    routes: std::sync::Arc<Vec<u8>>,
}

impl CustomOp3 for ConvReluPoolGrad {
    fn name(&self) -> &'static str {
        "conv-relu-pool-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
        params_storage: &CpuStorage,
        params_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let grad = contiguous_f32(grad_storage, grad_layout, self.name())?;
        let params = contiguous_f32(params_storage, params_layout, self.name())?;
        let &[.., outputs] = grad_layout.shape().dims() else {
            candle_core::bail!("{}: the gradient has no dimensions", self.name());
        };
        let c = x_layout.shape().dims().last().copied().unwrap_or(0);
        let kernel_len = 9 * c * outputs;
        let kernel = &params[..kernel_len];
        let kernel_shape = Layout::contiguous((3, 3, c, outputs));
        let block = Block::new(x_layout, &kernel_shape, &Layout::contiguous(outputs))?;
        let (rows, patch) = (block.window.rows(), block.window.patch_len());
        let parameters = kernel_len + outputs;
        if self.routes.len() != grad.len() {
            candle_core::bail!("{}: routes for another batch", self.name());
        }

        let mut grad_x = vec![0f32; if self.wants_input { x.len() } else { 0 }];
        let image_grads = if self.wants_input {
            Either::Left(grad_x.par_chunks_mut(block.image_len()))
        } else {
            Either::Right(
                (0..block.n)
                    .into_par_iter()
                    .map(|_| <&mut [f32]>::default()),
            )
        };
        let sums = image_grads
            .zip(x.par_chunks(block.image_len()))
            .zip(grad.par_chunks(block.pooled_len()))
            .zip(self.routes.par_chunks(block.pooled_len()))
            .fold(
                || (vec![0f32; parameters], Vec::new(), Vec::new()),
                |(mut sums, mut patches, mut grad_map),
                 (((grad_image, image), grad_pooled), routes)| {
                    patches.resize(rows * patch, 0.0);
                    block.window.lower_rows(image, 0, &mut patches);
                    // d map: each pooled gradient at its window's maximum, where the
                    // ReLU let it through.
                    grad_map.clear();
                    grad_map.resize(rows * outputs, 0.0);
                    for (at, (&route, &g)) in routes.iter().zip(grad_pooled).enumerate() {
                        if route != CLIPPED {
                            let (top, taps) = block.window_of(at);
                            grad_map[top + taps[route as usize]] = g;
                        }
                    }
                    let (grad_kernel, grad_bias) = sums.split_at_mut(kernel_len);
                    for row in grad_map.chunks_exact(outputs) {
                        grad_bias.iter_mut().zip(row).for_each(|(sum, g)| *sum += g);
                    }
                    let grad_map_view = View::row_major(&grad_map, rows, outputs);
                    gemm::product(
                        View::row_major(&patches, rows, patch).t(),
                        grad_map_view,
                        grad_kernel,
                        true,
                        Threads::ONE,
                    );
                    if !grad_image.is_empty() {
                        // The patches' gradient reuses the patches' buffer.
                        gemm::product(
                            grad_map_view,
                            View::row_major(kernel, patch, outputs).t(),
                            &mut patches,
                            false,
                            Threads::ONE,
                        );
                        block.window.raise_add(&patches, grad_image);
                    }
                    (sums, patches, grad_map)
                },
            )
            .map(|(sums, _, _)| sums)
            .reduce(
                || vec![0f32; parameters],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let mut packed = sums;
        packed.extend_from_slice(&grad_x);
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::kernels::gemm::tests::Lcg(seed);
        let count: usize = shape.iter().product();
        Tensor::from_vec(rng.vec(count), shape, &Device::Cpu).unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// candle's own conv2d, ReLU and max_pool2d on NCHW are the reference.
    #[test]
    fn the_block_matches_candle_conv_relu_pool_on_odd_shapes() {
        for (n, h, w, c, out) in [(2, 7, 5, 3, 4), (1, 9, 8, 1, 2), (3, 4, 4, 5, 3)] {
            let x = random(&[n, h, w, c], 1);
            let kernel = random(&[3, 3, c, out], 2);
            let bias = random(&[out], 3);
            let block = ConvReluPool {
                kernel: kernel.clone(),
                bias: bias.clone(),
            };
            let ours = block.forward(&x).unwrap();
            let reference = x
                .permute((0, 3, 1, 2))
                .unwrap()
                .conv2d(&kernel.permute((3, 2, 0, 1)).unwrap(), 0, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, out, 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap()
                .max_pool2d(2)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_difference(&ours, &reference) < 1e-5);
        }
    }

    /// The backward agrees with central finite differences for the input, kernel and bias,
    /// on maps with odd edges the pooling drops.
    #[test]
    fn the_block_gradients_match_finite_differences() {
        use candle_core::Var;
        let (n, h, w, c, out) = (2, 8, 7, 3, 4);
        let x = Var::from_tensor(&random(&[n, h, w, c], 4)).unwrap();
        let kernel = Var::from_tensor(&random(&[3, 3, c, out], 5)).unwrap();
        let bias = Var::from_tensor(&random(&[out], 6)).unwrap();
        let weights = random(&[n, 3, 2, out], 7);
        let loss = || {
            let block = ConvReluPool {
                kernel: kernel.as_tensor().clone(),
                bias: bias.as_tensor().clone(),
            };
            (block.forward(x.as_tensor())? * &weights)?.sum_all()
        };
        crate::train::gradient_check::assert_gradients(
            loss,
            &[&x, &kernel, &bias],
            1e-2,
            usize::MAX,
        );
    }

    #[test]
    fn cross_entropy_is_stable_for_large_logits() {
        let logits = Tensor::new(&[100f32, -100.0, 0.0], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1f32, 0.0, 1.0], &Device::Cpu).unwrap();
        let loss = binary_cross_entropy_with_logits(&logits, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((loss - std::f32::consts::LN_2 / 3.0).abs() < 1e-6, "{loss}");
    }
}
