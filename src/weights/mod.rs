//! Reading weights files: the sha256 the manifest promises, the safetensors container,
//! and a candle [`SimpleBackend`] that names the file in every missing-tensor or
//! wrong-shape error and reports the tensors no layer asked for. [`int8`] owns the
//! quantized files.

pub mod int8;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use sha2::{Digest, Sha256};

/// Bookkeeping tensors that training frameworks save but inference never reads.
const IGNORED_SUFFIXES: [&str; 1] = ["num_batches_tracked"];

/// The sha256 of a file, in hex (what the manifest states for a weights file).
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// The sha256 of bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads a whole weights file, checks its sha256 against the manifest's and parses it.
/// The hash and the parse run side by side (the hash alone was a tenth of the f32
/// start-up); a parse of bytes whose hash is wrong is thrown away and the hash reported.
pub fn read_verified<T: Send>(
    path: &Path,
    expected_sha256: &str,
    parse: impl FnOnce(&[u8]) -> Result<T> + Send,
) -> Result<T> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the weights file {}", path.display()))?;
    let (verified, parsed) =
        rayon::join(|| verify(path, &bytes, expected_sha256), || parse(&bytes));
    verified?;
    parsed
}

/// Checks a weights file's bytes against the sha256 the manifest states.
fn verify(path: &Path, bytes: &[u8], expected_sha256: &str) -> Result<()> {
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(expected_sha256) {
        bail!(
            "the weights file {} is not the one the manifest names: its sha256 is {actual}, \
             expected {expected_sha256} ({} bytes; a truncated or replaced file?)",
            path.display(),
            bytes.len()
        );
    }
    Ok(())
}

/// The tensors of one safetensors file, handed out to a model's constructor.
pub struct CheckedWeights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    requested: Mutex<HashSet<String>>,
}

impl CheckedWeights {
    /// Parses safetensors bytes read from `path`.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let tensors =
            candle_core::safetensors::load_buffer(bytes, &Device::Cpu).with_context(|| {
                format!(
                    "the weights file {} is not a valid safetensors file (truncated or corrupted?)",
                    path.display()
                )
            })?;
        Ok(Self::from_tensors(path, tensors))
    }

    /// Tensors already in memory, reported as coming from `path`.
    pub fn from_tensors(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors,
            requested: Mutex::new(HashSet::new()),
        }
    }

    /// Every tensor by name (for a model whose layers take them as they are).
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Reads, verifies and parses a weights file.
    pub fn load(path: &Path, expected_sha256: &str) -> Result<Self> {
        read_verified(path, expected_sha256, |bytes| Self::from_bytes(path, bytes))
    }

    /// Builds a model from these tensors, then refuses the file if it holds tensors the
    /// model did not ask for: a different architecture or depth loads "successfully"
    /// otherwise.
    pub fn build<M>(self, build: impl FnOnce(VarBuilder) -> candle_core::Result<M>) -> Result<M> {
        let path = self.path.clone();
        let shared = std::sync::Arc::new(self);
        let backend: Box<dyn SimpleBackend> = Box::new(SharedWeights(shared.clone()));
        let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
        let model = build(vb).map_err(anyhow::Error::msg)?;
        let requested = shared
            .requested
            .lock()
            .expect("no panics while holding the lock");
        let mut unexpected: Vec<&str> = shared
            .tensors
            .keys()
            .filter(|name| !requested.contains(*name))
            .filter(|name| !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)))
            .map(String::as_str)
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            let shown = unexpected
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            bail!(
                "the weights file {} has {} tensor(s) the model does not use ({shown}{}): \
                 is it the architecture the manifest says?",
                path.display(),
                unexpected.len(),
                if unexpected.len() > 5 { ", ..." } else { "" }
            );
        }
        Ok(model)
    }
}

struct SharedWeights(std::sync::Arc<CheckedWeights>);

impl SimpleBackend for SharedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "the weights file {} has tensor {name} of shape {:?}, the model expects {:?}",
                self.0.path.display(),
                tensor.dims(),
                shape.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(tensor) = self.0.tensors.get(name) else {
            candle_core::bail!(
                "the weights file {} has no tensor {name} (is the file complete, and for this model?)",
                self.0.path.display()
            );
        };
        self.0
            .requested
            .lock()
            .expect("no panics while holding the lock")
            .insert(name.to_string());
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}
