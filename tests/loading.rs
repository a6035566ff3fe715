//! Loading errors: each bad weights or label file gives a clear message naming the file
//! and the problem, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use edge_classify::classifier::Classifier;
use edge_classify::manifest::Manifest;
use sha2::{Digest, Sha256};

use crate::util::{manifest_with_weights, root, COMMITTED_SHA256};

/// A manifest in a temporary folder whose resnet50 entry points at `weights` with `sha256`.
fn manifest_for(dir: &Path, weights: &Path, sha256: &str) -> Manifest {
    Manifest::load(&manifest_with_weights(dir, weights, sha256)).unwrap()
}

fn load_error(manifest: &Manifest) -> String {
    let error = Classifier::load(manifest.model("resnet50").unwrap()).unwrap_err();
    format!("{error:#}")
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn committed_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join("weights/resnet50.safetensors"), &Device::Cpu)
        .unwrap()
}

/// Saves `tensors` and returns a manifest with the right hash for them.
fn manifest_with(dir: &Path, tensors: &HashMap<String, Tensor>) -> (Manifest, PathBuf) {
    let path = dir.join("edited.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    (manifest_for(dir, &path, &sha256_of(&path)), path)
}

#[test]
fn missing_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.safetensors");
    let message = load_error(&manifest_for(dir.path(), &missing, &"0".repeat(64)));
    assert!(
        message.contains("nowhere.safetensors") && message.contains("cannot read"),
        "{message}"
    );
    assert!(message.contains("resnet50"), "{message}");
}

#[test]
fn wrong_hash() {
    let dir = tempfile::tempdir().unwrap();
    let weights = root().join("weights/resnet50.safetensors");
    let message = load_error(&manifest_for(dir.path(), &weights, &"ab".repeat(32)));
    assert!(
        message.contains("sha256") && message.contains("resnet50.safetensors"),
        "{message}"
    );
    assert!(message.contains(&"ab".repeat(32)), "{message}");
}

/// Every weights file the committed manifest names has both hashes it states: the BLAKE3
/// that loading checks and the sha256 it publishes (which loading then never reads).
#[test]
fn committed_files_have_the_sha256_and_blake3_stated() {
    let manifest = crate::util::manifest();
    let mut files = Vec::new();
    for spec in &manifest.models {
        files.push((
            spec.weights.clone(),
            spec.sha256.clone(),
            spec.blake3.clone(),
        ));
        if let Some(int8) = &spec.int8 {
            files.push((int8.path.clone(), int8.sha256.clone(), int8.blake3.clone()));
        }
    }
    for (path, sha256, blake3) in files {
        let stated = edge_classify::weights::Digests {
            sha256,
            blake3: blake3.unwrap_or_else(|| panic!("{} has no blake3", path.display())),
        };
        assert_eq!(
            edge_classify::weights::file_digests(&path).unwrap(),
            stated,
            "{}",
            path.display()
        );
    }
}

#[test]
fn truncated_file_with_a_matching_hash_is_not_a_valid_container() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(root().join("weights/resnet50.safetensors")).unwrap();
    let path = dir.path().join("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let message = load_error(&manifest_for(dir.path(), &path, &sha256_of(&path)));
    assert!(
        message.contains("truncated.safetensors") && message.contains("not a valid safetensors"),
        "{message}"
    );
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = committed_tensors();
    tensors.remove("layer3.2.bn2.running_var").unwrap();
    let (manifest, _) = manifest_with(dir.path(), &tensors);
    let message = load_error(&manifest);
    assert!(
        message.contains("no tensor layer3.2.bn2.running_var"),
        "{message}"
    );
    assert!(message.contains("edited.safetensors"), "{message}");
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = committed_tensors();
    tensors.insert(
        "layer1.0.conv2.weight".into(),
        Tensor::zeros((64, 64, 1, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let (manifest, _) = manifest_with(dir.path(), &tensors);
    let message = load_error(&manifest);
    assert!(
        message.contains("layer1.0.conv2.weight") && message.contains("[64, 64, 1, 3]"),
        "{message}"
    );
    assert!(message.contains("[64, 64, 3, 3]"), "{message}");
}

#[test]
fn extra_tensors_mean_another_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = committed_tensors();
    let block = tensors["layer3.5.conv1.weight"].clone();
    tensors.insert("layer3.6.conv1.weight".into(), block);
    let zeros = Tensor::zeros(1, candle_core::DType::I64, &Device::Cpu).unwrap();
    tensors.insert("bn1.num_batches_tracked".into(), zeros);
    let (manifest, _) = manifest_with(dir.path(), &tensors);
    let message = load_error(&manifest);
    assert!(
        message.contains("layer3.6.conv1.weight") && !message.contains("num_batches_tracked"),
        "{message}"
    );
}

#[test]
fn label_count_must_match_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let weights = root().join("weights/resnet50.safetensors");
    let manifest = manifest_for(dir.path(), &weights, COMMITTED_SHA256);
    let mut spec = manifest.model("resnet50").unwrap().clone();
    let labels = dir.path().join("labels.tsv");
    std::fs::write(&labels, "0\tn1\tone\n1\tn2\ttwo\n").unwrap();
    spec.labels = labels;
    let message = format!("{:#}", Classifier::load(&spec).unwrap_err());
    assert!(
        message.contains("fc.weight") && message.contains("[2, 2048]"),
        "{message}"
    );
}
