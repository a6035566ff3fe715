//! The model manifest (`weights/models.toml`): which models exist, what network each
//! one is, how an image becomes its input, its labels, and where its weights come from.
//!
//! The manifest is the single place that describes a model; loading only follows what
//! it says. A second manifest, a models dir (`--models-dir`, e.g. a mounted volume),
//! adds models to the built-in ones without rebuilding the image; [`edit`] writes the
//! entries `classify train` makes.

pub mod edit;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::models::resnet::Variant;
use crate::plan::Precision;
use crate::preprocess::{ChannelOrder, InputSpec, ResizeMode};
use crate::weights::Expected;

/// The manifest's file name inside a weights folder.
pub const MANIFEST_FILE: &str = "models.toml";

/// Where the manifest is looked for when none is named: the working directory's
/// `weights/`, then `weights/` beside the executable, then the source checkout.
pub fn default_manifest_path() -> PathBuf {
    let mut candidates = vec![PathBuf::from("weights").join(MANIFEST_FILE)];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(exe_dir.join("weights").join(MANIFEST_FILE));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("weights")
            .join(MANIFEST_FILE),
    );
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| candidates.remove(0))
}

/// The network architecture of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// ResNet-50 with its classifier (needs `variant`).
    Resnet50,
    /// The original project's small dogs-vs-cats CNN ([`crate::models::small_cnn`]).
    SmallCnn,
    /// A trained head on the features of a frozen network (a `resnet50` or
    /// `efficientnet-lite0` model) that the manifest lists as this model's `backbone`.
    /// `resnet50-head`, its first name, still reads.
    #[serde(rename = "head", alias = "resnet50-head")]
    Head,
    /// EfficientNet-Lite0 with its classifier ([`crate::models::efficientnet_lite`]).
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
}

impl Architecture {
    /// Whether a head can sit on a model of this architecture.
    pub fn is_backbone(self) -> bool {
        matches!(self, Self::Resnet50 | Self::EfficientNetLite0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Resnet50 => "resnet50",
            Self::SmallCnn => "small-cnn",
            Self::Head => "head",
            Self::EfficientNetLite0 => "efficientnet-lite0",
        }
    }
}

/// A weights file and the hashes it must have.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsFile {
    pub path: PathBuf,
    pub sha256: String,
    /// Checked at load instead of the sha256 when stated ([`Expected`]).
    pub blake3: Option<String>,
}

impl WeightsFile {
    pub fn expected(&self) -> Expected<'_> {
        Expected::of(&self.sha256, &self.blake3)
    }
}

/// The frozen network a transfer model's head sits on: another model of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Backbone {
    pub name: String,
    /// `resnet50` or `efficientnet-lite0`.
    pub architecture: Architecture,
    pub variant: Variant,
    pub weights: PathBuf,
    pub sha256: String,
    pub blake3: Option<String>,
    /// The backbone's int8 file, if it has one.
    pub int8: Option<WeightsFile>,
}

impl Backbone {
    /// The hashes of its f32 weights.
    pub fn expected(&self) -> Expected<'_> {
        Expected::of(&self.sha256, &self.blake3)
    }
}

/// One model as the manifest describes it, with paths made absolute.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub description: String,
    pub architecture: Architecture,
    /// The ResNet variant (ResNet-50 models and heads: their backbone's).
    pub variant: Variant,
    /// For `head` models.
    pub backbone: Option<Backbone>,
    pub weights: PathBuf,
    pub sha256: String,
    /// Checked at load instead of the sha256 when stated ([`Expected`]).
    pub blake3: Option<String>,
    /// The weights `classify quantize` wrote, used at int8 instead of quantizing the f32
    /// file at load (which then need not be present: the ARM images carry only these).
    pub int8: Option<WeightsFile>,
    pub labels: PathBuf,
    pub source: String,
    pub licence: String,
    pub input: InputSpec,
    /// Test-time augmentation: the outputs for the image and its mirror image are
    /// averaged (twice the work per image).
    pub flip_average: bool,
    /// Whether the model came from the models dir rather than the built-in manifest.
    pub from_models_dir: bool,
}

impl ModelSpec {
    /// The hashes of its f32 weights.
    pub fn expected(&self) -> Expected<'_> {
        Expected::of(&self.sha256, &self.blake3)
    }

    /// The precision the model runs at when `asked` is: int8 falls back to f32 where the
    /// network doing the work (the model's, or a head's backbone) has no int8 path yet
    /// (EfficientNet-Lite0).
    pub fn runs_at(&self, asked: Precision) -> Precision {
        let network = self
            .backbone
            .as_ref()
            .map_or(self.architecture, |b| b.architecture);
        match (network, asked) {
            (Architecture::EfficientNetLite0, Precision::Int8) => Precision::F32,
            _ => asked,
        }
    }

    /// A backbone model's weights, as a head's backbone (or its own) refers to them.
    pub fn as_backbone(&self) -> Backbone {
        Backbone {
            name: self.name.clone(),
            architecture: self.architecture,
            variant: self.variant,
            weights: self.weights.clone(),
            sha256: self.sha256.clone(),
            blake3: self.blake3.clone(),
            int8: self.int8.clone(),
        }
    }
}

/// All models of one manifest, in the order it lists them (the first is the default).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    /// The precision models run at unless a command says otherwise (ARM images: int8).
    pub default_precision: Option<Precision>,
    pub models: Vec<ModelSpec>,
    /// The models dir's manifest, when one was given.
    pub models_dir: Option<PathBuf>,
    /// Why models of the models dir were refused (the built-in ones still serve).
    pub refused: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    precision: Option<Precision>,
    model: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default)]
    description: String,
    architecture: Architecture,
    variant: Option<Variant>,
    backbone: Option<String>,
    weights: PathBuf,
    sha256: String,
    blake3: Option<String>,
    int8: Option<RawWeightsFile>,
    labels: PathBuf,
    source: String,
    licence: String,
    #[serde(default)]
    flip_average: bool,
    input: RawInput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeightsFile {
    weights: PathBuf,
    sha256: String,
    blake3: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    size: u32,
    resize: ResizeMode,
    resize_shorter: Option<u32>,
    channel_order: ChannelOrder,
    pixel_range: f32,
    mean_rgb: [f32; 3],
    std_rgb: [f32; 3],
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the model manifest {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; relative paths are taken from `path`'s folder.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let (default_precision, models) = parse_models(text, path, &[])?;
        Ok(Self {
            path: path.to_path_buf(),
            default_precision,
            models,
            models_dir: None,
            refused: Vec::new(),
        })
    }

    /// Adds the models of `dir`'s manifest to these. Heads there may sit on a backbone
    /// of this manifest. Nothing there stops the built-in models: a manifest that does
    /// not parse is refused whole, a model named like a built-in one alone, and each
    /// reason is kept in [`Manifest::refused`] (and logged).
    pub fn with_models_dir(mut self, dir: &Path) -> Self {
        let path = dir.join(MANIFEST_FILE);
        self.models_dir = Some(path.clone());
        // A mounted volume that holds no models yet is not a mistake; a folder that is
        // not there is.
        if dir.is_dir() && !path.exists() {
            tracing::info!(
                "the models dir {} holds no {MANIFEST_FILE} yet",
                dir.display()
            );
            return self;
        }
        let parsed = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the models dir's manifest {}", path.display()))
            .and_then(|text| parse_models(&text, &path, &self.backbones()));
        match parsed {
            Ok((_, models)) => {
                for mut model in models {
                    if self.models.iter().any(|m| m.name == model.name) {
                        self.refused.push(format!(
                            "model {:?} of {}: a built-in model has that name",
                            model.name,
                            path.display()
                        ));
                        continue;
                    }
                    model.from_models_dir = true;
                    self.models.push(model);
                }
            }
            Err(error) => self.refused.push(format!(
                "every model of {} was refused: {error:#}",
                path.display()
            )),
        }
        for reason in &self.refused {
            tracing::warn!("{reason}");
        }
        self
    }

    /// The models a head can sit on, as heads refer to them.
    pub fn backbones(&self) -> Vec<Backbone> {
        backbones_of(&self.models)
    }

    /// The precision to run at: the command's choice, else the manifest's, else f32.
    pub fn precision(&self, chosen: Option<Precision>) -> Precision {
        chosen.or(self.default_precision).unwrap_or_default()
    }

    /// The model of that name, or an error listing the known names (and why models of
    /// the models dir were refused).
    pub fn model(&self, name: &str) -> Result<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .with_context(|| {
                let mut message = format!(
                    "unknown model {name:?}: {} lists {}",
                    self.path.display(),
                    self.names().join(", ")
                );
                if let Some(dir) = &self.models_dir {
                    message += &format!(" (with the models dir's {})", dir.display());
                }
                for reason in &self.refused {
                    message += &format!("; refused: {reason}");
                }
                message
            })
    }

    /// The default model: the first one listed.
    pub fn default_model(&self) -> &ModelSpec {
        &self.models[0]
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

/// The precision and models of one manifest's text; heads' backbones are found among
/// its own backbone models and `backbones` (another manifest's).
pub(crate) fn parse_models(
    text: &str,
    path: &Path,
    backbones: &[Backbone],
) -> Result<(Option<Precision>, Vec<ModelSpec>)> {
    let raw: RawManifest = toml::from_str(text)
        .with_context(|| format!("the model manifest {} is not valid", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut models: Vec<ModelSpec> = Vec::with_capacity(raw.model.len());
    for model in raw.model {
        let spec = model
            .into_spec(folder)
            .with_context(|| format!("in the model manifest {}", path.display()))?;
        if models.iter().any(|m| m.name == spec.name) {
            bail!(
                "the model manifest {} names the model {:?} twice",
                path.display(),
                spec.name
            );
        }
        models.push(spec);
    }
    if models.is_empty() {
        bail!("the model manifest {} lists no model", path.display());
    }
    resolve_backbones(&mut models, backbones)
        .with_context(|| format!("in the model manifest {}", path.display()))?;
    Ok((raw.precision, models))
}

/// The models of `models` a head can sit on.
fn backbones_of(models: &[ModelSpec]) -> Vec<Backbone> {
    models
        .iter()
        .filter(|m| m.architecture.is_backbone())
        .map(ModelSpec::as_backbone)
        .collect()
}

/// Points every head at its backbone's weights; the backbone must be a `resnet50` or
/// `efficientnet-lite0` of the same manifest or of `others`.
fn resolve_backbones(models: &mut [ModelSpec], others: &[Backbone]) -> Result<()> {
    let mut backbones = backbones_of(models);
    backbones.extend_from_slice(others);
    for model in models.iter_mut() {
        if let Some(backbone) = &mut model.backbone {
            let Some(found) = backbones.iter().find(|b| b.name == backbone.name) else {
                bail!(
                    "model {:?}: its backbone {:?} is not a resnet50 or efficientnet-lite0 model of this manifest",
                    model.name,
                    backbone.name
                );
            };
            *backbone = found.clone();
            model.variant = found.variant;
        }
    }
    Ok(())
}

impl RawModel {
    fn into_spec(self, folder: &Path) -> Result<ModelSpec> {
        let name = self.name;
        let context = || format!("model {name:?}");
        check_model_name(&name)?;
        check_hash("sha256", &self.sha256).with_context(context)?;
        let blake3 = check_blake3(self.blake3).with_context(context)?;
        let int8 = match (self.architecture, self.int8) {
            (Architecture::Head, Some(_)) => bail!(
                "{}: a head runs at its backbone's precision; give the backbone the int8 file",
                context()
            ),
            (_, Some(file)) => {
                let int8_context = || format!("{}: int8 weights", context());
                check_hash("sha256", &file.sha256).with_context(int8_context)?;
                Some(WeightsFile {
                    path: folder.join(file.weights),
                    sha256: file.sha256.to_ascii_lowercase(),
                    blake3: check_blake3(file.blake3).with_context(int8_context)?,
                })
            }
            (_, None) => None,
        };
        let input = self.input;
        if input.size == 0 {
            bail!("{}: input size must be positive", context());
        }
        let resize_shorter = input.resize_shorter.unwrap_or(input.size);
        if resize_shorter < input.size {
            bail!(
                "{}: resize_shorter ({resize_shorter}) is smaller than the input size ({})",
                context(),
                input.size
            );
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(input.pixel_range) || !input.std_rgb.into_iter().all(positive) {
            bail!("{}: pixel_range and std_rgb must be positive", context());
        }
        let variant = match (self.architecture, self.variant) {
            (Architecture::Resnet50, Some(variant)) => variant,
            (Architecture::Resnet50, None) => bail!("{}: a resnet50 needs a variant", context()),
            (_, None) => Variant::V1,
            (_, Some(_)) => bail!("{}: only resnet50 models take a variant", context()),
        };
        let backbone = match (self.architecture, self.backbone) {
            // Resolved against the other models once all are read.
            (Architecture::Head, Some(name)) => Some(Backbone {
                name,
                // Resolved with the rest below.
                architecture: Architecture::Resnet50,
                variant,
                weights: PathBuf::new(),
                sha256: String::new(),
                blake3: None,
                int8: None,
            }),
            (Architecture::Head, None) => {
                bail!(
                    "{}: a head needs a backbone (a resnet50 or efficientnet-lite0 model's name)",
                    context()
                )
            }
            (_, None) => None,
            (_, Some(_)) => bail!("{}: only head models take a backbone", context()),
        };
        Ok(ModelSpec {
            description: self.description,
            architecture: self.architecture,
            variant,
            backbone,
            weights: folder.join(self.weights),
            sha256: self.sha256.to_ascii_lowercase(),
            blake3,
            int8,
            labels: folder.join(self.labels),
            source: self.source,
            licence: self.licence,
            flip_average: self.flip_average,
            input: InputSpec {
                size: input.size,
                resize: input.resize,
                resize_shorter,
                channel_order: input.channel_order,
                pixel_range: input.pixel_range,
                mean_rgb: input.mean_rgb,
                std_rgb: input.std_rgb,
            },
            from_models_dir: false,
            name,
        })
    }
}

/// Model names are URL paths (`POST /NAME`) and file names: ASCII letters, digits, '-'
/// and '_'.
pub fn check_model_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("model name {name:?} must be non-empty ASCII letters, digits, '-' or '_'");
    }
    Ok(())
}

fn check_hash(algorithm: &str, hash: &str) -> Result<()> {
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{algorithm} must be 64 hexadecimal digits, got {hash:?}");
    }
    Ok(())
}

fn check_blake3(hash: Option<String>) -> Result<Option<String>> {
    hash.map(|hash| {
        check_hash("blake3", &hash)?;
        Ok(hash.to_ascii_lowercase())
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[model]]
name = "tiny"
architecture = "resnet50"
variant = "v1.5"
weights = "tiny.safetensors"
sha256 = "3ec2186643ce057332786ef91e8864dd474ee6757c9df16f4f36b69415730655"
labels = "labels.tsv"
source = "test"
licence = "MIT"
[model.input]
size = 32
resize = "squash-nearest"
channel_order = "rgb"
pixel_range = 1.0
mean_rgb = [0.485, 0.456, 0.406]
std_rgb = [0.229, 0.224, 0.225]
"#;

    #[test]
    fn parses_and_resolves_paths_against_the_manifest_folder() {
        let manifest = Manifest::parse(MINIMAL, Path::new("/models/models.toml")).unwrap();
        let spec = manifest.model("tiny").unwrap();
        assert_eq!(spec.weights, Path::new("/models/tiny.safetensors"));
        assert_eq!(spec.variant, Variant::V1_5);
        assert_eq!(spec.input.resize_shorter, 32);
        assert_eq!(manifest.default_model().name, "tiny");
    }

    #[test]
    fn a_manifest_level_precision_is_the_default_a_command_overrides() {
        let plain = Manifest::parse(MINIMAL, Path::new("m.toml")).unwrap();
        assert_eq!(plain.precision(None), Precision::F32);
        let arm = format!("precision = \"int8\"\n{MINIMAL}");
        let arm = Manifest::parse(&arm, Path::new("m.toml")).unwrap();
        assert_eq!(arm.precision(None), Precision::Int8);
        assert_eq!(arm.precision(Some(Precision::F32)), Precision::F32);
        let bad = format!("precision = \"int4\"\n{MINIMAL}");
        let err = parse_error(&bad);
        assert!(err.contains("int4"), "{err}");
    }

    #[test]
    fn an_int8_file_is_optional_and_checked() {
        let with_int8 = MINIMAL.replace(
            "[model.input]",
            "[model.int8]\nweights = \"tiny-int8.safetensors\"\nsha256 = \"AB12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12\"\n[model.input]",
        );
        let manifest = Manifest::parse(&with_int8, Path::new("/m/models.toml")).unwrap();
        let int8 = manifest.model("tiny").unwrap().int8.clone().unwrap();
        assert_eq!(int8.path, Path::new("/m/tiny-int8.safetensors"));
        assert_eq!(int8.sha256, "ab12".repeat(16));
        assert!(Manifest::parse(MINIMAL, Path::new("m.toml"))
            .unwrap()
            .models[0]
            .int8
            .is_none());
        let bad = with_int8.replace("AB12ab12", "nothex!!");
        let err = parse_error(&bad);
        assert!(
            err.contains("int8 weights") && err.contains("sha256"),
            "{err}"
        );
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let manifest = Manifest::parse(MINIMAL, Path::new("m.toml")).unwrap();
        let err = manifest.model("resnet51").unwrap_err().to_string();
        assert!(err.contains("resnet51") && err.contains("tiny"), "{err}");
    }

    #[test]
    fn rejects_bad_fields() {
        for (from, to, expect) in [
            ("variant = \"v1.5\"", "variant = \"v2\"", "variant"),
            ("sha256 = \"3ec2", "sha256 = \"zz", "sha256"),
            ("size = 32", "size = 0", "input size"),
            ("name = \"tiny\"", "name = \"../etc\"", "model name"),
            (
                "licence = \"MIT\"",
                "licence = \"MIT\"\ncolour = 1",
                "colour",
            ),
        ] {
            let err = parse_error(&MINIMAL.replace(from, to));
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }

    /// Why `text` is refused, with its causes.
    fn parse_error(text: &str) -> String {
        format!(
            "{:#}",
            Manifest::parse(text, Path::new("m.toml")).unwrap_err()
        )
    }

    #[test]
    fn heads_resolve_their_backbone_among_the_resnets() {
        // The minimal model as a head on itself.
        let head = MINIMAL
            .replace("name = \"tiny\"", "name = \"head\"")
            .replace(
                "architecture = \"resnet50\"\nvariant = \"v1.5\"",
                "architecture = \"resnet50-head\"\nbackbone = \"tiny\"",
            )
            .replace("tiny.safetensors", "head.safetensors");
        let manifest =
            Manifest::parse(&format!("{MINIMAL}{head}"), Path::new("/m/models.toml")).unwrap();
        let backbone = manifest.model("head").unwrap().backbone.clone().unwrap();
        assert_eq!(backbone.weights, Path::new("/m/tiny.safetensors"));
        assert_eq!(backbone.variant, Variant::V1_5);
        for (from, to, expect) in [
            (
                "backbone = \"tiny\"",
                "backbone = \"nope\"",
                "not a resnet50",
            ),
            ("backbone = \"tiny\"\n", "", "needs a backbone"),
            (
                "backbone = \"tiny\"",
                "variant = \"v1\"\nbackbone = \"tiny\"",
                "only resnet50",
            ),
        ] {
            let error = parse_error(&format!("{MINIMAL}{}", head.replace(from, to)));
            assert!(error.contains(expect), "{expect}: {error}");
        }
    }

    #[test]
    fn int8_falls_back_to_f32_on_efficientnet_lite0_and_the_heads_on_it() {
        let lite = MINIMAL.replace(
            "architecture = \"resnet50\"\nvariant = \"v1.5\"",
            "architecture = \"efficientnet-lite0\"",
        );
        let head = lite.replace("name = \"tiny\"", "name = \"head\"").replace(
            "architecture = \"efficientnet-lite0\"",
            "architecture = \"head\"\nbackbone = \"tiny\"",
        );
        for text in [MINIMAL.to_string(), format!("{lite}{head}")] {
            let manifest = Manifest::parse(&text, Path::new("m.toml")).unwrap();
            let resnet = manifest.model("tiny").unwrap().architecture == Architecture::Resnet50;
            for model in &manifest.models {
                let expected = if resnet {
                    Precision::Int8
                } else {
                    Precision::F32
                };
                assert_eq!(model.runs_at(Precision::Int8), expected, "{}", model.name);
                assert_eq!(model.runs_at(Precision::F32), Precision::F32);
            }
        }
    }

    #[test]
    fn the_committed_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("weights")
            .join(MANIFEST_FILE);
        let manifest = Manifest::load(&path).unwrap();
        assert_eq!(manifest.default_model().name, "resnet50");
        assert_eq!(manifest.default_model().variant, Variant::V1);
        let head = manifest.model("catsdogs").unwrap();
        assert_eq!(head.backbone.as_ref().unwrap().name, "resnet50");
        assert_eq!(manifest.model("catsdogs-cnn").unwrap().input.size, 150);
    }
}
