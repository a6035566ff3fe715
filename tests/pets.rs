//! The shipped `pets` model (cat, dog, other) on its own held-out test split, rebuilt
//! the way `weights/make-pets.sh` builds it: the same photos (checked by their hash
//! against the record), scored as serving scores them.

use edge_classify::classifier::Classifier;
use edge_classify::train::data::Sample;
use serde_json::Value;

use crate::util::{manifest, prepared, recorded_test_split, root, shared};

/// Every how many cat and dog photos of the test split is scored (all `other` photos
/// are: the small class is the one in question).
const CAT_AND_DOG_STRIDE: usize = 6;

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
        let inputs = prepared(chunk.iter().map(|s| s.path.as_path()), &spec.input);
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
