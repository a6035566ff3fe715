//! Labelled image folders (`DIR/<class>/*`), decoded once into memory at the model's
//! input size, augmented on the fly, and served as shuffled mini-batches prepared on
//! another thread while the previous batch trains.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::labels::{Labels, MAX_CLASSES};
use crate::preprocess::{self, InputSpec};

/// One labelled photo.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub class: usize,
}

/// The photos of one split, and the files of its class folders that were left out.
#[derive(Debug, Default)]
pub struct Listing {
    pub samples: Vec<Sample>,
    /// `path: reason` of every file that is not an image we can read.
    pub skipped: Vec<String>,
}

/// The class names a new model learns: the sub-folders of `dir` (its `train/`), sorted.
/// Names become label lines, so tabs, line breaks and other control characters are
/// refused; so are fewer than two classes and more than [`MAX_CLASSES`].
pub fn discover_classes(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot list {} (expected one folder of photos per class there)",
            dir.display()
        )
    })?;
    let mut classes = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            bail!("the class folder {} is not named in UTF-8", path.display());
        };
        if name.starts_with('.') {
            continue;
        }
        if name.trim().is_empty() || name.chars().any(char::is_control) || name != name.trim() {
            bail!(
                "the class folder {:?} in {} cannot be a label: no tabs, line breaks, \
                 control characters or surrounding spaces",
                name,
                dir.display()
            );
        }
        classes.push(name.to_string());
    }
    classes.sort();
    match classes.len() {
        0 | 1 => bail!(
            "{} holds {} class folder{}: a classifier needs at least two ({}/<class>/...)",
            dir.display(),
            classes.len(),
            if classes.len() == 1 { "" } else { "s" },
            dir.display()
        ),
        n if n > MAX_CLASSES => bail!(
            "{} holds {n} class folders; at most {MAX_CLASSES} are supported",
            dir.display()
        ),
        _ => Ok(classes),
    }
}

/// The photos of `dir/<class>/` for every class of `labels` (matched by name or id), in
/// a fixed order. Every class folder must exist and hold at least one image; files that
/// are not images (by their header) are skipped and named.
pub fn list_folders(dir: &Path, labels: &Labels) -> Result<Listing> {
    let mut listing = Listing::default();
    for class in 0..labels.len() {
        let label = labels.get(class).expect("class index in range");
        let folder = [label.name(), label.id.as_str()]
            .iter()
            .map(|name| dir.join(name))
            .find(|folder| folder.is_dir())
            .with_context(|| {
                format!(
                    "{} has no folder for the class {:?} (expected {}/{})",
                    dir.display(),
                    label.name(),
                    dir.display(),
                    label.name()
                )
            })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot list {}", folder.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", folder.display()))?;
        files.retain(|path| path.is_file());
        files.sort();
        let before = listing.samples.len();
        for path in files {
            match image_header(&path) {
                Ok(()) => listing.samples.push(Sample { path, class }),
                Err(reason) => listing
                    .skipped
                    .push(format!("{}: {reason:#}", path.display())),
            }
        }
        if listing.samples.len() == before {
            bail!("{} holds no images", folder.display());
        }
    }
    for skipped in &listing.skipped {
        tracing::warn!("skipped {skipped}");
    }
    Ok(listing)
}

/// Whether `path` starts like an image we decode, with sane dimensions (reads the
/// header only).
fn image_header(path: &Path) -> Result<()> {
    let reader = image::ImageReader::open(path)
        .context("cannot open")?
        .with_guessed_format()
        .context("cannot read")?;
    if reader.format().is_none() {
        bail!("not an image");
    }
    let (width, height) = reader.into_dimensions().context("not a readable image")?;
    if width == 0 || height == 0 {
        bail!("an empty image");
    }
    Ok(())
}

/// Moves a seeded, stratified `fraction` of every class out of `samples` (at least one
/// photo of a class that has two or more): returns (kept, held out), each in path order.
pub fn hold_out(samples: Vec<Sample>, fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    if fraction <= 0.0 {
        return (samples, Vec::new());
    }
    let classes = samples.iter().map(|s| s.class + 1).max().unwrap_or(0);
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); classes];
    for sample in samples {
        by_class[sample.class].push(sample);
    }
    let (mut kept, mut held) = (Vec::new(), Vec::new());
    for (class, mut members) in by_class.into_iter().enumerate() {
        members.sort_by(|a, b| a.path.cmp(&b.path));
        members.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ ((class as u64) << 20),
        ));
        let count = ((members.len() as f64 * fraction).round() as usize)
            .max(usize::from(members.len() >= 2))
            .min(members.len().saturating_sub(1));
        held.extend(members.drain(..count));
        kept.extend(members);
    }
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    held.sort_by(|a, b| a.path.cmp(&b.path));
    (kept, held)
}

/// At most `per_class` samples of each class, drawn with the seed (for smoke runs).
pub fn limit_per_class(samples: Vec<Sample>, per_class: usize, seed: u64) -> Vec<Sample> {
    let mut shuffled = samples;
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut counts = std::collections::HashMap::new();
    shuffled.retain(|sample| {
        let count = counts.entry(sample.class).or_insert(0);
        *count += 1;
        *count <= per_class
    });
    shuffled.sort_by(|a, b| a.path.cmp(&b.path));
    shuffled
}

/// sha256 over every sample's class, file name and contents: what a training record and
/// a feature cache are keyed by.
pub fn content_hash(samples: &[Sample]) -> Result<String> {
    let file_hashes: Vec<[u8; 32]> = samples
        .par_iter()
        .map(|sample| {
            let bytes = std::fs::read(&sample.path)
                .with_context(|| format!("cannot read {}", sample.path.display()))?;
            Ok(Sha256::digest(&bytes).into())
        })
        .collect::<Result<_>>()?;
    let mut hasher = Sha256::new();
    for (sample, file_hash) in samples.iter().zip(&file_hashes) {
        let name = sample
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        hasher.update(format!("{}\t{name}\t", sample.class));
        hasher.update(file_hash);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Photos decoded and resized (as serving resizes them) to `size x size` RGB, in memory.
pub struct DecodedImages {
    pub size: usize,
    pixels: Vec<u8>,
    pub classes: Vec<usize>,
}

impl DecodedImages {
    /// Decodes every sample in parallel; a file that does not decode is an error naming it.
    pub fn decode(samples: &[Sample], spec: &InputSpec) -> Result<Self> {
        let size = spec.size as usize;
        let images: Vec<Vec<u8>> = samples
            .par_iter()
            .map(|sample| {
                let bytes = std::fs::read(&sample.path)
                    .with_context(|| format!("cannot read {}", sample.path.display()))?;
                let image = preprocess::decode_rgb(&bytes, preprocess::DEFAULT_MAX_PIXELS)
                    .and_then(|image| {
                        preprocess::resize::resize(
                            &image,
                            spec.resize,
                            spec.size,
                            spec.resize_shorter,
                        )
                    })
                    .with_context(|| format!("cannot use {}", sample.path.display()))?;
                Ok(image.into_raw())
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            size,
            pixels: images.concat(),
            classes: samples.iter().map(|s| s.class).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    fn image(&self, index: usize) -> &[u8] {
        let len = self.size * self.size * 3;
        &self.pixels[index * len..(index + 1) * len]
    }
}

/// Keras `ImageDataGenerator`-style random transforms, applied as one affine warp.
#[derive(Debug, Clone, Copy)]
pub struct Augmentation {
    /// Largest rotation either way, in degrees.
    pub rotation_degrees: f32,
    /// Zoom drawn from `1 - zoom ..= 1 + zoom`.
    pub zoom: f32,
    /// Largest shift either way, as a fraction of the side.
    pub shift: f32,
    pub horizontal_flip: bool,
}

impl Augmentation {
    pub const NONE: Self = Self {
        rotation_degrees: 0.0,
        zoom: 0.0,
        shift: 0.0,
        horizontal_flip: false,
    };

    /// What the original notebook used, minus shear (a zoom and shift cover it).
    pub const KERAS_LIKE: Self = Self {
        rotation_degrees: 15.0,
        zoom: 0.2,
        shift: 0.1,
        horizontal_flip: true,
    };

    /// Warps `source` (`size x size` RGB) into `out`: bilinear sampling, edges extended
    /// (Keras' `fill_mode="nearest"`).
    pub fn apply(&self, source: &[u8], size: usize, rng: &mut impl Rng, out: &mut [u8]) {
        let angle = rng.random_range(-1.0..=1.0f32) * self.rotation_degrees.to_radians();
        let zoom = 1.0 + rng.random_range(-1.0..=1.0f32) * self.zoom;
        let shift_x = rng.random_range(-1.0..=1.0f32) * self.shift * size as f32;
        let shift_y = rng.random_range(-1.0..=1.0f32) * self.shift * size as f32;
        let flip = self.horizontal_flip && rng.random_bool(0.5);
        let centre = (size as f32 - 1.0) / 2.0;
        let (sin, cos) = angle.sin_cos();
        let max = size as f32 - 1.0;
        for y in 0..size {
            for x in 0..size {
                // Output pixel -> source pixel: undo the shift, rotation, zoom and flip.
                let dx = x as f32 - centre - shift_x;
                let dy = y as f32 - centre - shift_y;
                let mut sx = (cos * dx + sin * dy) / zoom;
                let sy = (-sin * dx + cos * dy) / zoom;
                if flip {
                    sx = -sx;
                }
                let (sx, sy) = ((sx + centre).clamp(0.0, max), (sy + centre).clamp(0.0, max));
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
                let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                let at = |x: usize, y: usize, ch: usize| f32::from(source[(y * size + x) * 3 + ch]);
                for ch in 0..3 {
                    let top = at(x0, y0, ch) * (1.0 - fx) + at(x1, y0, ch) * fx;
                    let bottom = at(x0, y1, ch) * (1.0 - fx) + at(x1, y1, ch) * fx;
                    out[(y * size + x) * 3 + ch] = (top * (1.0 - fy) + bottom * fy).round() as u8;
                }
            }
        }
    }
}

/// One mini-batch: inputs `[n, 3, size, size]` normalised as the model's input spec
/// says, and 0/1 (class index) targets.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub len: usize,
}

/// Builds the batch of `indices`, augmenting each image with its own seeded generator
/// so the batch does not depend on thread scheduling.
pub fn make_batch(
    images: &DecodedImages,
    indices: &[usize],
    spec: &InputSpec,
    augmentation: Option<(&Augmentation, u64)>,
) -> Result<Batch> {
    let size = images.size;
    let inputs: Vec<Tensor> = indices
        .par_iter()
        .enumerate()
        .map(|(position, &index)| {
            let source = images.image(index);
            let pixels = match augmentation {
                Some((augmentation, seed)) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((position as u64) << 32));
                    let mut out = vec![0u8; source.len()];
                    augmentation.apply(source, size, &mut rng, &mut out);
                    out
                }
                None => source.to_vec(),
            };
            let image = RgbImage::from_raw(size as u32, size as u32, pixels)
                .expect("a decoded image holds size x size x 3 bytes");
            preprocess::to_chw(&image, spec)
        })
        .collect();
    let targets: Vec<f32> = indices.iter().map(|&i| images.classes[i] as f32).collect();
    Ok(Batch {
        inputs: Tensor::stack(&inputs, 0)?,
        targets: Tensor::from_vec(targets, indices.len(), &Device::Cpu)?,
        len: indices.len(),
    })
}

/// One epoch's batches in a seeded order, built on a helper thread one batch ahead.
pub fn epoch_batches<'a>(
    scope: &'a std::thread::Scope<'a, '_>,
    images: &'a DecodedImages,
    spec: &'a InputSpec,
    batch_size: usize,
    augmentation: &'a Augmentation,
    seed: u64,
) -> crossbeam_channel::Receiver<Result<Batch>> {
    let mut order: Vec<usize> = (0..images.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let (sender, receiver) = crossbeam_channel::bounded(1);
    scope.spawn(move || {
        for (number, indices) in order.chunks(batch_size).enumerate() {
            let batch_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ number as u64;
            let batch = make_batch(images, indices, spec, Some((augmentation, batch_seed)));
            if sender.send(batch).is_err() {
                return;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_augmentation_is_the_identity_and_flips_mirror() {
        let size = 5;
        let source: Vec<u8> = (0..size * size * 3).map(|v| v as u8).collect();
        let mut out = vec![0u8; source.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        Augmentation::NONE.apply(&source, size, &mut rng, &mut out);
        assert_eq!(out, source);
        let flip_only = Augmentation {
            horizontal_flip: true,
            ..Augmentation::NONE
        };
        // Some seed flips: the first row then reads backwards.
        let flipped = (0..16).any(|seed| {
            flip_only.apply(
                &source,
                size,
                &mut ChaCha8Rng::seed_from_u64(seed),
                &mut out,
            );
            out[..3] == source[(size - 1) * 3..size * 3]
        });
        assert!(flipped);
    }

    #[test]
    fn holding_out_is_stratified_seeded_and_disjoint() {
        let samples: Vec<Sample> = (0..45)
            .map(|i| Sample {
                path: PathBuf::from(format!("{i:02}.jpg")),
                // 30 of class 0, 10 of class 1, 5 of class 2.
                class: usize::from(i >= 30) + usize::from(i >= 40),
            })
            .collect();
        let (kept, held) = hold_out(samples.clone(), 0.2, 3);
        let count = |s: &[Sample], class| s.iter().filter(|x| x.class == class).count();
        assert_eq!(
            [count(&held, 0), count(&held, 1), count(&held, 2)],
            [6, 2, 1]
        );
        assert_eq!(kept.len() + held.len(), 45);
        assert!(held.iter().all(|h| kept.iter().all(|k| k.path != h.path)));
        let (_, again) = hold_out(samples.clone(), 0.2, 3);
        assert_eq!(
            held.iter().map(|s| &s.path).collect::<Vec<_>>(),
            again.iter().map(|s| &s.path).collect::<Vec<_>>()
        );
        let (all, none) = hold_out(samples, 0.0, 3);
        assert_eq!((all.len(), none.len()), (45, 0));
    }

    #[test]
    fn classes_are_the_sorted_folder_names() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["wren", "robin", ".hidden"] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        assert_eq!(discover_classes(dir.path()).unwrap(), ["robin", "wren"]);
        std::fs::create_dir(dir.path().join("bad\nname")).unwrap();
        let err = discover_classes(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot be a label"), "{err}");
    }

    #[test]
    fn limiting_keeps_classes_balanced() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                path: PathBuf::from(format!("{i:02}.jpg")),
                class: i % 2,
            })
            .collect();
        let limited = limit_per_class(samples, 3, 7);
        assert_eq!(limited.len(), 6);
        assert_eq!(limited.iter().filter(|s| s.class == 1).count(), 3);
    }
}
