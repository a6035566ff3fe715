//! Inference plans: a trained candle model compiled at load into what the CPU runs fast —
//! NHWC activations, BatchNorm already folded, weights laid out once as the right-hand
//! matrix of each product, bias and residual added by the product's accumulator, and
//! buffers reused from call to call. The candle modules stay the readable definition
//! (and the training path); each plan is tested against its module.

pub mod efficientnet_lite;
pub mod resnet;
pub mod small_cnn;

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::kernels::aligned::AlignedVec;
use crate::kernels::f32_weights::{self, F32Weights, TILE_ROWS};
use crate::kernels::im2col::Window;
use crate::kernels::qgemm::{PackedWeights, QMatMul};
use crate::kernels::winograd::{self, Tiling};

use crate::kernels::{self, for_each_band, quantize, Finish, Start, Threads};
use crate::models::resnet::ChannelFold;
use crate::weights::int8::{quantize_channels, ChannelAxis, Int8Kernel};

/// One image's activations, height x width x channels, channels fastest.
#[derive(Debug, Default)]
pub struct FeatureMap {
    /// At least `height * width * channels` values: the buffers of a forward pass take
    /// every layer's shape in turn, and keeping the largest one saves refilling memory
    /// at each change (zeroing them took a tenth of an int8 forward pass).
    storage: AlignedVec<f32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl FeatureMap {
    /// Reshapes, keeping the allocation (and stale values) when it is large enough.
    fn reset(&mut self, height: usize, width: usize, channels: usize) {
        self.height = height;
        self.width = width;
        self.channels = channels;
        self.storage.prefix(height * width * channels);
    }

    pub fn data(&self) -> &[f32] {
        &self.storage[..self.height * self.width * self.channels]
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        let len = self.height * self.width * self.channels;
        &mut self.storage[..len]
    }

    /// The whole map, borrowed.
    pub fn view(&self) -> MapView<'_> {
        MapView {
            data: self.data(),
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// Copies a `[channels, height, width]` image into NHWC order, each thread a band of
    /// pixels: serial, it was a twentieth of the small CNN's pass on two threads, and the
    /// other thread fell asleep meanwhile, to be woken for the first layer.
    pub fn load_chw(
        &mut self,
        chw: &[f32],
        (channels, height, width): (usize, usize, usize),
        threads: Threads,
    ) {
        assert_eq!(chw.len(), channels * height * width);
        self.reset(height, width, channels);
        let plane = height * width;
        let pixels_per_band = plane.div_ceil(threads.get()).max(1);
        let bands = self
            .data_mut()
            .chunks_mut(pixels_per_band * channels.max(1));
        let band = |(i, dst): (usize, &mut [f32])| {
            let first = i * pixels_per_band;
            let pixels = dst.len() / channels.max(1);
            let planes = |c: usize| &chw[c * plane + first..][..pixels];
            if channels == 3 {
                // Three planes zipped, which compiles to shuffles, not a load per value.
                let rgb = planes(0).iter().zip(planes(1)).zip(planes(2));
                for (d, ((&r, &g), &b)) in dst.chunks_exact_mut(3).zip(rgb) {
                    d.copy_from_slice(&[r, g, b]);
                }
                return;
            }
            for (pixel, d) in dst.chunks_exact_mut(channels).enumerate() {
                for (c, d) in d.iter_mut().enumerate() {
                    *d = planes(c)[pixel];
                }
            }
        };
        for_each_band(bands.enumerate().collect(), &band);
    }
}

/// An image's activations (or a strip of its rows), borrowed: what a convolution reads.
#[derive(Debug, Clone, Copy)]
pub struct MapView<'a> {
    pub data: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl<'a> MapView<'a> {
    /// Image rows `first..first + count`.
    pub fn rows(self, first: usize, count: usize) -> MapView<'a> {
        assert!(first + count <= self.height, "rows inside the map");
        let row_len = self.width * self.channels;
        MapView {
            data: &self.data[first * row_len..][..count * row_len],
            height: count,
            ..self
        }
    }
}

/// Numeric precision of a planned layer's weights and products.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and products.
    #[default]
    F32,
    /// i8 weights (one scale per output channel), u8 activations quantized per call
    /// (one scale per output pixel's receptive field), i32 products.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// A convolution's weights as its product consumes them.
#[derive(Debug, Clone)]
enum ConvWeights {
    /// `[kernel, kernel, in_channels, out_channels]`: the product's right-hand matrix.
    F32(F32Weights),
    /// The same matrix in i8, packed, with each column's scale.
    Int8 {
        packed: PackedWeights,
        scales: Vec<f32>,
    },
    /// A 3 x 3 stride-1 layer's kernels at the points of one of Winograd's algorithms:
    /// one `in x out` matrix per point ([`winograd`]).
    Winograd {
        tiling: Tiling,
        points: Vec<F32Weights>,
    },
}

/// Transformed kernels of at most this size run F(4 x 4, 3 x 3) (four times the direct
/// kernels' values), larger ones F(2 x 2, 3 x 3) (16 / 9 of them) up to
/// [`WINOGRAD_MAX_BYTES`], larger still the direct convolution. On ResNet-50 the 3 x 3
/// layers of 56 and 28 pixels run F(4 x 4) (0.6 and 2.4 MB), those of 14 pixels F(2 x 2)
/// (4.2 MB; F(4 x 4) would hold 9.4 MB each and on a 14 x 14 map, 16 x 16 pixels of tiles,
/// save little more), and those of 7 pixels stay direct (F(2 x 2) would hold 16.8 MB each
/// for 1.7 times fewer multiply-adds): f32 ResNet-50 holds 19 MB more than with none, not
/// 51 MB (F(4 x 4) up to 14 pixels) or 100 MB.
const WINOGRAD_F4_MAX_BYTES: usize = 4 << 20;
const WINOGRAD_MAX_BYTES: usize = 16 << 20;

/// `EDGE_WINOGRAD=off` lays every layer out for the direct convolution, `on` for Winograd's
/// wherever it fits (to compare the two in one build).
const WINOGRAD_SWITCH: &str = "EDGE_WINOGRAD";

/// Whether f32 layers run as Winograd's where it fits: by default everywhere but on the
/// AVX-512 f32 kernel, where ResNet-50 measured no faster on one thread and up to 25 %
/// slower on two (Xeon, 2026-12-07: the point products have a band's tiles as their rows,
/// 16 to 49, short for its 14-row tile, and the transforms run at the baseline's SSE2).
fn winograd_allowed() -> bool {
    match std::env::var(WINOGRAD_SWITCH).as_deref() {
        Ok("off") => false,
        Ok("on") => true,
        _ => kernels::table().f32.name != "avx512",
    }
}

/// Which of Winograd's algorithms a layer of this geometry runs at f32, if any.
fn winograd_tiling(layer: &Conv2d) -> Option<Tiling> {
    if (layer.kernel, layer.stride, layer.padding) != (3, 1, 1) {
        return None;
    }
    let bytes = |tiling: Tiling| {
        layer.in_channels * layer.out_channels * tiling.points() * size_of::<f32>()
    };
    if bytes(Tiling::F4) <= WINOGRAD_F4_MAX_BYTES {
        Some(Tiling::F4)
    } else {
        (bytes(Tiling::F2) <= WINOGRAD_MAX_BYTES).then_some(Tiling::F2)
    }
}

/// Scratch buffers of a convolution, reused between calls.
#[derive(Debug, Default)]
pub struct Scratch {
    lowered: AlignedVec<f32>,
    lowered_quantized: AlignedVec<u8>,
    row_scales: AlignedVec<f32>,
    pixel_max: AlignedVec<f32>,
    /// Winograd's point products, the transformed inputs being in `lowered`.
    products: AlignedVec<f32>,
}

/// A convolution (BatchNorm folded in) ready to run as one matrix product.
#[derive(Debug, Clone)]
pub struct Conv2d {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    weights: ConvWeights,
    bias: Vec<f32>,
}

/// What a convolution adds to its product before the activation.
pub enum Epilogue<'a> {
    /// Bias, then ReLU.
    Relu,
    /// Bias plus a shortcut of the output's shape, then ReLU (a residual block's end).
    AddRelu(&'a [f32]),
    /// Bias plus a shortcut, no activation (a linear bottleneck's end, as in MobileNetV2
    /// and EfficientNet).
    Add(&'a [f32]),
    /// Bias only.
    Linear,
}

/// Calls `read` with a tensor's values in f32, borrowing them where the tensor is already
/// contiguous f32 in memory (a weights file's tensors are): copying them was a third of
/// the f32 start-up's page faults.
pub(crate) fn with_f32_values<R>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = tensor.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(read(&values[start..end]));
        }
    }
    let copy = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(read(&copy))
}

/// One output channel's kernel as stored (`[in, ky, kx]`, candle's and the files' order)
/// in the order of its column of the lowered product, `[ky, kx, in]`: the same for 1 x 1.
fn lower_stored_kernel<T: Copy>(stored: &[T], in_channels: usize, size: usize, column: &mut [T]) {
    if size == 1 {
        return column.copy_from_slice(stored);
    }
    let taps = size * size;
    for (input, per_input) in stored.chunks_exact(taps).enumerate() {
        for (tap, &value) in per_input.iter().enumerate() {
            column[tap * in_channels + input] = value;
        }
    }
}

impl Conv2d {
    /// Lays out a candle convolution (`[out, in, k, k]` weights, optional bias), with the
    /// BatchNorm `fold` absorbs folded in as the weights are laid out. An int8 convolution
    /// must only ever see non-negative inputs (it follows a ReLU).
    pub fn from_candle(
        conv: &candle_nn::Conv2d,
        fold: Option<&ChannelFold>,
        precision: Precision,
    ) -> Result<Self> {
        Self::lay_out(conv, fold, precision, winograd_allowed())
    }

    /// [`Self::from_candle`], Winograd's layout allowed for the layers it fits or not.
    fn lay_out(
        conv: &candle_nn::Conv2d,
        fold: Option<&ChannelFold>,
        precision: Precision,
        winograd: bool,
    ) -> Result<Self> {
        let mut layer = Self::geometry(conv)?;
        let scale = match fold {
            Some(fold) => {
                layer.bias = fold.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Some(fold.scale.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            }
            None => None,
        };
        ensure!(
            scale.as_ref().is_none_or(|s| s.len() == layer.out_channels)
                && layer.bias.len() == layer.out_channels,
            "a BatchNorm or bias of another width than the convolution's {} outputs",
            layer.out_channels
        );
        let folded = |out: usize, value: f32| match &scale {
            Some(scale) => value * scale[out],
            None => value,
        };
        let weight = conv.weight();
        if precision == Precision::Int8 {
            // Quantized as stored ([out, in, k, k]), then laid out like a stored kernel.
            let per_output = weight.elem_count() / layer.out_channels;
            let values = with_f32_values(weight, |stored| {
                let outputs = stored.chunks_exact(per_output).enumerate();
                outputs
                    .flat_map(|(out, kernel)| kernel.iter().map(move |&value| folded(out, value)))
                    .collect::<Vec<_>>()
            })?;
            let (quantized, scales) =
                quantize_channels(&values, layer.out_channels, ChannelAxis::First);
            let kernel = Int8Kernel {
                values: &quantized,
                shape: weight.dims(),
                scales: &scales,
                axis: ChannelAxis::First,
            };
            return Self::from_int8(conv, kernel).map(|int8| Self {
                bias: layer.bias,
                ..int8
            });
        }
        let (in_channels, out_channels) = (layer.in_channels, layer.out_channels);
        if let Some(tiling) = winograd_tiling(&layer).filter(|_| winograd) {
            let mut points: Vec<_> = (0..tiling.points())
                .map(|_| F32Weights::zeros(in_channels, out_channels, kernels::table().f32))
                .collect();
            with_f32_values(weight, |stored| {
                for (pair, g) in stored.chunks_exact(9).enumerate() {
                    let (out, input) = (pair / in_channels, pair % in_channels);
                    let g: [f32; 9] = std::array::from_fn(|tap| folded(out, g[tap]));
                    for (point, value) in tiling.transform_kernel(&g).into_iter().enumerate() {
                        points[point].set(input, out, value);
                    }
                }
            })?;
            return Ok(Self {
                weights: ConvWeights::Winograd { tiling, points },
                ..layer
            });
        }
        // A loop, not candle's permute: its strided copy was a sixth of the f32 start-up.
        let rows = weight.elem_count() / out_channels;
        let mut weights = F32Weights::zeros(rows, out_channels, kernels::table().f32);
        with_f32_values(weight, |stored| {
            let mut column = vec![0.0; rows];
            for (out, kernel) in stored.chunks_exact(rows).enumerate() {
                lower_stored_kernel(kernel, in_channels, layer.kernel, &mut column);
                let scale = scale.as_ref().map_or(1.0, |scale| scale[out]);
                weights.set_column(out, &column, scale);
            }
        })?;
        Ok(Self {
            weights: ConvWeights::F32(weights),
            ..layer
        })
    }

    /// Lays out a stored int8 kernel (`[out, in, k, k]`, one scale per output channel) for
    /// the convolution `conv` describes (geometry and bias; its own weights are not read):
    /// the same layer as [`Self::from_candle`] gives at int8 from the dequantized kernel,
    /// without ever holding it in f32.
    pub fn from_int8(conv: &candle_nn::Conv2d, kernel: Int8Kernel) -> Result<Self> {
        let layer = Self::geometry(conv)?;
        let (out_channels, in_channels, size) =
            (layer.out_channels, layer.in_channels, layer.kernel);
        ensure!(
            kernel.axis == ChannelAxis::First && kernel.shape == conv.weight().dims(),
            "an int8 kernel of shape {:?} (channels {:?}) for a convolution of shape {:?}",
            kernel.shape,
            kernel.axis,
            conv.weight().dims()
        );
        let taps = size * size;
        let packed =
            PackedWeights::pack_columns(taps * in_channels, out_channels, |out, column| {
                let stored = &kernel.values[out * in_channels * taps..][..in_channels * taps];
                lower_stored_kernel(stored, in_channels, size, column);
            });
        Ok(Self {
            weights: ConvWeights::Int8 {
                packed,
                scales: kernel.scales.to_vec(),
            },
            ..layer
        })
    }

    /// Lays out a Keras-layout convolution, stride 1 and no padding (Keras' "valid", which
    /// the small CNN's strips assume): `kernel` holds `shape`, `[k, k, in, out]`, which is
    /// already the product's right-hand matrix.
    pub fn from_keras(kernel: &[f32], shape: [usize; 4], bias: &[f32]) -> Result<Self> {
        let layer = Self::keras_geometry(&shape, kernel.len(), bias)?;
        let (rows, n) = (kernel.len() / layer.out_channels, layer.out_channels);
        let weights = F32Weights::from_row_major(kernel, rows, n, kernels::table().f32);
        Ok(Self {
            weights: ConvWeights::F32(weights),
            ..layer
        })
    }

    /// The same from a stored int8 kernel, its scales per output channel (the last axis).
    pub fn from_keras_int8(kernel: Int8Kernel, bias: &[f32]) -> Result<Self> {
        ensure!(
            kernel.axis == ChannelAxis::Last && kernel.scales.len() == *kernel.shape.last().unwrap_or(&0),
            "an int8 kernel of shape {:?} with {} scales along {:?}: a Keras kernel has one per output channel, last",
            kernel.shape,
            kernel.scales.len(),
            kernel.axis
        );
        let layer = Self::keras_geometry(kernel.shape, kernel.values.len(), bias)?;
        let (rows, n) = (kernel.values.len() / layer.out_channels, layer.out_channels);
        Ok(Self {
            weights: ConvWeights::Int8 {
                packed: PackedWeights::pack(kernel.values, rows, n),
                scales: kernel.scales.to_vec(),
            },
            ..layer
        })
    }

    /// A layer of a `[k, k, in, out]` kernel (of `len` values) and its bias, and no weights yet.
    fn keras_geometry(shape: &[usize], len: usize, bias: &[f32]) -> Result<Self> {
        let &[kh, kw, in_channels, out_channels] = shape else {
            anyhow::bail!("a Keras kernel is [k, k, in, out], got {shape:?}");
        };
        ensure!(
            len == shape.iter().product::<usize>() && len > 0,
            "a kernel of shape {shape:?} holding {len} values"
        );
        ensure!(
            bias.len() == out_channels,
            "a bias of {} for {out_channels} outputs",
            bias.len()
        );
        Self::unweighted([out_channels, in_channels, kh, kw], 1, 0, bias.to_vec())
    }

    /// A layer with `conv`'s geometry and bias, and no weights yet.
    fn geometry(conv: &candle_nn::Conv2d) -> Result<Self> {
        let config = conv.config();
        ensure!(
            config.groups == 1 && config.dilation == 1,
            "grouped or dilated convolutions are not planned"
        );
        let (out_channels, in_channels, kh, kw) = conv.weight().dims4()?;
        let bias = match conv.bias() {
            Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; out_channels],
        };
        let dims = [out_channels, in_channels, kh, kw];
        Self::unweighted(dims, config.stride, config.padding, bias)
    }

    /// A layer of a square kernel (`[out, in, kh, kw]`) and its bias, weights laid out later.
    fn unweighted(dims: [usize; 4], stride: usize, padding: usize, bias: Vec<f32>) -> Result<Self> {
        let [out_channels, in_channels, kh, kw] = dims;
        ensure!(kh == kw, "square kernels only, got {kh}x{kw}");
        Ok(Self {
            in_channels,
            out_channels,
            kernel: kh,
            stride,
            padding,
            weights: ConvWeights::F32(F32Weights::zeros(0, 0, kernels::table().f32)),
            bias,
        })
    }

    fn window(&self, input: &MapView) -> Window {
        Window {
            height: input.height,
            width: input.width,
            channels: input.channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// `output = epilogue(conv(input) + bias)`.
    ///
    /// With several threads, each one takes a band of output pixels and runs the whole
    /// pipeline on it (lowering or padding, product, epilogue): no thread waits for
    /// another, and each band's rows are still in cache when its product reads them.
    pub fn forward(
        &self,
        input: &FeatureMap,
        epilogue: Epilogue,
        output: &mut FeatureMap,
        scratch: &mut Scratch,
        threads: Threads,
    ) {
        self.forward_view(input.view(), epilogue, output, scratch, threads);
    }

    /// [`Self::forward`] on borrowed rows (a strip of a map).
    pub fn forward_view(
        &self,
        input: MapView,
        epilogue: Epilogue,
        output: &mut FeatureMap,
        scratch: &mut Scratch,
        threads: Threads,
    ) {
        assert_eq!(input.channels, self.in_channels, "input channels");
        let window = self.window(&input);
        let (rows, patch) = (window.rows(), window.patch_len());
        output.reset(window.out_height(), window.out_width(), self.out_channels);
        let shortcut = match epilogue {
            Epilogue::AddRelu(shortcut) | Epilogue::Add(shortcut) => {
                assert_eq!(shortcut.len(), output.data().len(), "shortcut shape");
                Some(shortcut)
            }
            _ => None,
        };
        let relu = matches!(epilogue, Epilogue::Relu | Epilogue::AddRelu(_));
        let n = self.out_channels;
        // The sums start at the bias (+ shortcut) and end in the ReLU: the x86 int8
        // kernels apply both as they store, the others in passes of their own.
        let finish_band = |first_row: usize, len: usize| Finish {
            start: Start::Bias {
                bias: &self.bias,
                shortcut: shortcut.map(|s| &s[first_row * n..][..len]),
            },
            relu,
        };
        let bands = threads.get().min(rows.div_ceil(MIN_ROWS_PER_THREAD)).max(1);
        let rows_per_band = rows.div_ceil(bands);
        let share_columns = threads.get() > 1 && rows.div_ceil(threads.get()) < SPLIT_COLUMNS_BELOW;
        match &self.weights {
            ConvWeights::F32(weights) if share_columns && weights.runs_columns() => {
                let lowered = match window.is_identity() {
                    true => &mut [][..],
                    false => scratch.lowered.prefix(rows * patch),
                };
                let a = window.lowered_band(input.data, 0, rows, lowered);
                let finish = finish_band(0, output.data().len());
                let parts = threads.get();
                run_by_columns(weights, parts, rows, a, patch, output.data_mut(), &finish);
            }
            ConvWeights::F32(weights)
                if window.reads_padded()
                    && whole_tiles_mostly(window.out_width())
                    && weights.runs_columns() =>
            {
                // Bands of whole image rows (the kernel's tiles end with them), each
                // padding the input rows it reads.
                let rows_per_band = rows_per_band.next_multiple_of(window.out_width());
                let per_band = window.padded_len(rows_per_band);
                let padded = scratch
                    .lowered
                    .prefix(rows.div_ceil(rows_per_band) * per_band)
                    .chunks_mut(per_band)
                    .collect();
                let band = |first_row: usize, out: &mut [f32], padded: &mut [f32]| {
                    let pixels = out.len() / n;
                    let rows = window.pad_rows(input.data, first_row, pixels, padded);
                    let finish = finish_band(first_row, out.len());
                    weights.run_padded(first_row, pixels, &rows, out, &finish);
                };
                run_bands(output.data_mut(), rows_per_band, n, padded, band);
            }
            ConvWeights::F32(weights) => {
                let rows_per_lowering = lowering_rows(&window, weights.bytes(), rows_per_band);
                let band = |first_row: usize, out: &mut [f32], lowered: &mut [f32]| {
                    for (i, out) in out.chunks_mut(rows_per_lowering * n).enumerate() {
                        let first_row = first_row + i * rows_per_lowering;
                        let rows = out.len() / n;
                        let len = lowered.len().min(rows * patch);
                        let lowered = &mut lowered[..len];
                        let a = window.lowered_band(input.data, first_row, rows, lowered);
                        weights.run(rows, a, patch, out, &finish_band(first_row, out.len()));
                    }
                };
                let lowered = lowered_bands(
                    &mut scratch.lowered,
                    &window,
                    rows_per_band,
                    rows_per_lowering,
                );
                run_bands(output.data_mut(), rows_per_band, n, lowered, band);
            }
            ConvWeights::Winograd { tiling, points } => {
                let map = winograd::Map {
                    data: input.data,
                    height: input.height,
                    width: input.width,
                    channels: input.channels,
                };
                let (height, width, inputs) = (map.height, map.width, map.channels);
                let (tiles_y, tiles_x) = tiling.tiles(height, width);
                let tile_rows_per_band = tiles_y.div_ceil(threads.get().min(tiles_y).max(1));
                let bands = tiles_y.div_ceil(tile_rows_per_band);
                let tiles_per_band = tile_rows_per_band * tiles_x;
                let v_len = points.len() * tiles_per_band * inputs;
                let m_len = points.len() * tiles_per_band * n;
                let buffers: Vec<_> = scratch
                    .lowered
                    .prefix(bands * v_len)
                    .chunks_mut(v_len)
                    .zip(scratch.products.prefix(bands * m_len).chunks_mut(m_len))
                    .collect();
                // The products start at zero: the bias comes with the output transform.
                let zeros = vec![0.0; n];
                let start_at_zero = Finish::from_bias(&zeros, false);
                let rows_per_band = tile_rows_per_band * tiling.tile() * width;
                let band = |first_pixel: usize,
                            out: &mut [f32],
                            (v, m): (&mut [f32], &mut [f32])| {
                    let first = first_pixel / (tiling.tile() * width);
                    let tile_rows = first..(first + tile_rows_per_band).min(tiles_y);
                    let tiles = tile_rows.len() * tiles_x;
                    let v = &mut v[..points.len() * tiles * inputs];
                    let m = &mut m[..points.len() * tiles * n];
                    tiling.transform_input(map, tile_rows.clone(), v);
                    let point_inputs = v.chunks_exact(tiles * inputs);
                    let point_products = m.chunks_exact_mut(tiles * n);
                    for ((weights, v), m) in points.iter().zip(point_inputs).zip(point_products) {
                        weights.run(tiles, v, inputs, m, &start_at_zero);
                    }
                    let finish = winograd::OutputFinish {
                        bias: &self.bias,
                        shortcut: shortcut.map(|s| &s[first_pixel * n..][..out.len()]),
                        relu,
                    };
                    tiling.transform_output(m, tile_rows, (height, width, n), &finish, out);
                };
                run_bands(output.data_mut(), rows_per_band, n, buffers, band);
            }
            ConvWeights::Int8 { packed, scales } => {
                // Dynamic per-row quantization: each lowered row (one output pixel's
                // receptive field) gets its own scale, which factors out of its dot
                // products exactly; one scale per feature map lost 1.6 % of top-1
                // agreement with f32 on the ImageNet sample.
                let kernel = kernels::table().int8;
                let Scratch {
                    lowered_quantized,
                    row_scales,
                    pixel_max,
                    ..
                } = scratch;
                // Each pixel's largest value first where windows overlap (a pixel then
                // serves up to nine rows); 1 x 1 windows scan their one pixel in the band,
                // which saves a parallel pass per layer.
                let pixel_max = (self.kernel > 1).then(|| {
                    let pixel_max = pixel_max.prefix(input.height * input.width);
                    let channels = input.channels;
                    if bands == 1 {
                        quantize::maxima(input.data, channels, pixel_max);
                    } else {
                        let per_band = pixel_max.len().div_ceil(bands);
                        let work = pixel_max
                            .chunks_mut(per_band)
                            .zip(input.data.chunks(per_band * channels))
                            .collect();
                        for_each_band(work, &|(out, pixels)| {
                            quantize::maxima(pixels, channels, out)
                        });
                    }
                    &*pixel_max
                });
                let buffers: Vec<_> = lowered_quantized
                    .prefix(rows * patch)
                    .chunks_mut(rows_per_band * patch)
                    .zip(row_scales.prefix(rows).chunks_mut(rows_per_band))
                    .collect();
                let band =
                    |first_row: usize,
                     out: &mut [f32],
                     (quantized, row_scales): (&mut [u8], &mut [f32])| {
                        let band_rows = out.len() / n;
                        window.lower_quantized(
                            input.data,
                            pixel_max,
                            first_row,
                            kernel.max_activation,
                            quantized,
                            row_scales,
                        );
                        let product = QMatMul {
                            m: band_rows,
                            a: quantized,
                            lda: patch,
                            b: packed,
                            scale: scales,
                            row_scale: row_scales,
                        };
                        kernel.run(&product, out, &finish_band(first_row, out.len()));
                    };
                run_bands(output.data_mut(), rows_per_band, n, buffers, band);
            }
        }
    }
}

/// Whether image rows `width` pixels wide are whole row tiles of the x86 f32 kernel, or
/// enough of them that the shorter tile ending each row, which runs slower, does little of
/// the work; ResNet-50's 7 x 7 layers (a tile of 7 a row) run faster lowered.
fn whole_tiles_mostly(width: usize) -> bool {
    width.is_multiple_of(TILE_ROWS) || width >= 2 * TILE_ROWS
}

/// One band's share of the lowered matrix for every band of `rows_per_band` output
/// pixels (`rows_per_lowering` rows of it at a time), or an empty slice per band when the
/// window needs no lowering.
fn lowered_bands<'a>(
    lowered: &'a mut AlignedVec<f32>,
    window: &Window,
    rows_per_band: usize,
    rows_per_lowering: usize,
) -> Vec<&'a mut [f32]> {
    let bands = window.rows().div_ceil(rows_per_band);
    if window.is_identity() {
        return (0..bands).map(|_| Default::default()).collect();
    }
    let per_band = rows_per_lowering.min(rows_per_band) * window.patch_len();
    lowered
        .prefix(bands * per_band)
        .chunks_mut(per_band)
        .collect()
}

/// Lowered rows written at a time, at most, before the product reads them: 256 KB stay in
/// L2 in between. ResNet-50's stem lowers 7.4 MB and its 56 x 56 3 x 3 layers 7.2 MB on
/// one thread: written whole, they went out to L3 and came back. (On AVX-512 these layers
/// now read their padded input in place; slices serve the CPUs without that kernel.)
const LOWERING_BYTES: usize = 256 * 1024;

/// Weights small enough to be read again for every [`LOWERING_BYTES`] of rows. The f32
/// pass took 2.5 ms less (of 56, one thread) with slices up to the 28 x 28 maps' 3 x 3
/// layers (576 KB of weights), and 0.5 ms more with the 14 x 14 maps' too (2.3 MB).
const LOWERING_WEIGHT_BYTES: usize = 1024 * 1024;

/// Rows of a band lowered at a time before the product takes them: the whole band, or
/// slices of it that stay in L2 between the lowering and the product when the layer's
/// weights are small enough to be read again for each slice.
fn lowering_rows(window: &Window, weight_bytes: usize, rows_per_band: usize) -> usize {
    let row_bytes = window.patch_len() * size_of::<f32>();
    if window.is_identity() || weight_bytes > LOWERING_WEIGHT_BYTES {
        return rows_per_band;
    }
    (LOWERING_BYTES / row_bytes.max(1))
        .next_multiple_of(f32_weights::TILE_ROWS)
        .clamp(1, rows_per_band)
}

/// Runs `band(first_output_row, output rows, scratch)` over bands of `rows_per_band`
/// output rows of `row_len` values (one scratch per band), in parallel when there is more
/// than one.
fn run_bands<S: Send>(
    output: &mut [f32],
    rows_per_band: usize,
    row_len: usize,
    scratch: Vec<S>,
    band: impl Fn(usize, &mut [f32], S) + Sync,
) {
    let band_len = rows_per_band * row_len;
    assert_eq!(
        scratch.len(),
        output.len().div_ceil(band_len),
        "one scratch per band"
    );
    let work: Vec<_> = output
        .chunks_mut(band_len)
        .zip(scratch)
        .enumerate()
        .collect();
    let run = |(i, (out, scratch)): (usize, (&mut [f32], S))| band(i * rows_per_band, out, scratch);
    for_each_band(work, &run);
}

/// Below this many output pixels per thread (4 of the x86 kernel's row tiles), threads
/// share an f32 convolution by columns, when the CPU runs [`F32Weights::run_columns`]:
/// sharing rows, each thread reads all the weights (and a layer of fewer rows than
/// [`MIN_ROWS_PER_THREAD`], such as the small CNN's dense layer, would run on one). On ResNet-50's 7 x 7 layers (49 rows,
/// 2 threads) the 3 x 3 ones took 28 % less time with cold weights, the others 5-15 %;
/// its 14 x 14 layers (98 rows a thread) measured alike either way.
const SPLIT_COLUMNS_BELOW: usize = 4 * TILE_ROWS;

/// `c = finish(a * weights)` (`rows` rows of `a`, `lda` apart), the columns split in up to
/// `parts` shares run in parallel ([`F32Weights::run_columns`]).
fn run_by_columns(
    weights: &F32Weights,
    parts: usize,
    rows: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    finish: &Finish,
) {
    assert_eq!(c.len(), rows * weights.n(), "c is rows x n");
    let out = SharedOutput(c.as_mut_ptr());
    for_each_band(weights.column_parts(parts), &|columns| {
        // SAFETY: the parts are disjoint columns of `c`, borrowed mutably for the loop.
        unsafe { weights.run_columns(rows, a, lda, out.get(), finish, columns) }
    });
}

/// The output of a product that threads share by columns, each writing its own.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);

// SAFETY: the threads write disjoint columns (see `F32Weights::run_columns`).
unsafe impl Send for SharedOutput {}
// SAFETY: as above.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
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
    weights: F32Weights,
    bias: Vec<f32>,
}

impl Dense {
    pub fn from_candle(linear: &candle_nn::Linear) -> Result<Self> {
        let (outputs, inputs) = linear.weight().dims2()?;
        // `[outputs, inputs]` is a 1 x 1 kernel; its product rows are the inputs.
        let mut weights = F32Weights::zeros(inputs, outputs, kernels::table().f32);
        with_f32_values(linear.weight(), |stored| {
            for (output, column) in stored.chunks_exact(inputs).enumerate() {
                weights.set_column(output, column, 1.0);
            }
        })?;
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

    /// One row: its product reads every weight once, so threads share it by columns.
    pub fn forward(&self, input: &[f32], threads: Threads) -> Vec<f32> {
        assert_eq!(input.len(), self.inputs, "dense input length");
        let mut out = vec![0.0; self.outputs];
        let finish = Finish::from_bias(&self.bias, false);
        if threads.get() > 1 && self.weights.runs_columns() {
            let parts = threads.get();
            run_by_columns(
                &self.weights,
                parts,
                1,
                input,
                self.inputs,
                &mut out,
                &finish,
            );
        } else {
            self.weights.run(1, input, self.inputs, &mut out, &finish);
        }
        out
    }
}

/// `ln 1e-12`: log-probabilities below it say no more than "not this class".
const LOG_PROBABILITY_FLOOR: f32 = -27.631_021;

/// Appends the log-probabilities of a backbone's ImageNet `logits` to its pooled
/// `features`, floored at `ln 1e-12` and scaled by 1/10 to the pooled activations' range:
/// what a transfer head reads. They carry what the backbone learnt of a thousand classes,
/// which a head trained on few photos of "neither" cannot: they help it tell a tiger from
/// a tabby it never saw.
pub(crate) fn append_log_probabilities(features: &mut Vec<f32>, logits: &[f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = logits.iter().map(|z| (z - max).exp()).sum::<f32>().ln();
    features.extend(
        logits
            .iter()
            .map(|z| (z - max - log_total).max(LOG_PROBABILITY_FLOOR) * 0.1),
    );
}

/// A compiled network a transfer head sits on, shared with the model it comes from.
#[derive(Debug, Clone)]
pub enum BackbonePlan {
    ResNet(std::sync::Arc<resnet::ResNetPlan>),
    EfficientNet(std::sync::Arc<efficientnet_lite::EfficientNetLitePlan>),
}

impl BackbonePlan {
    /// What a transfer head reads of one planar image: the pooled features, then the
    /// ImageNet classifier's log-probabilities ([`append_log_probabilities`]).
    pub fn head_features(
        &self,
        chw: &[f32],
        height: usize,
        width: usize,
        threads: Threads,
    ) -> Vec<f32> {
        let mut features = match self {
            Self::ResNet(plan) => plan.features(chw, height, width, threads),
            Self::EfficientNet(plan) => plan.features(chw, height, width, threads),
        };
        if let Some(classifier) = self.classifier() {
            let logits = classifier.forward(&features, threads);
            append_log_probabilities(&mut features, &logits);
        }
        features
    }

    /// The length of [`Self::head_features`].
    pub fn head_feature_dim(&self) -> usize {
        let pooled = match self {
            Self::ResNet(plan) => plan.feature_dim(),
            Self::EfficientNet(plan) => plan.feature_dim(),
        };
        pooled + self.classifier().map_or(0, Dense::outputs)
    }

    fn classifier(&self) -> Option<&Dense> {
        match self {
            Self::ResNet(plan) => plan.classifier(),
            Self::EfficientNet(plan) => Some(plan.classifier()),
        }
    }

    pub fn release_memory(&self) {
        match self {
            Self::ResNet(plan) => plan.release_memory(),
            Self::EfficientNet(plan) => plan.release_memory(),
        }
    }
}

/// Gives a module's variables random values for plan-versus-module tests: uniform in
/// `-bound..bound`, BatchNorm variances in `0.5..2`.
#[cfg(test)]
pub(crate) fn randomize_for_tests(varmap: &candle_nn::VarMap, bound: f32) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let (low, high) = match name.ends_with("running_var") {
            true => (0.5, 2.0),
            false => (-bound, bound),
        };
        let value = Tensor::rand(low, high, var.shape(), &candle_core::Device::Cpu).unwrap();
        var.set(&value).unwrap();
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

/// Runs `pass` on a pool thread when it is split (`threads` > 1), so that thread takes a
/// band of each layer itself. Called from outside the pool, every layer woke two pool
/// threads while the caller slept: 15 % of an int8 pass went to the scheduler, and the
/// pass took 22 % longer on two threads (x86, AMX).
pub(crate) fn on_pool_thread<R: Send>(threads: Threads, pass: impl FnOnce() -> R + Send) -> R {
    if threads.get() > 1 && rayon::current_thread_index().is_none() {
        rayon::scope(|_| pass())
    } else {
        pass()
    }
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

    /// A random f32 convolution, planned and run through `AddRelu` on `threads`, against
    /// candle's.
    fn check_against_candle(
        rng: &mut Lcg,
        (cin, cout, kernel): (usize, usize, usize),
        (h, w): (usize, usize),
        config: candle_nn::Conv2dConfig,
        threads: Threads,
        case: usize,
    ) {
        let weight = random_tensor(rng, &[cout, cin, kernel, kernel]);
        let bias = random_tensor(rng, &[cout]);
        let candle_conv = candle_nn::Conv2d::new(weight, Some(bias), config);
        let input = random_tensor(rng, &[1, cin, h, w]);
        let expected = candle_conv.forward(&input).unwrap();
        let (_, _, out_h, out_w) = expected.dims4().unwrap();
        let shortcut = rng.vec(out_h * out_w * cout);

        let expected = expected
            .permute((0, 2, 3, 1))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut x = FeatureMap::default();
        x.load_chw(
            &input.flatten_all().unwrap().to_vec1().unwrap(),
            (cin, h, w),
            Threads::ONE,
        );
        // Both layouts of the layers Winograd's fits: the direct one and Winograd's.
        for winograd in [false, true] {
            let planned = Conv2d::lay_out(&candle_conv, None, Precision::F32, winograd).unwrap();
            let is_winograd = matches!(planned.weights, ConvWeights::Winograd { .. });
            let fits = winograd_tiling(&planned).is_some();
            assert_eq!(is_winograd, winograd && fits, "case {case}");
            let (mut out, mut scratch) = (FeatureMap::default(), Scratch::default());
            planned.forward(
                &x,
                Epilogue::AddRelu(&shortcut),
                &mut out,
                &mut scratch,
                threads,
            );
            assert_eq!((out.height, out.width, out.channels), (out_h, out_w, cout));
            for (i, (ours, theirs)) in out.data().iter().zip(&expected).enumerate() {
                let theirs = (theirs + shortcut[i]).max(0.0);
                let tolerance = 1e-4 * (1.0 + theirs.abs());
                assert!(
                    (ours - theirs).abs() < tolerance,
                    "case {case} (winograd {is_winograd}), element {i}"
                );
            }
        }
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
            let threads = Threads(1 + case % 3);
            check_against_candle(&mut rng, (cin, cout, kernel), (h, w), config, threads, case);
        }
    }

    /// Wide 3 x 3 windows over a map large enough that each band is lowered in several
    /// slices ([`LOWERING_BYTES`]), the last one short.
    #[test]
    fn convolutions_lowered_in_slices_match_candle() {
        let mut rng = Lcg(8);
        let config = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let window = Window {
            height: 17,
            width: 19,
            channels: 64,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        assert!(lowering_rows(&window, 0, window.rows()) * 2 < window.rows());
        for threads in 1..=2 {
            let shape = (window.height, window.width);
            check_against_candle(
                &mut rng,
                (64, 5, 3),
                shape,
                config,
                Threads(threads),
                threads,
            );
        }
    }

    /// Windows the x86 kernel reads in place from padded rows: centred ones whose output
    /// width is whole row tiles (3 x 3 and 5 x 5 at stride 1, ResNet's 7 x 7 stem at stride
    /// 2; bands on 3 threads start inside image rows), and wide rows of no whole tiles,
    /// padded or not (the small CNN's).
    #[test]
    fn convolutions_read_in_place_match_candle() {
        let mut rng = Lcg(9);
        let cases = [
            (3, 1, 1, (7, 28)),
            (5, 1, 2, (3, 14)),
            (3, 1, 1, (1, 14)),
            (7, 2, 3, (13, 28)),
            (3, 1, 0, (9, 40)),
            (3, 1, 1, (5, 31)),
            (5, 2, 0, (7, 61)),
        ];
        for (case, (kernel, stride, padding, (h, w))) in cases.into_iter().enumerate() {
            let config = candle_nn::Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            for threads in 1..=3 {
                let shape = (20, 40, kernel);
                check_against_candle(&mut rng, shape, (h, w), config, Threads(threads), case);
            }
        }
    }

    #[test]
    fn int8_convolutions_track_f32_within_quantization_error() {
        let mut rng = Lcg(17);
        for case in 0..30 {
            let kernel = [1, 3][rng.below(2)];
            let (cin, cout) = (1 + rng.below(70), 1 + rng.below(70));
            let (h, w) = (kernel + rng.below(9), kernel + rng.below(9));
            let config = candle_nn::Conv2dConfig {
                padding: kernel / 2,
                stride: 1 + rng.below(2),
                ..Default::default()
            };
            let weight = random_tensor(&mut rng, &[cout, cin, kernel, kernel]);
            let bias = random_tensor(&mut rng, &[cout]);
            let candle_conv = candle_nn::Conv2d::new(weight, Some(bias), config);
            let mut x = FeatureMap::default();
            let input: Vec<f32> = rng.vec(cin * h * w).iter().map(|v| v.max(0.0)).collect();
            x.load_chw(&input, (cin, h, w), Threads::ONE);
            let run = |precision| {
                let conv = Conv2d::from_candle(&candle_conv, None, precision).unwrap();
                let (mut out, mut scratch) = (FeatureMap::default(), Scratch::default());
                conv.forward(
                    &x,
                    Epilogue::Linear,
                    &mut out,
                    &mut scratch,
                    Threads(1 + case % 2),
                );
                out.data().to_vec()
            };
            let (exact, quantized) = (run(Precision::F32), run(Precision::Int8));
            let norm = exact.iter().map(|v| v * v).sum::<f32>().sqrt();
            let error = exact
                .iter()
                .zip(&quantized)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            assert!(
                error <= 0.02 * norm + 1e-4,
                "case {case}: error {error} of {norm}"
            );
        }
    }

    #[test]
    fn dense_layers_match_candle_on_any_thread_count() {
        let mut rng = Lcg(12);
        let (inputs, outputs) = (70, 100);
        let weight = random_tensor(&mut rng, &[outputs, inputs]);
        let bias = random_tensor(&mut rng, &[outputs]);
        let linear = candle_nn::Linear::new(weight, Some(bias));
        let input = random_tensor(&mut rng, &[1, inputs]);
        let expected = linear.forward(&input).unwrap().flatten_all().unwrap();
        let expected = expected.to_vec1::<f32>().unwrap();
        let dense = Dense::from_candle(&linear).unwrap();
        let input = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for threads in 1..=3 {
            let ours = dense.forward(&input, Threads(threads));
            assert_eq!(ours.len(), outputs);
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{threads} threads, {i}"
                );
            }
        }
    }

    #[test]
    fn loading_an_image_transposes_it_to_nhwc() {
        for (channels, height, width) in [(3, 5, 7), (3, 1, 1), (1, 4, 3), (4, 3, 5), (2, 9, 2)] {
            let chw: Vec<f32> = (0..channels * height * width).map(|i| i as f32).collect();
            for threads in 1..4 {
                let mut x = FeatureMap::default();
                x.load_chw(&chw, (channels, height, width), Threads(threads));
                let plane = height * width;
                for (i, &value) in x.data().iter().enumerate() {
                    let (pixel, c) = (i / channels, i % channels);
                    assert_eq!(
                        value,
                        chw[c * plane + pixel],
                        "{channels} channels, {threads}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_all_zero_input_gives_the_bias() {
        let weight = Tensor::ones((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::new(&[1f32, -2.0, 3.0, 0.5], &Device::Cpu).unwrap();
        let config = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::from_candle(
            &candle_nn::Conv2d::new(weight, Some(bias), config),
            None,
            Precision::Int8,
        )
        .unwrap();
        let mut x = FeatureMap::default();
        x.load_chw(&[0.0; 3 * 5 * 5], (3, 5, 5), Threads::ONE);
        let (mut out, mut scratch) = (FeatureMap::default(), Scratch::default());
        conv.forward(&x, Epilogue::Relu, &mut out, &mut scratch, Threads::ONE);
        assert!(out
            .data()
            .chunks(4)
            .all(|pixel| pixel == [1.0, 0.0, 3.0, 0.5]));
    }
}
