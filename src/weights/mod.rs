//! Reading weights files: the hash the manifest promises, the safetensors container,
//! and a candle [`SimpleBackend`] that names the file in every missing-tensor or
//! wrong-shape error and reports the tensors no layer asked for. [`int8`] owns the
//! quantized files.

pub mod int8;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::Dtype;
use sha2::{Digest, Sha256};

/// Bookkeeping tensors that training frameworks save but inference never reads.
const IGNORED_SUFFIXES: [&str; 1] = ["num_batches_tracked"];

/// What the manifest states a weights file hashes to. The sha256 is the file's identity
/// (what `sha256sum` prints and `GET /_/models` lists). The BLAKE3, when stated, is what
/// loading checks instead: as strong a check against a corrupt, truncated or substituted
/// file (a 256-bit cryptographic hash too), at a tenth of the instructions on CPUs without
/// SHA instructions (Cortex-A53/A72: Pi 3 and 4), where the sha256 of ResNet-50's int8
/// file alone cost more than its forward pass.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub sha256: &'a str,
    pub blake3: Option<&'a str>,
}

impl<'a> Expected<'a> {
    /// As a manifest entry holds them.
    pub fn of(sha256: &'a str, blake3: &'a Option<String>) -> Self {
        Self {
            sha256,
            blake3: blake3.as_deref(),
        }
    }
}

/// A file's sha256 and BLAKE3, in hex, as the manifest states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    pub blake3: String,
}

/// The sha256 of a file, in hex (what the manifest states for a weights file).
pub fn file_sha256(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    sha256_of(&file).with_context(|| format!("cannot read {}", path.display()))
}

/// A file's sha256 and BLAKE3, from one read of it.
pub fn file_digests(path: &Path) -> Result<Digests> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut sha256 = Sha256::new();
    let mut blake3 = blake3::Hasher::new();
    for_each_block(&file, |block| {
        sha256.update(block);
        blake3.update(block);
    })
    .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Digests {
        sha256: hex::encode(sha256.finalize()),
        blake3: blake3.finalize().to_hex().to_string(),
    })
}

/// The sha256 and BLAKE3 of bytes, in hex.
pub fn digests(bytes: &[u8]) -> Digests {
    Digests {
        sha256: hex::encode(Sha256::digest(bytes)),
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

/// Where weights are read from: a file or bytes in memory, read at given offsets, so that
/// the hash and the parse read one open file side by side, each at its own place.
pub trait ReadAt: Sync {
    fn byte_len(&self) -> io::Result<u64>;
    /// Fills `buffer` from `offset` on, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buffer, offset)
    }

    #[cfg(windows)]
    fn read_exact_at(&self, mut buffer: &mut [u8], mut offset: u64) -> io::Result<()> {
        // `seek_read` moves the shared cursor, which no reader here relies on.
        while !buffer.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(self, buffer, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => {
                    buffer = &mut buffer[read..];
                    offset += read as u64;
                }
            }
        }
        Ok(())
    }
}

impl ReadAt for [u8] {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        let source = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buffer.len())?))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buffer.copy_from_slice(source);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn byte_len(&self) -> io::Result<u64> {
        self.as_slice().byte_len()
    }

    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buffer, offset)
    }
}

/// A whole source in memory.
pub fn read_all(source: &(impl ReadAt + ?Sized)) -> io::Result<Vec<u8>> {
    let len = usize::try_from(source.byte_len()?).map_err(|_| io::ErrorKind::OutOfMemory)?;
    let mut bytes = vec![0; len];
    source.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Feeds a source to `consume` a block at a time (never all of it in memory).
fn for_each_block(
    source: &(impl ReadAt + ?Sized),
    mut consume: impl FnMut(&[u8]),
) -> io::Result<()> {
    const BLOCK: u64 = 1 << 20;
    let len = source.byte_len()?;
    let mut block = vec![0; BLOCK.min(len) as usize];
    let mut offset = 0;
    while offset < len {
        let block = &mut block[..BLOCK.min(len - offset) as usize];
        source.read_exact_at(block, offset)?;
        consume(block);
        offset += block.len() as u64;
    }
    Ok(())
}

/// The sha256 of a source, in hex.
fn sha256_of(source: &(impl ReadAt + ?Sized)) -> io::Result<String> {
    let mut hasher = Sha256::new();
    for_each_block(source, |block| hasher.update(block))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The BLAKE3 of a source, in hex.
fn blake3_of(source: &(impl ReadAt + ?Sized)) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    for_each_block(source, |block| {
        hasher.update(block);
    })?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Opens a weights file, checks its hash against the manifest's and parses it. The hash
/// runs beside the parse, over its own reads of the same open file (the hash alone was a
/// tenth of the f32 start-up); a parse of a file whose hash is wrong is thrown away and the
/// hash reported. A file that cannot be read at offsets (a pipe) is read whole first.
pub fn read_verified<T: Send>(
    path: &Path,
    expected: Expected,
    parse: impl FnOnce(&dyn ReadAt) -> Result<T> + Send,
) -> Result<T> {
    let cannot_read = || format!("cannot read the weights file {}", path.display());
    let file = File::open(path).with_context(cannot_read)?;
    let streamed: Vec<u8>;
    let source: &dyn ReadAt = if file.metadata().with_context(cannot_read)?.is_file() {
        &file
    } else {
        streamed = read_stream(file).with_context(cannot_read)?;
        &streamed
    };
    let (verified, parsed) = rayon::join(|| verify(path, source, expected), || parse(source));
    verified?;
    parsed
}

fn read_stream(mut stream: impl io::Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Checks a weights file against the hash the manifest states: its BLAKE3 when stated,
/// else its sha256.
fn verify(path: &Path, source: &dyn ReadAt, expected: Expected) -> Result<()> {
    let (algorithm, stated, actual) = match expected.blake3 {
        Some(stated) => ("BLAKE3", stated, blake3_of(source)),
        None => ("sha256", expected.sha256, sha256_of(source)),
    };
    let actual =
        actual.with_context(|| format!("cannot read the weights file {}", path.display()))?;
    if !actual.eq_ignore_ascii_case(stated) {
        bail!(
            "the weights file {} is not the one the manifest names: its {algorithm} is {actual}, \
             expected {stated} ({} bytes; a truncated or replaced file?)",
            path.display(),
            source.byte_len().unwrap_or_default()
        );
    }
    Ok(())
}

/// The safetensors format's bound on its JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads safetensors tensor by tensor, straight into the tensors' own memory: the file's
/// bytes are never held beside the tensors made from them (that copy was half the f32
/// start-up's memory and page faults).
fn read_tensors(source: &(impl ReadAt + ?Sized)) -> Result<HashMap<String, Tensor>> {
    let file_len = source.byte_len()?;
    let mut prefix = [0; 8];
    source
        .read_exact_at(&mut prefix, 0)
        .context("shorter than a safetensors header")?;
    let header_len = u64::from_le_bytes(prefix);
    ensure!(
        header_len <= MAX_HEADER_BYTES && 8 + header_len <= file_len,
        "its header length {header_len} does not fit a file of {file_len} bytes"
    );
    let mut header = vec![0; header_len as usize];
    source.read_exact_at(&mut header, 8)?;
    let metadata: Metadata =
        serde_json::from_slice(&header).context("its header is not a safetensors header")?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    ensure!(
        metadata.data_len() as u64 == data_len,
        "its header describes {} bytes of tensors, the file holds {data_len}",
        metadata.data_len()
    );
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata.info(&name).expect("offset_keys names its tensors");
            let tensor =
                read_tensor(source, data_start, info).with_context(|| format!("tensor {name}"))?;
            Ok((name, tensor))
        })
        .collect()
}

fn read_tensor(
    source: &(impl ReadAt + ?Sized),
    data_start: u64,
    info: &TensorInfo,
) -> Result<Tensor> {
    let (start, end) = info.data_offsets;
    let offset = data_start + start as u64;
    if info.dtype == Dtype::F32 {
        // Read into the f32s themselves: no staging copy.
        let mut values = vec![0f32; (end - start) / 4];
        source.read_exact_at(bytemuck::cast_slice_mut(&mut values), offset)?;
        if cfg!(target_endian = "big") {
            for value in &mut values {
                *value = f32::from_bits(u32::from_le(value.to_bits()));
            }
        }
        return Ok(Tensor::from_vec(
            values,
            info.shape.as_slice(),
            &Device::Cpu,
        )?);
    }
    let mut bytes = vec![0; end - start];
    source.read_exact_at(&mut bytes, offset)?;
    Ok(TensorView::new(info.dtype, info.shape.clone(), &bytes)?.load(&Device::Cpu)?)
}

/// The tensors of one safetensors file, handed out to a model's constructor.
pub struct CheckedWeights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    requested: Mutex<HashSet<String>>,
}

impl CheckedWeights {
    /// Parses safetensors read from `path`.
    pub fn from_source(path: &Path, source: &(impl ReadAt + ?Sized)) -> Result<Self> {
        let tensors = read_tensors(source).with_context(|| {
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
    pub fn load(path: &Path, expected: Expected) -> Result<Self> {
        read_verified(path, expected, |file| Self::from_source(path, file))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors_of_every_kind() -> HashMap<String, Tensor> {
        let cpu = &Device::Cpu;
        let ramp = Tensor::arange(-6f32, 6.0, cpu).unwrap();
        HashMap::from([
            ("conv.weight".to_string(), ramp.reshape((3, 2, 2)).unwrap()),
            (
                "empty".to_string(),
                Tensor::zeros(0, DType::F32, cpu).unwrap(),
            ),
            ("steps".to_string(), Tensor::new(&[7i64, -1], cpu).unwrap()),
            ("half".to_string(), ramp.to_dtype(DType::F16).unwrap()),
            ("bytes".to_string(), Tensor::new(&[0u8, 255], cpu).unwrap()),
        ])
    }

    /// The tensors saved by candle: the file (kept while the folder lives) and its bytes.
    fn saved(tensors: &HashMap<String, Tensor>) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        candle_core::safetensors::save(tensors, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn streamed_tensors_are_candles_parse() {
        let (_dir, path, bytes) = saved(&tensors_of_every_kind());
        let expected = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let from_file = read_tensors(&File::open(&path).unwrap()).unwrap();
        for ours in [read_tensors(&bytes[..]).unwrap(), from_file] {
            assert_eq!(ours.len(), expected.len());
            for (name, tensor) in &expected {
                let theirs = tensor.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                let mine = ours[name]
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap();
                assert_eq!(ours[name].dtype(), tensor.dtype(), "{name}");
                assert_eq!(ours[name].dims(), tensor.dims(), "{name}");
                assert_eq!(
                    mine.to_vec1::<f64>().unwrap(),
                    theirs.to_vec1::<f64>().unwrap()
                );
            }
        }
    }

    #[test]
    fn broken_containers_are_refused_with_the_reason() {
        let (_dir, _, bytes) = saved(&tensors_of_every_kind());
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let mut huge_header = bytes.clone();
        huge_header[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        let mut not_json = bytes.clone();
        not_json[8] = b'!';
        let mut longer = bytes.clone();
        longer.push(0);
        let cases: [(&[u8], &str); 6] = [
            (&[], "shorter than a safetensors header"),
            (&bytes[..5], "shorter than a safetensors header"),
            (&huge_header, "does not fit"),
            (&not_json, "not a safetensors header"),
            (&bytes[..8 + header_len as usize + 3], "bytes of tensors"),
            (&longer, "bytes of tensors"),
        ];
        for (source, reason) in cases {
            let error = format!("{:#}", read_tensors(source).unwrap_err());
            assert!(error.contains(reason), "{reason}: {error}");
        }
    }

    #[test]
    fn the_streamed_hashes_are_the_digests_of_all_bytes() {
        let bytes: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
        let path = Path::new("w.safetensors");
        for len in [0, 1, 1 << 20, bytes.len()] {
            let source = bytes[..len].to_vec();
            let Digests { sha256, blake3 } = digests(&source);
            let source: &dyn ReadAt = &source;
            let stated = |sha256, blake3| Expected { sha256, blake3 };
            verify(path, source, stated(&sha256, Some(&blake3))).unwrap();
            verify(path, source, stated(&sha256, None)).unwrap();
            // The BLAKE3, when stated, is what is checked; each names its algorithm.
            let wrong = "0".repeat(64);
            let error = verify(path, source, stated(&sha256, Some(&wrong))).unwrap_err();
            assert!(error.to_string().contains("its BLAKE3 is"), "{error}");
            let error = verify(path, source, stated(&wrong, None)).unwrap_err();
            assert!(error.to_string().contains("its sha256 is"), "{error}");
        }
        let past_the_end = bytes[..4].read_exact_at(&mut [0; 2], 3).unwrap_err();
        assert_eq!(past_the_end.kind(), io::ErrorKind::UnexpectedEof);
    }
}
