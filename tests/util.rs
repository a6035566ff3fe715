//! Helpers shared by the integration tests: where the shared data lives, the committed
//! model loaded once per test binary, and running the `classify` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use edge_classify::classifier::Classifier;
use edge_classify::manifest::Manifest;
use edge_classify::plan::Precision;

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
pub fn manifest_with_weights(dir: &Path, weights: &Path, sha256: &str) -> PathBuf {
    let committed = std::fs::read_to_string(root().join("weights/models.toml")).unwrap();
    // Every file the manifest names, by an absolute path (the committed one but for the
    // ResNet-50 weights).
    let absolute = |file: &str| match file {
        "resnet50.safetensors" => weights.to_path_buf(),
        other => root().join("weights").join(other),
    };
    let text: String = committed
        .lines()
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
