//! Helpers shared by the integration tests: where the shared data lives, the committed
//! model loaded once per test binary, running the `classify` binary, and a trained
//! model's held-out test split rebuilt from its record.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use edge_classify::classifier::Classifier;
use edge_classify::labels::Labels;
use edge_classify::manifest::Manifest;
use edge_classify::plan::Precision;
use edge_classify::train::data::Sample;
use serde_json::Value;

/// The project's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout (or `EDGE_SHARED`): photos, golden vectors, data sets.
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("EDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("..").join("shared"));
    assert!(
        dir.join("README.md").is_file(),
        "the shared data folder {} is missing: tests need ../shared beside the checkout (or EDGE_SHARED)",
        dir.display()
    );
    dir
}

pub fn manifest() -> Manifest {
    Manifest::load(&root().join("weights").join("models.toml"))
        .expect("the committed manifest loads")
}

/// Writes `dir/models.toml`: the committed manifest with the resnet50 weights at
/// `weights` (promising `sha256`) and every other file the committed one; returns its path.
/// A `sha256` other than the committed file's is the only hash stated for them (their
/// BLAKE3, which loading would check instead, is left out).
pub fn manifest_with_weights(dir: &Path, weights: &Path, sha256: &str) -> PathBuf {
    let committed = std::fs::read_to_string(root().join("weights/models.toml")).unwrap();
    // Every file the manifest names, by an absolute path (the committed one but for the
    // ResNet-50 weights).
    let absolute = |file: &str| match file {
        "resnet50.safetensors" => weights.to_path_buf(),
        other => root().join("weights").join(other),
    };
    let committed_blake3 = format!("blake3 = \"{COMMITTED_BLAKE3}\"");
    let text: String = committed
        .lines()
        .filter(|line| sha256 == COMMITTED_SHA256 || *line != committed_blake3)
        .map(|line| {
            let file = ["weights = \"", "labels = \""]
                .iter()
                .find_map(|key| line.strip_prefix(key)?.strip_suffix('"'));
            match file {
                Some(file) => line.replace(
                    &format!("{file:?}"),
                    &format!("{:?}", absolute(file).to_str().unwrap()),
                ),
                None => line.replace(COMMITTED_SHA256, sha256),
            }
        })
        .map(|line| line + "\n")
        .collect();
    let path = dir.join("models.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// sha256 of the committed ResNet-50 weights.
pub const COMMITTED_SHA256: &str =
    "3ec2186643ce057332786ef91e8864dd474ee6757c9df16f4f36b69415730655";
/// Its BLAKE3 (what loading checks).
pub const COMMITTED_BLAKE3: &str =
    "225348b072ffb0ceb5f795f4f9ce2c78f0c9726b168ea4e1cf176d2b855e85f7";

/// The committed ResNet-50, loaded once for all tests of this binary.
pub fn resnet50() -> &'static Classifier {
    static MODEL: OnceLock<Classifier> = OnceLock::new();
    MODEL.get_or_init(|| {
        let manifest = manifest();
        Classifier::load(manifest.model("resnet50").unwrap())
            .expect("the committed ResNet-50 loads")
    })
}

/// The committed ResNet-50 at int8 (its int8 file), once for all tests.
pub fn resnet50_int8() -> &'static Classifier {
    static MODEL: OnceLock<Classifier> = OnceLock::new();
    MODEL.get_or_init(|| {
        let manifest = manifest();
        Classifier::load_with(manifest.model("resnet50").unwrap(), Precision::Int8)
            .expect("the committed ResNet-50 loads as int8")
    })
}

/// Runs the `classify` binary with these arguments.
pub fn classify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_classify"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the classify binary runs")
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The Dogs vs. Cats photos (`train/` and `val/`, each with `cat/` and `dog/`).
pub fn catsdogs() -> PathBuf {
    shared().join("data").join("catsdogs")
}

/// The held-out test split of the data set in `data`, as `classify train` holds it
/// out with the record's settings, checked against the record's hash of its photos.
pub fn recorded_test_split(data: &Path, record: &Value, labels: &Labels) -> Vec<Sample> {
    let command = record["command"].as_str().unwrap();
    let fraction = |flag: &str, default: f64| {
        command.split_once(flag).map_or(default, |(_, rest)| {
            rest.split_whitespace().next().unwrap().parse().unwrap()
        })
    };
    let options = edge_classify::train::TrainOptions {
        data: data.to_path_buf(),
        val_fraction: fraction("--val-fraction ", 0.15),
        test_fraction: fraction("--test-fraction ", 0.1),
        out: data.join("unused.safetensors"),
        epochs: 1,
        batch_size: 1,
        learning_rate: 1e-3,
        seed: record["seed"].as_u64().unwrap(),
        patience: 1,
        weight_average: 0.0,
        dropout: 0.5,
        resume: false,
        limit_per_class: None,
        cache_dir: data.join("unused-cache"),
    };
    let splits = edge_classify::train::load_splits(&options, labels).unwrap();
    let hashed = edge_classify::train::record::DataRecord::of(data, &splits, labels).unwrap();
    assert_eq!(
        hashed.test_sha256, record["data"]["test_sha256"],
        "the rebuilt test split holds the photos the record names"
    );
    splits.test
}

/// Photos decoded and preprocessed as serving prepares them for a model with `input`.
pub fn prepared<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
    input: &edge_classify::preprocess::InputSpec,
) -> Vec<candle_core::Tensor> {
    use edge_classify::preprocess;
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            preprocess::prepare(&bytes, input, None, preprocess::DEFAULT_MAX_PIXELS)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// The golden vectors of `../shared/weights/<file>`: each photo's preprocessed input and
/// the reference forward's logits, by photo name.
pub fn golden_vectors(file: &str) -> Vec<(String, candle_core::Tensor, candle_core::Tensor)> {
    let path = shared().join("weights").join(file);
    let mut golden = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut photos: Vec<String> = golden
        .keys()
        .filter_map(|k| k.strip_suffix(".input"))
        .map(String::from)
        .collect();
    photos.sort_unstable();
    assert!(photos.len() >= 3, "golden vectors for {photos:?}");
    photos
        .into_iter()
        .map(|photo| {
            let input = golden.remove(&format!("{photo}.input")).unwrap();
            let logits = golden.remove(&format!("{photo}.logits")).unwrap();
            (photo, input, logits)
        })
        .collect()
}

pub fn max_abs_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}
