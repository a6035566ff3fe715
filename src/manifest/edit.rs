//! Writing manifest entries: `classify train` adds its model, or updates the one it
//! retrained, without touching the rest of the file (comments and order stay). The new
//! text must parse as a manifest before it replaces the old one, through a temporary
//! file and a rename, so a failed run never leaves half a manifest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use super::{parse_models, Architecture, Backbone};
use crate::preprocess::InputSpec;

/// A model entry as training writes it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub description: String,
    pub architecture: Architecture,
    /// The `resnet50` model a head sits on.
    pub backbone: Option<String>,
    pub weights: PathBuf,
    pub sha256: String,
    /// What loading checks (`weights::Expected`).
    pub blake3: String,
    pub labels: PathBuf,
    pub source: String,
    pub licence: String,
    pub input: InputSpec,
}

/// Whether the manifest at `path` already lists a model `name`.
pub fn lists(path: &Path, name: &str) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let document = read(path)?;
    Ok(models(&document).is_some_and(|models| find(models, name).is_some()))
}

/// Adds `entry` to the manifest at `path` (created when missing), or, when it lists a
/// model of that name and `replace` is set, points that entry at the new weights,
/// labels and source (its other settings stay, but an int8 file quantized from the old
/// weights is dropped: the answer is true then). `backbones` are the other manifest's
/// `resnet50` models, for a models dir's heads.
pub fn upsert(path: &Path, entry: &Entry, replace: bool, backbones: &[Backbone]) -> Result<bool> {
    let mut document = if path.exists() {
        read(path)?
    } else {
        DocumentMut::new()
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    let weights = relative_to(folder, &entry.weights);
    let labels = relative_to(folder, &entry.labels);
    if !document.contains_key("model") {
        document.insert("model", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let models = document["model"]
        .as_array_of_tables_mut()
        .with_context(|| {
            format!(
                "{}: `model` is not a list of [[model]] tables",
                path.display()
            )
        })?;
    let mut stale_int8 = false;
    match find(models, &entry.name) {
        Some(_) if !replace => bail!(
            "{} already lists a model {:?}: choose another name, or --force to replace it",
            path.display(),
            entry.name
        ),
        Some(index) => {
            let table = models.get_mut(index).expect("found above");
            table["weights"] = value(weights);
            table["sha256"] = value(&entry.sha256);
            table["blake3"] = value(&entry.blake3);
            table["labels"] = value(labels);
            table["source"] = value(&entry.source);
            stale_int8 = table.remove("int8").is_some();
        }
        None => models.push(new_table(entry, weights, labels)),
    }
    let text = document.to_string();
    parse_models(&text, path, backbones)
        .context("the manifest would not be valid after the change; it was left as it was")?;
    crate::files::write(path, text.as_bytes())?;
    Ok(stale_int8)
}

fn read(path: &Path) -> Result<DocumentMut> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the model manifest {}", path.display()))?;
    text.parse()
        .with_context(|| format!("the model manifest {} is not valid TOML", path.display()))
}

fn models(document: &DocumentMut) -> Option<&ArrayOfTables> {
    document.get("model")?.as_array_of_tables()
}

fn find(models: &ArrayOfTables, name: &str) -> Option<usize> {
    models
        .iter()
        .position(|table| table.get("name").and_then(Item::as_str) == Some(name))
}

fn new_table(entry: &Entry, weights: String, labels: String) -> Table {
    let mut table = Table::new();
    table["name"] = value(&entry.name);
    table["description"] = value(&entry.description);
    table["architecture"] = value(entry.architecture.name());
    if let Some(backbone) = &entry.backbone {
        table["backbone"] = value(backbone);
    }
    table["weights"] = value(weights);
    table["sha256"] = value(&entry.sha256);
    table["blake3"] = value(&entry.blake3);
    table["labels"] = value(labels);
    table["source"] = value(&entry.source);
    table["licence"] = value(&entry.licence);
    let input = &entry.input;
    let mut spec = Table::new();
    spec["size"] = value(i64::from(input.size));
    spec["resize"] = value(serde_name(&input.resize));
    spec["resize_shorter"] = value(i64::from(input.resize_shorter));
    spec["channel_order"] = value(serde_name(&input.channel_order));
    spec["pixel_range"] = value(decimal(input.pixel_range));
    let triple = |v: [f32; 3]| Array::from_iter(v.map(decimal));
    spec["mean_rgb"] = value(triple(input.mean_rgb));
    spec["std_rgb"] = value(triple(input.std_rgb));
    table["input"] = Item::Table(spec);
    table
}

/// The f64 an f32 reads as (`123.68`, not `123.68000030517578`): what a person wrote.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The name serde gives a unit variant (what the manifest spells).
fn serde_name(variant: &impl serde::Serialize) -> String {
    serde_json::to_value(variant)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("unit variants serialise as strings")
}

/// `file` as the manifest in `folder` refers to it: relative when inside the folder.
fn relative_to(folder: &Path, file: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (folder, file) = (absolute(folder), absolute(file));
    file.strip_prefix(&folder)
        .unwrap_or(&file)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::preprocess::{ChannelOrder, ResizeMode};

    fn entry(name: &str, folder: &Path) -> Entry {
        Entry {
            name: name.into(),
            description: "birds at the feeder".into(),
            architecture: Architecture::SmallCnn,
            backbone: None,
            weights: folder.join(format!("{name}.safetensors")),
            sha256: "ab".repeat(32),
            blake3: "ef".repeat(32),
            labels: folder.join(format!("{name}-labels.tsv")),
            source: "trained by a test".into(),
            licence: "MIT".into(),
            input: InputSpec {
                size: 64,
                resize: ResizeMode::SquashBilinear,
                resize_shorter: 64,
                channel_order: ChannelOrder::Rgb,
                pixel_range: 255.0,
                mean_rgb: [0.5, 0.25, 0.125],
                std_rgb: [1.0, 2.0, 4.0],
            },
        }
    }

    #[test]
    fn an_entry_round_trips_and_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        upsert(&path, &entry("birds", dir.path()), false, &[]).unwrap();
        std::fs::write(
            &path,
            format!("# our models\n{}", std::fs::read_to_string(&path).unwrap()),
        )
        .unwrap();
        upsert(&path, &entry("parts", dir.path()), false, &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# our models\n"), "{text}");
        assert!(text.contains("weights = \"birds.safetensors\""), "{text}");
        let manifest = Manifest::load(&path).unwrap();
        assert_eq!(manifest.names(), ["birds", "parts"]);
        let birds = manifest.model("birds").unwrap();
        assert_eq!(birds.input, entry("birds", dir.path()).input);
        assert_eq!(birds.weights, dir.path().join("birds.safetensors"));
        assert!(lists(&path, "parts").unwrap() && !lists(&path, "cars").unwrap());

        // A name already listed is refused, and the file is left as it was...
        let err = upsert(&path, &entry("birds", dir.path()), false, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // ...unless replacing: the entry is updated in place, and an int8 file made
        // from the old weights is no longer named.
        let int8 = "[model.int8]\nweights = \"birds-int8.safetensors\"\nsha256 = \"\
                    abababababababababababababababababababababababababababababababab\"\n";
        let with_int8 = text.replacen("[model.input]", &format!("{int8}[model.input]"), 1);
        std::fs::write(&path, &with_int8).unwrap();
        assert!(Manifest::load(&path)
            .unwrap()
            .model("birds")
            .unwrap()
            .int8
            .is_some());
        let mut retrained = entry("birds", dir.path());
        retrained.sha256 = "cd".repeat(32);
        retrained.blake3 = "12".repeat(32);
        assert!(upsert(&path, &retrained, true, &[]).unwrap());
        let manifest = Manifest::load(&path).unwrap();
        assert_eq!(manifest.names(), ["birds", "parts"]);
        assert_eq!(manifest.model("birds").unwrap().sha256, "cd".repeat(32));
        assert_eq!(
            manifest.model("birds").unwrap().blake3.as_deref(),
            Some("12".repeat(32).as_str())
        );
        assert!(manifest.model("birds").unwrap().int8.is_none());
        assert!(!upsert(&path, &retrained, true, &[]).unwrap());
    }

    #[test]
    fn a_change_that_would_break_the_manifest_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        let mut head = entry("pets", dir.path());
        head.architecture = Architecture::Head;
        head.backbone = Some("resnet50".into());
        // No resnet50 to sit on: refused, and no file appears.
        let err = upsert(&path, &head, false, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("resnet50"), "{err:#}");
        assert!(!path.exists());
        std::fs::write(&path, "model = 3\n").unwrap();
        assert!(upsert(&path, &entry("birds", dir.path()), false, &[]).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "model = 3\n");
    }
}
