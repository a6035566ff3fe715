//! Int8 weights: every weight matrix of a model quantized symmetrically per output
//! channel (`w ≈ q · scale[channel]`, `q` in -127..=127), biases kept in f32.
//!
//! One quantization serves both ways of running a model at int8, so they agree: an f32
//! file quantized at load, and the file `classify quantize` writes (a quarter of the
//! size: what the ARM images carry). Its layout, standard safetensors:
//! - each quantized tensor `X` as `I8`, beside `X_scale` (`F32`) shaped to broadcast over
//!   `X`'s output axis: `[out, 1, ..]` when channels come first (torchvision's layouts),
//!   `[out]` when they come last (Keras');
//! - every other tensor as `F32`, unchanged;
//! - `__metadata__`: the format, the architecture, the f32 source's sha256.
//!
//! Headers are written with sorted keys, so one model always gives the same bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};

/// `__metadata__["format"]` of our int8 files.
pub const FORMAT: &str = "edge-classify-int8";
/// `__metadata__["format_version"]`: bumped when the layout changes.
pub const FORMAT_VERSION: &str = "1";
/// Appended to a quantized tensor's name to name its scales.
const SCALE_SUFFIX: &str = "_scale";
/// The largest magnitude of a quantized weight (-128 is never used, so negating stays
/// in range).
const MAX_WEIGHT: f32 = 127.0;

/// Which axis of a weight tensor indexes its output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[out, in, k, k]` convolutions and `[out, in]` dense layers (torchvision, candle).
    First,
    /// `[k, k, in, out]` and `[in, out]` (Keras, and the plan's product layout).
    Last,
}

impl ChannelAxis {
    /// The output channel of each flat index of a tensor with `len` values.
    fn channel_of(self, len: usize, channels: usize) -> impl Fn(usize) -> usize {
        let per_channel = len / channels;
        move |i| match self {
            ChannelAxis::First => i / per_channel,
            ChannelAxis::Last => i % channels,
        }
    }

    /// The scale tensor's shape for a weight of `shape`: it broadcasts over the weight.
    fn scale_shape(self, shape: &[usize]) -> Vec<usize> {
        match self {
            ChannelAxis::First => std::iter::once(shape[0])
                .chain(std::iter::repeat_n(1, shape.len() - 1))
                .collect(),
            ChannelAxis::Last => vec![shape[shape.len() - 1]],
        }
    }

    /// The axis a stored scale shape describes, if it fits the weight's shape.
    fn from_scale_shape(weight: &[usize], scale: &[usize]) -> Option<Self> {
        [ChannelAxis::First, ChannelAxis::Last]
            .into_iter()
            .find(|axis| weight.len() >= 2 && axis.scale_shape(weight) == scale)
    }
}

/// Symmetric per-channel quantization of `values` (`channels` output channels along
/// `axis`): `values[i] ≈ q[i] * scales[channel]`, the largest magnitude of each channel
/// mapping to ±127 (an all-zero channel gets scale 1).
pub fn quantize_channels(
    values: &[f32],
    channels: usize,
    axis: ChannelAxis,
) -> (Vec<i8>, Vec<f32>) {
    assert!(
        channels > 0 && values.len().is_multiple_of(channels),
        "{} values in {channels} channels",
        values.len()
    );
    let channel_of = axis.channel_of(values.len(), channels);
    let mut max_abs = vec![0f32; channels];
    for (i, w) in values.iter().enumerate() {
        let max = &mut max_abs[channel_of(i)];
        *max = max.max(w.abs());
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&max| if max > 0.0 { max / MAX_WEIGHT } else { 1.0 })
        .collect();
    let quantized = values
        .iter()
        .enumerate()
        .map(|(i, w)| {
            (w / scales[channel_of(i)])
                .round()
                .clamp(-MAX_WEIGHT, MAX_WEIGHT) as i8
        })
        .collect();
    (quantized, scales)
}

/// One tensor of an int8 model.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Int8 {
        values: Vec<i8>,
        shape: Vec<usize>,
        scales: Vec<f32>,
        axis: ChannelAxis,
    },
    F32 {
        values: Vec<f32>,
        shape: Vec<usize>,
    },
}

impl Stored {
    fn dequantize(&self) -> Result<Tensor> {
        let (values, shape) = match self {
            Stored::F32 { values, shape } => (values.clone(), shape),
            Stored::Int8 {
                values,
                shape,
                scales,
                axis,
            } => {
                let kernel = Int8Kernel {
                    values,
                    shape,
                    scales,
                    axis: *axis,
                };
                (kernel.dequantized(), shape)
            }
        };
        Ok(Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?)
    }
}

/// One stored int8 kernel, borrowed for a plan to lay out.
#[derive(Debug, Clone, Copy)]
pub struct Int8Kernel<'a> {
    pub values: &'a [i8],
    pub shape: &'a [usize],
    /// One per output channel.
    pub scales: &'a [f32],
    pub axis: ChannelAxis,
}

impl Int8Kernel<'_> {
    /// The kernel back in f32, `q * scale` (for a layer that runs in f32).
    pub fn dequantized(&self) -> Vec<f32> {
        let channel_of = self.axis.channel_of(self.values.len(), self.scales.len());
        let values = self.values.iter().enumerate();
        values
            .map(|(i, &q)| q as f32 * self.scales[channel_of(i)])
            .collect()
    }
}

/// A model's tensors at int8: see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weights {
    tensors: BTreeMap<String, Stored>,
    metadata: BTreeMap<String, String>,
}

impl Int8Weights {
    /// Quantizes every tensor of rank two or more (convolution and dense kernels) per
    /// output channel along `axis`, except those named in `exact`; the others (biases)
    /// stay f32. `metadata` is stored with the format's own keys.
    pub fn quantize(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        axis: ChannelAxis,
        exact: &[&str],
        metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut stored = BTreeMap::new();
        for (name, tensor) in tensors {
            ensure!(
                !name.ends_with(SCALE_SUFFIX),
                "tensor {name}: names ending in {SCALE_SUFFIX} are reserved for scales"
            );
            let shape = tensor.dims().to_vec();
            let values = tensor
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            ensure!(
                values.iter().all(|v| v.is_finite()),
                "tensor {name} holds a NaN or infinite value: the model is broken"
            );
            let entry = if shape.len() >= 2 && !values.is_empty() && !exact.contains(&name.as_str())
            {
                let channels = match axis {
                    ChannelAxis::First => shape[0],
                    ChannelAxis::Last => shape[shape.len() - 1],
                };
                let (values, scales) = quantize_channels(&values, channels, axis);
                Stored::Int8 {
                    values,
                    shape,
                    scales,
                    axis,
                }
            } else {
                Stored::F32 { values, shape }
            };
            stored.insert(name, entry);
        }
        let mut metadata = metadata;
        metadata.insert("format".into(), FORMAT.into());
        metadata.insert("format_version".into(), FORMAT_VERSION.into());
        metadata.insert(
            "quantization".into(),
            "symmetric per output channel, i8 in -127..=127, f32 scales; biases f32".into(),
        );
        Ok(Self {
            tensors: stored,
            metadata,
        })
    }

    /// The file's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Adds (or replaces) a `__metadata__` entry.
    pub fn set_metadata(&mut self, key: &str, value: String) {
        self.metadata.insert(key.to_string(), value);
    }

    /// A metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("the int8 weights have no {key:?} in their metadata"))
    }

    /// Every tensor back in f32 (quantized ones as `q * scale`), by its model name.
    pub fn dequantized(&self) -> Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(name, stored)| Ok((name.clone(), stored.dequantize()?)))
            .collect()
    }

    /// The int8 kernel stored under `name` (`None` if there is none, or it is f32).
    pub fn kernel(&self, name: &str) -> Option<Int8Kernel<'_>> {
        match self.tensors.get(name)? {
            Stored::Int8 {
                values,
                shape,
                scales,
                axis,
            } => Some(Int8Kernel {
                values,
                shape,
                scales,
                axis: *axis,
            }),
            Stored::F32 { .. } => None,
        }
    }

    /// Every tensor for a network's constructor, like [`Self::dequantized`], except that
    /// int8 convolution kernels (rank 4) become zero placeholders of their shape that
    /// hold no memory: the constructor checks names and shapes, and an inference plan then
    /// takes those kernels from [`Self::kernel`] as they are stored. A network built on
    /// these tensors must not run by itself.
    pub fn with_conv_placeholders(&self) -> Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(name, stored)| {
                let tensor = match stored {
                    Stored::Int8 { shape, .. } if shape.len() == 4 => {
                        Tensor::zeros((), DType::F32, &Device::Cpu)?
                            .broadcast_as(shape.as_slice())?
                    }
                    _ => stored.dequantize()?,
                };
                Ok((name.clone(), tensor))
            })
            .collect()
    }

    /// Bytes in the model's tensors (i8 values, their scales, the f32 tensors).
    pub fn size_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|stored| match stored {
                Stored::Int8 { values, scales, .. } => values.len() + 4 * scales.len(),
                Stored::F32 { values, .. } => 4 * values.len(),
            })
            .sum()
    }

    /// The safetensors file, byte for byte reproducible.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut views: Vec<(String, RawView)> = Vec::new();
        for (name, stored) in &self.tensors {
            match stored {
                Stored::Int8 {
                    values,
                    shape,
                    scales,
                    axis,
                } => {
                    views.push((
                        name.clone(),
                        RawView {
                            dtype: Dtype::I8,
                            shape: shape.clone(),
                            data: values.iter().map(|&q| q as u8).collect(),
                        },
                    ));
                    views.push((
                        format!("{name}{SCALE_SUFFIX}"),
                        RawView::f32(scales, axis.scale_shape(shape)),
                    ));
                }
                Stored::F32 { values, shape } => {
                    views.push((name.clone(), RawView::f32(values, shape.clone())))
                }
            }
        }
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let bytes = safetensors::serialize(views, Some(metadata))
            .context("cannot serialize the int8 weights")?;
        canonical_header(bytes)
    }

    /// Parses a file written by [`Self::to_bytes`], checking its format and that every
    /// quantized tensor has its scales.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .context("not a valid safetensors file (truncated or corrupted?)")?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match metadata.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => bail!("a {other:?} file, not {FORMAT:?} int8 weights"),
            None => bail!(
                "no format in its metadata: not int8 weights written by `classify quantize` \
                 (an f32 file named as int8?)"
            ),
        }
        let version = metadata.get("format_version").map(String::as_str);
        ensure!(
            version == Some(FORMAT_VERSION),
            "int8 format version {version:?}; this build reads version {FORMAT_VERSION}"
        );
        let file = SafeTensors::deserialize(bytes)
            .context("not a valid safetensors file (truncated or corrupted?)")?;
        let views: HashMap<String, safetensors::tensor::TensorView> =
            file.tensors().into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (name, view) in &views {
            let shape = view.shape().to_vec();
            let stored = match view.dtype() {
                Dtype::F32 if name.ends_with(SCALE_SUFFIX) => {
                    let weight = name.strip_suffix(SCALE_SUFFIX).unwrap_or_default();
                    ensure!(
                        views.get(weight).map(|w| w.dtype()) == Some(Dtype::I8),
                        "scales {name} without an int8 tensor {weight}"
                    );
                    continue;
                }
                Dtype::F32 => Stored::F32 {
                    values: f32_values(view.data()),
                    shape,
                },
                Dtype::I8 => {
                    let scale_name = format!("{name}{SCALE_SUFFIX}");
                    let scale = views.get(&scale_name).with_context(|| {
                        format!("the int8 tensor {name} has no scales ({scale_name})")
                    })?;
                    ensure!(
                        scale.dtype() == Dtype::F32,
                        "{scale_name} is {:?}, not F32",
                        scale.dtype()
                    );
                    let axis = ChannelAxis::from_scale_shape(&shape, scale.shape()).with_context(
                        || {
                            format!(
                                "{scale_name} has shape {:?}, which is not one scale per \
                                 output channel of {name} {shape:?}",
                                scale.shape()
                            )
                        },
                    )?;
                    let scales = f32_values(scale.data());
                    ensure!(
                        scales.iter().all(|s| s.is_finite() && *s > 0.0),
                        "{scale_name} holds a scale that is not a positive number"
                    );
                    Stored::Int8 {
                        values: view.data().iter().map(|&b| b as i8).collect(),
                        shape,
                        scales,
                        axis,
                    }
                }
                other => bail!("tensor {name} is {other:?}; int8 files hold only I8 and F32"),
            };
            tensors.insert(name.clone(), stored);
        }
        Ok(Self { tensors, metadata })
    }

    /// Reads an int8 file, checking the hash the manifest states.
    pub fn load(path: &Path, expected: super::Expected) -> Result<Self> {
        super::read_verified(path, expected, |file| {
            Self::from_bytes(&super::read_all(file)?)
                .with_context(|| format!("the int8 weights file {} is not usable", path.display()))
        })
    }
}

/// A tensor's bytes as safetensors writes them.
struct RawView {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawView {
    fn f32(values: &[f32], shape: Vec<usize>) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl View for RawView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Rewrites a safetensors header with its keys sorted (the crate writes the metadata
/// map in hash order, which changes from run to run); the data does not move.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])?;
    // serde_json's maps are sorted by key.
    let mut canonical = serde_json::to_vec(&header)?;
    canonical.resize(canonical.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + canonical.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(canonical.len() as u64).to_le_bytes());
    out.extend_from_slice(&canonical);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;

    fn tensor(rng: &mut Lcg, shape: &[usize]) -> Tensor {
        let len = shape.iter().product();
        Tensor::from_vec(rng.vec(len), shape, &Device::Cpu).unwrap()
    }

    fn sample(axis: ChannelAxis) -> Int8Weights {
        let mut rng = Lcg(5);
        let tensors = vec![
            ("conv.weight".to_string(), tensor(&mut rng, &[6, 3, 3, 3])),
            ("conv.bias".to_string(), tensor(&mut rng, &[6])),
            ("fc.weight".to_string(), tensor(&mut rng, &[4, 6])),
            (
                "zero.weight".to_string(),
                Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
            ),
        ];
        let metadata = BTreeMap::from([("architecture".to_string(), "test".to_string())]);
        Int8Weights::quantize(tensors, axis, &["fc.weight"], metadata).unwrap()
    }

    #[test]
    fn both_axes_quantize_the_same_channel_alike() {
        let mut rng = Lcg(1);
        let (rows, channels) = (37, 5);
        let last = rng.vec(rows * channels);
        // The same matrix with channels first.
        let first: Vec<f32> = (0..channels)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| last[r * channels + c])
            .collect();
        let (q_last, s_last) = quantize_channels(&last, channels, ChannelAxis::Last);
        let (q_first, s_first) = quantize_channels(&first, channels, ChannelAxis::First);
        assert_eq!(s_last, s_first);
        for r in 0..rows {
            for c in 0..channels {
                assert_eq!(q_last[r * channels + c], q_first[c * rows + r]);
            }
        }
        // Each channel's largest magnitude maps to ±127, and the error is half a step.
        for c in 0..channels {
            let column: Vec<i8> = (0..rows).map(|r| q_last[r * channels + c]).collect();
            assert_eq!(column.iter().map(|q| q.unsigned_abs()).max(), Some(127));
            for r in 0..rows {
                let error =
                    (q_last[r * channels + c] as f32 * s_last[c] - last[r * channels + c]).abs();
                assert!(
                    error <= 0.5 * s_last[c] * 1.0001,
                    "{error} vs step {}",
                    s_last[c]
                );
            }
        }
    }

    #[test]
    fn quantizing_the_dequantized_weights_gives_them_back() {
        for axis in [ChannelAxis::First, ChannelAxis::Last] {
            let weights = sample(axis);
            let again = Int8Weights::quantize(
                weights.dequantized().unwrap(),
                axis,
                &["fc.weight"],
                weights.metadata().clone(),
            )
            .unwrap();
            for (name, stored) in &weights.tensors {
                match (stored, &again.tensors[name]) {
                    (
                        Stored::Int8 {
                            values: a,
                            scales: sa,
                            ..
                        },
                        Stored::Int8 {
                            values: b,
                            scales: sb,
                            ..
                        },
                    ) => {
                        assert_eq!(a, b, "{name}");
                        for (x, y) in sa.iter().zip(sb) {
                            assert!((x - y).abs() <= 1e-6 * x, "{name}: {x} vs {y}");
                        }
                    }
                    (a, b) => assert_eq!(a, b, "{name}"),
                }
            }
        }
    }

    #[test]
    fn files_round_trip_and_repeat_byte_for_byte() {
        for axis in [ChannelAxis::First, ChannelAxis::Last] {
            let weights = sample(axis);
            let bytes = weights.to_bytes().unwrap();
            // Ten serializations: the metadata map's hash order would differ among them.
            for _ in 0..10 {
                assert_eq!(sample(axis).to_bytes().unwrap(), bytes);
            }
            let read = Int8Weights::from_bytes(&bytes).unwrap();
            assert_eq!(read, weights);
            assert_eq!(read.require("architecture").unwrap(), "test");
            assert!(read.require("source_sha256").is_err());
            // Any safetensors reader sees I8 kernels and broadcastable F32 scales.
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let conv = file.tensor("conv.weight").unwrap();
            assert_eq!(conv.dtype(), Dtype::I8);
            let expected_scale_shape: &[usize] = match axis {
                ChannelAxis::First => &[6, 1, 1, 1],
                ChannelAxis::Last => &[3],
            };
            assert_eq!(
                file.tensor("conv.weight_scale").unwrap().shape(),
                expected_scale_shape
            );
            assert_eq!(file.tensor("conv.bias").unwrap().dtype(), Dtype::F32);
            assert_eq!(
                file.tensor("fc.weight").unwrap().dtype(),
                Dtype::F32,
                "kept exact"
            );
            assert!(file.tensor("fc.weight_scale").is_err());
        }
    }

    #[test]
    fn broken_files_are_refused_with_the_reason() {
        let good = sample(ChannelAxis::First);
        type Edit<'a> = &'a dyn Fn(&mut Vec<(String, RawView)>, &mut HashMap<String, String>);
        let rewrite = |edit: Edit| {
            let bytes = good.to_bytes().unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let mut views: Vec<(String, RawView)> = file
                .tensors()
                .into_iter()
                .map(|(name, v)| {
                    (
                        name,
                        RawView {
                            dtype: v.dtype(),
                            shape: v.shape().to_vec(),
                            data: v.data().to_vec(),
                        },
                    )
                })
                .collect();
            let mut metadata: HashMap<String, String> =
                good.metadata().clone().into_iter().collect();
            edit(&mut views, &mut metadata);
            let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
            Int8Weights::from_bytes(&bytes).unwrap_err().to_string()
        };
        let error = rewrite(&|views, _| views.retain(|(n, _)| n != "conv.weight_scale"));
        assert!(error.contains("has no scales"), "{error}");
        let error = rewrite(&|views, _| views.retain(|(n, _)| n != "conv.weight"));
        assert!(error.contains("without an int8 tensor"), "{error}");
        let error = rewrite(&|views, _| {
            for (name, view) in views.iter_mut() {
                if name == "conv.weight_scale" {
                    view.shape = vec![3, 2];
                }
            }
        });
        assert!(
            error.contains("not one scale per output channel"),
            "{error}"
        );
        let error = rewrite(&|views, _| {
            for (name, view) in views.iter_mut() {
                if name == "conv.weight_scale" {
                    view.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
        });
        assert!(error.contains("not a positive number"), "{error}");
        let error = rewrite(&|_, metadata| {
            metadata.remove("format");
        });
        assert!(error.contains("not int8 weights"), "{error}");
        let error = rewrite(&|_, metadata| {
            metadata.insert("format_version".into(), "9".into());
        });
        assert!(error.contains("version"), "{error}");
        let error = Int8Weights::from_bytes(b"not a file")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a valid safetensors"), "{error}");
    }

    #[test]
    fn broken_models_are_not_quantized() {
        let nan = Tensor::new(&[[1f32, f32::NAN]], &Device::Cpu).unwrap();
        let error = Int8Weights::quantize(
            [("w".to_string(), nan)],
            ChannelAxis::First,
            &[],
            BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("NaN"), "{error}");
    }
}
