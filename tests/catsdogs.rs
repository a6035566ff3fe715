//! Dogs vs. cats: the committed models' accuracy on the validation photos, and
//! `classify train` / `classify eval` as a user runs them (smoke-sized training).

use std::path::Path;

use edge_classify::classifier::Classifier;
use edge_classify::plan::Precision;
use serde_json::Value;

use crate::util::{catsdogs, classify, prepared, stderr_of, stdout_of};

fn eval_json(model: &str, data: &Path) -> Value {
    let output = classify(&[
        "eval",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_str(&stdout_of(&output)).unwrap()
}

fn check_report(report: &Value, model: &str, at_least: f64) {
    assert_eq!(report["model"], model);
    assert_eq!(report["n"], 796, "every validation photo is scored");
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= at_least,
        "{model}: accuracy {accuracy} < {at_least}"
    );
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 2);
    assert_eq!(confusion[0].len(), 2, "binary: no 'other' column");
    assert_eq!(confusion[0][0] + confusion[0][1], 397, "cats");
    assert_eq!(confusion[1][0] + confusion[1][1], 399, "dogs");
    let diagonal = (confusion[0][0] + confusion[1][1]) as f64 / 796.0;
    assert!((diagonal - accuracy).abs() < 1e-9);
    for class in ["cat", "dog"] {
        let recall = report["per_class"][class]["recall"].as_f64().unwrap();
        assert!(recall > at_least - 0.1, "{model} {class}: recall {recall}");
    }
    assert!(report["images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_transfer_head_scores_at_least_097_on_val() {
    let report = eval_json("catsdogs", &catsdogs().join("val"));
    check_report(&report, "catsdogs", 0.97);
}

/// The committed CNN reproduces the validation accuracy its training record states, and
/// reaches our 0.85 goal (the original notebook: 78.5 %).
#[test]
fn the_small_cnn_reproduces_its_recorded_accuracy() {
    let report = eval_json("catsdogs-cnn", &catsdogs().join("val"));
    check_report(&report, "catsdogs-cnn", 0.85);
    let record: Value = serde_json::from_slice(
        &std::fs::read(crate::util::root().join("weights/catsdogs-cnn.json")).unwrap(),
    )
    .unwrap();
    let recorded = record["val_accuracy"].as_f64().unwrap();
    let measured = report["accuracy"].as_f64().unwrap();
    assert!(
        (measured - recorded).abs() <= 1.0 / 796.0,
        "{measured} vs {recorded}"
    );
}

/// Both dogs-vs-cats models at int8 (the CNN's own kernels, the head's backbone) agree
/// with f32 on the class of at least 99 % of the validation photos and stay within half a
/// point of its accuracy, as the ResNet-50 must on the ImageNet sample.
#[test]
fn int8_models_agree_with_f32_on_val() {
    let manifest = crate::util::manifest();
    let mut photos = Vec::new();
    for (class, name) in ["cat", "dog"].into_iter().enumerate() {
        for entry in std::fs::read_dir(catsdogs().join("val").join(name)).unwrap() {
            photos.push((entry.unwrap().path(), class));
        }
    }
    assert_eq!(photos.len(), 796);
    for model in ["catsdogs-cnn", "catsdogs"] {
        let spec = manifest.model(model).unwrap();
        let exact = Classifier::load_with(spec, Precision::F32).unwrap();
        let int8 = Classifier::load_with(spec, Precision::Int8).unwrap();
        let (mut correct, mut correct_int8, mut agree) = (0usize, 0usize, 0usize);
        for chunk in photos.chunks(16) {
            let inputs = prepared(chunk.iter().map(|(path, _)| path.as_path()), &spec.input);
            let rows = exact.probability_rows(&inputs).unwrap();
            let rows_int8 = int8.probability_rows(&inputs).unwrap();
            for (((_, truth), row), row_int8) in chunk.iter().zip(&rows).zip(&rows_int8) {
                let (class, class_int8) =
                    (usize::from(row[1] > 0.5), usize::from(row_int8[1] > 0.5));
                correct += usize::from(class == *truth);
                correct_int8 += usize::from(class_int8 == *truth);
                agree += usize::from(class == class_int8);
            }
        }
        let share = |count: usize| count as f64 / photos.len() as f64;
        let (accuracy, accuracy_int8, agreement) =
            (share(correct), share(correct_int8), share(agree));
        println!("{model}: f32 {accuracy:.4}, int8 {accuracy_int8:.4}, agreement {agreement:.4}");
        assert!(
            agreement >= 0.99,
            "{model}: int8 agrees with f32 on {agreement:.4}"
        );
        assert!(
            accuracy_int8 >= accuracy - 0.005,
            "{model}: int8 {accuracy_int8:.4} vs f32 {accuracy:.4}"
        );
    }
}

#[test]
fn predict_names_cats_and_dogs() {
    let first = |class: &str| {
        let mut files: Vec<_> = std::fs::read_dir(catsdogs().join("val").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.remove(0)
    };
    for model in ["catsdogs", "catsdogs-cnn"] {
        let (cat, dog) = (first("cat"), first("dog"));
        let output = classify(&[
            "predict",
            "--model",
            model,
            "--format",
            "json",
            cat.to_str().unwrap(),
            dog.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        let answers: Vec<Value> = stdout_of(&output)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        for answer in &answers {
            let predictions = answer["predictions"].as_array().unwrap();
            assert_eq!(predictions.len(), 2, "two classes: top-5 is both");
            let total: f64 = predictions
                .iter()
                .map(|p| p["score"].as_f64().unwrap())
                .sum();
            assert!((total - 1.0).abs() < 1e-4);
        }
        let labels: Vec<&str> = answers
            .iter()
            .map(|a| a["predictions"][0]["label"].as_str().unwrap())
            .collect();
        assert!(
            labels.iter().all(|l| ["cat", "dog"].contains(l)),
            "{labels:?}"
        );
        // The head (0.985 on val) names both; the CNN (0.88) may miss one of two photos.
        if model == "catsdogs" {
            assert_eq!(labels, ["cat", "dog"], "{model}");
        }
    }
}

/// One epoch on a few dozen photos: weights, record, plot and checkpoint appear; the
/// checkpoint resumes into a second epoch; a resume with another seed is refused.
#[test]
fn a_smoke_train_of_the_cnn_records_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn.safetensors");
    let data = catsdogs();
    let train = |epochs: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            "catsdogs-cnn",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit-per-class",
            "12",
            "--epochs",
            epochs,
        ];
        args.extend_from_slice(extra);
        classify(&args)
    };
    let output = train("1", &[]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let record: Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(record["epochs_run"], 1);
    assert_eq!(record["data"]["train_images"], 24);
    assert_eq!(record["data"]["val_images"], 24);
    assert_eq!(record["seed"], 42);
    let sha = edge_classify::weights::file_sha256(&out).unwrap();
    assert_eq!(record["weights_sha256"], sha.as_str());
    assert_eq!(record["data"]["train_sha256"].as_str().unwrap().len(), 64);
    let png = std::fs::read(out.with_extension("png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(out.with_extension("checkpoint.safetensors").is_file());

    let output = train("2", &["--resume"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let record: Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(record["epochs_run"], 2);
    assert_eq!(record["history"].as_array().unwrap().len(), 2);
    assert_eq!(record["history"][0]["epoch"], 1);

    let output = train("3", &["--resume", "--seed", "7"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("another seed"),
        "{}",
        stderr_of(&output)
    );
}

/// The head's features are extracted once; the second run reads them from the cache.
#[test]
fn the_head_caches_its_features() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("head.safetensors");
    let cache = dir.path().join("cache");
    let data = catsdogs();
    let train = || {
        classify(&[
            "train",
            "--model",
            "catsdogs",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit-per-class",
            "5",
            "--epochs",
            "30",
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
    };
    let first = train();
    assert!(first.status.success(), "{}", stderr_of(&first));
    let record: Value = serde_json::from_str(&stdout_of(&first)).unwrap();
    assert!(record["feature_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    let second = train();
    assert!(second.status.success(), "{}", stderr_of(&second));
    let again: Value = serde_json::from_str(&stdout_of(&second)).unwrap();
    assert_eq!(again["feature_seconds"], 0.0, "read from the cache");
    assert_eq!(
        again["weights_sha256"], record["weights_sha256"],
        "same seed, same head"
    );
}

#[test]
fn bad_training_and_evaluation_requests_are_refused() {
    let data = catsdogs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("zebra")).unwrap();
    std::fs::write(dir.path().join("zebra/z.jpg"), b"not a photo").unwrap();
    let out = dir.path().join("x.safetensors");
    for (args, expect) in [
        (
            vec![
                "train",
                "--model",
                "resnet50",
                "--data",
                data.to_str().unwrap(),
            ],
            "pretrained",
        ),
        (
            vec![
                "train",
                "--model",
                "catsdogs-cnn",
                "--data",
                dir.path().to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            "no folder for the class",
        ),
        (
            vec![
                "eval",
                "--model",
                "catsdogs",
                "--data",
                dir.path().to_str().unwrap(),
            ],
            "names no class",
        ),
        (
            vec![
                "train",
                "--model",
                "catsdogs-cnn",
                "--data",
                data.to_str().unwrap(),
                "--epochs",
                "0",
            ],
            "must be positive",
        ),
    ] {
        let output = classify(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr_of(&output).contains(expect),
            "{args:?}: {}",
            stderr_of(&output)
        );
    }
}
