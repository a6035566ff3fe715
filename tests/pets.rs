//! The shipped `pets` model (cat, dog, other) on its own held-out test split, rebuilt
//! the way `weights/make-pets.sh` builds it: the same photos (checked by their hash
//! against the record), scored as serving scores them.

use std::path::Path;

use edge_classify::classifier::Classifier;
use edge_classify::labels::Labels;
use edge_classify::preprocess;
use edge_classify::train::data::Sample;
use serde_json::Value;

use crate::util::{manifest, root, shared};

/// Every how many cat and dog photos of the test split is scored (all `other` photos
/// are: the small class is the one in question).
const CAT_AND_DOG_STRIDE: usize = 6;

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

#[test]
fn pets_meets_its_goals_on_its_held_out_photos() {
    let data = tempfile::tempdir().unwrap();
    let assembled = std::process::Command::new("sh")
        .arg(root().join("weights/make-pets.sh"))
        .arg(shared())
        .arg("--assemble-only")
        .env("PETS_DATA", data.path())
        .status()
        .unwrap();
    assert!(assembled.success());
    let record: Value =
        serde_json::from_slice(&std::fs::read(root().join("weights/pets.json")).unwrap()).unwrap();
    let manifest = manifest();
    let spec = manifest.model("pets").unwrap();
    let pets = Classifier::load(spec).unwrap();
    let test = recorded_test_split(data.path(), &record, pets.labels());
    let other = pets.labels().len() - 1;
    let mut seen = [0usize; 3];
    let scored: Vec<&Sample> = test
        .iter()
        .filter(|sample| {
            seen[sample.class] += 1;
            sample.class == other || seen[sample.class] % CAT_AND_DOG_STRIDE == 1
        })
        .collect();
    let (mut right, mut total) = ([0usize; 3], [0usize; 3]);
    let mut closest_call = 1f32;
    for chunk in scored.chunks(16) {
        let inputs: Vec<_> = chunk
            .iter()
            .map(|sample| {
                let bytes = std::fs::read(&sample.path).unwrap();
                preprocess::prepare(&bytes, &spec.input, None, preprocess::DEFAULT_MAX_PIXELS)
                    .unwrap()
            })
            .collect();
        for (sample, row) in chunk.iter().zip(pets.probability_rows(&inputs).unwrap()) {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            total[sample.class] += 1;
            right[sample.class] += usize::from(best == sample.class);
            let runner_up = (0..row.len())
                .filter(|&c| c != best)
                .map(|c| row[c])
                .fold(0f32, f32::max);
            closest_call = closest_call.min(row[best] - runner_up);
        }
    }
    let recall: Vec<f64> = (0..3).map(|c| right[c] as f64 / total[c] as f64).collect();
    let accuracy = right.iter().sum::<usize>() as f64 / total.iter().sum::<usize>() as f64;
    println!(
        "pets on {total:?} held-out photos (cat, dog, other): right {right:?}, recall \
         {recall:.4?}, closest call {closest_call:.4}"
    );
    assert!(accuracy >= 0.97, "accuracy {accuracy:.4}");
    for (class, recall) in recall.iter().enumerate() {
        assert!(*recall >= 0.95, "class {class}: recall {recall:.4}");
    }
    // All `other` photos were scored: the record's figure exactly.
    let recorded = record["test"]["recall"][other].as_f64().unwrap();
    assert!(
        (recall[other] - recorded).abs() < 1e-9,
        "{recorded} recorded"
    );
}
