//! Your own classes: `classify train` on labelled folders into a models dir, then the
//! model through `predict`, `eval` and the function (`--models-dir`), and every bad
//! input training and the models dir can meet.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::server_util::Server;
use crate::util::{catsdogs, classify, shared, stderr_of, stdout_of};

/// Photos a class folder of the small data set gets.
const PER_CLASS: usize = 6;

/// `DIR/train/{cat,dog,other}` of symbolic links to a few shared photos, plus a file that
/// is not an image.
fn small_data_set(dir: &Path) {
    let link = |from: &Path, class: &str, name: String| {
        let folder = dir.join("train").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        std::os::unix::fs::symlink(from, folder.join(name)).unwrap();
    };
    for class in ["cat", "dog"] {
        for photo in sorted_files(&catsdogs().join("train").join(class))
            .into_iter()
            .take(PER_CLASS)
        {
            let name = photo.file_name().unwrap().to_string_lossy().into_owned();
            link(&photo, class, name);
        }
    }
    // Neither: ImageNet photos well away from the animals (classes 400 and up).
    let sample = shared().join("data/imagenet-sample");
    let labels = std::fs::read_to_string(sample.join("labels.tsv")).unwrap();
    for line in labels
        .lines()
        .skip(1)
        .filter(|line| line.split('\t').nth(2).unwrap().parse::<usize>().unwrap() >= 400)
        .take(PER_CLASS)
    {
        let file = line.split('\t').next().unwrap();
        link(&sample.join(file), "other", file.to_string());
    }
    std::fs::write(dir.join("train/cat/notes.txt"), "not a photo").unwrap();
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A models dir with `trio` (cat, dog, other) trained once per test binary, and the data.
struct Trained {
    models: tempfile::TempDir,
    data: tempfile::TempDir,
    stdout: String,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let (models, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        small_data_set(data.path());
        let cache = models.path().join("cache");
        let output = classify(&[
            "--models-dir",
            models.path().to_str().unwrap(),
            "train",
            "--model",
            "trio",
            "--data",
            data.path().to_str().unwrap(),
            "--epochs",
            "40",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        Trained {
            stdout: stdout_of(&output),
            models,
            data,
        }
    })
}

/// `classify --models-dir DIR predict --model MODEL --format json [extra] PHOTO`, which
/// must succeed: its answer.
fn predict_json(dir: &str, model: &str, photo: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--models-dir",
        dir,
        "predict",
        "--model",
        model,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    args.push(photo.to_str().unwrap());
    let output = classify(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_str(stdout_of(&output).trim()).unwrap()
}

/// A usage error (exit 2) whose message says `reason`.
fn assert_refused(output: &std::process::Output, reason: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(output));
    assert!(stderr_of(output).contains(reason), "{}", stderr_of(output));
}

fn models_dir() -> &'static str {
    trained().models.path().to_str().unwrap()
}

#[test]
fn training_writes_weights_labels_record_curves_and_the_manifest_entry() {
    let trained = trained();
    let dir = trained.models.path();
    let weights = dir.join("trio.safetensors");
    let sha = edge_classify::weights::file_sha256(&weights).unwrap();
    let manifest =
        edge_classify::manifest::Manifest::load(&dir.join("models.toml").canonicalize().unwrap());
    // The models dir's heads sit on the built-in backbone: alone it does not resolve...
    assert!(manifest.is_err());
    // ...with the built-in manifest it does.
    let merged = crate::util::manifest().with_models_dir(dir);
    assert!(merged.refused.is_empty(), "{:?}", merged.refused);
    let trio = merged.model("trio").unwrap();
    assert!(trio.from_models_dir);
    assert_eq!(trio.sha256, sha);
    assert_eq!(trio.backbone.as_ref().unwrap().name, "resnet50");
    assert_eq!(
        std::fs::read_to_string(dir.join("trio-labels.tsv")).unwrap(),
        "0\tcat\tcat\n1\tdog\tdog\n2\tother\tother\n"
    );
    let record: Value = serde_json::from_str(&trained.stdout).unwrap();
    assert_eq!(record["weights_sha256"], sha.as_str());
    assert_eq!(
        record["data"]["classes"],
        serde_json::json!(["cat", "dog", "other"])
    );
    // Per class: one photo held out as test, one as val, four to train on.
    assert_eq!(record["data"]["test_images"], 3);
    assert_eq!(record["data"]["val_images"], 3);
    assert_eq!(record["data"]["train_images"], 12);
    assert_eq!(record["test"]["images"], 3);
    assert_eq!(record["test"]["recall"].as_array().unwrap().len(), 3);
    let skipped = record["data"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].as_str().unwrap().contains("notes.txt"));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("trio.json")).unwrap()).unwrap();
    assert_eq!(saved, record);
    assert_eq!(&std::fs::read(dir.join("trio.png")).unwrap()[1..4], b"PNG");
}

#[test]
fn the_trained_model_predicts_and_evaluates_like_any_other() {
    let trained = trained();
    let dog = sorted_files(&trained.data.path().join("train/dog")).remove(0);
    // A `top` beyond the classes lists them all.
    let answer = predict_json(models_dir(), "trio", &dog, &["--top", "10"]);
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    let total: f64 = predictions
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");

    let output = classify(&[
        "--models-dir",
        models_dir(),
        "eval",
        "--model",
        "trio",
        "--data",
        trained.data.path().join("train").to_str().unwrap(),
        "--format",
        "json",
    ]);
    // notes.txt cannot be classified: exit 1, the rest scored.
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let report: Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    assert_eq!(report["n"], 3 * PER_CLASS);
    assert_eq!(report["confusion"].as_array().unwrap().len(), 3);
    // Most of these photos were trained on: a sanity check, not a score.
    assert!(report["accuracy"].as_f64().unwrap() >= 0.8, "{report}");
}

/// The same classes on the other backbone: features from EfficientNet-Lite0, the head
/// listed with it, and its answers.
#[test]
fn a_head_trains_and_predicts_on_efficientnet_lite0() {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_str().unwrap();
    let data = trained().data.path().to_str().unwrap();
    let cache = models.path().join("cache");
    let output = classify(&[
        "--models-dir",
        dir,
        "train",
        "--model",
        "edge-trio",
        "--backbone",
        "efficientnet-lite0",
        "--data",
        data,
        "--epochs",
        "40",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let record: Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let manifest = crate::util::manifest().with_models_dir(models.path());
    let lite0 = manifest.model("efficientnet-lite0").unwrap();
    assert_eq!(record["backbone_sha256"], lite0.sha256.as_str());
    let head = manifest.model("edge-trio").unwrap();
    assert_eq!(head.backbone.as_ref().unwrap().name, "efficientnet-lite0");
    assert_eq!(
        head.input, lite0.input,
        "the head reads photos as its backbone does"
    );
    let text = std::fs::read_to_string(models.path().join("models.toml")).unwrap();
    assert!(text.contains("architecture = \"head\""), "{text}");
    let dog = sorted_files(&trained().data.path().join("train/dog")).remove(0);
    let answer = predict_json(dir, "edge-trio", &dog, &[]);
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 3);
    // No int8 path for this backbone yet: refused, not silently f32.
    let output = classify(&[
        "--models-dir",
        dir,
        "train",
        "--model",
        "edge-trio",
        "--force",
        "--precision",
        "int8",
        "--data",
        data,
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_refused(&output, "no int8 path");
    // Retraining keeps the backbone: asking for another is refused.
    let output = classify(&[
        "--models-dir",
        dir,
        "train",
        "--model",
        "edge-trio",
        "--force",
        "--backbone",
        "resnet50",
        "--data",
        data,
    ]);
    assert_refused(&output, "efficientnet-lite0");
}

#[test]
fn the_function_serves_the_models_dir_beside_the_built_in_models() {
    let server = Server::ready(
        &["--models-dir", models_dir(), "--models", "catsdogs,trio"],
        &[],
    );
    let listing = server.get("/_/models").json();
    let names: Vec<&str> = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["catsdogs", "trio"]);
    let trio = &listing["models"][1];
    assert_eq!(trio["classes"], 3);
    assert_eq!(trio["from_models_dir"], true);
    assert_eq!(trio["labels"], serde_json::json!(["cat", "dog", "other"]));
    assert_eq!(trio["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(listing["models"][0]["default"], true);
    let dog = sorted_files(&trained().data.path().join("train/dog")).remove(0);
    let answer = server.post("/trio?top=20", &std::fs::read(dog).unwrap());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["predictions"].as_array().unwrap().len(), 3);
    assert_eq!(server.post("/_/models", b"").status, 405);
}

#[test]
fn a_broken_models_dir_leaves_the_built_in_models_serving() {
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("models.toml"), "[[model]]\nname = 3\n").unwrap();
    let dir = broken.path().to_str().unwrap();
    let server = Server::ready(&["--models-dir", dir, "--models", "catsdogs"], &[]);
    let listing = server.get("/_/models").json();
    assert_eq!(listing["models"].as_array().unwrap().len(), 1);
    let refused = listing["refused"][0].as_str().unwrap();
    assert!(refused.contains("models.toml"), "{refused}");
    assert!(
        server.log().iter().any(|l| l.contains("refused")),
        "{:?}",
        server.log()
    );
    drop(server);

    // `predict` names the problem.
    let output = classify(&["--models-dir", dir, "predict", "--model", "trio", "x.jpg"]);
    assert_refused(&output, "refused");

    // A models dir whose model's weights are missing: that model alone is left out.
    let missing = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(trained().models.path().join("models.toml")).unwrap();
    std::fs::write(missing.path().join("models.toml"), text).unwrap();
    let dir = missing.path().to_str().unwrap();
    let server = Server::ready(&["--models-dir", dir, "--models", "catsdogs,trio"], &[]);
    let listing = server.get("/_/models").json();
    assert_eq!(listing["models"].as_array().unwrap().len(), 1);
    assert!(
        listing["refused"][0].as_str().unwrap().contains("trio"),
        "{listing}"
    );
    assert_eq!(server.post("/trio", b"x").status, 404);
}

#[test]
fn names_already_taken_are_refused_unless_forced() {
    let data = trained().data.path().to_str().unwrap();
    let train = |models: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "--models-dir",
            models,
            "train",
            "--model",
            name,
            "--data",
            data,
            "--epochs",
            "2",
        ];
        args.extend_from_slice(extra);
        classify(&args)
    };
    // A built-in model's name cannot be taken by the models dir, even with --force.
    let output = train(models_dir(), "catsdogs", &["--force"]);
    assert_refused(&output, "built-in");
    // A copy of the trained models dir: retraining `trio` needs --force.
    let copy = tempfile::tempdir().unwrap();
    for file in ["models.toml", "trio.safetensors", "trio-labels.tsv"] {
        std::fs::copy(trained().models.path().join(file), copy.path().join(file)).unwrap();
    }
    let models = copy.path().to_str().unwrap();
    let before = std::fs::read_to_string(copy.path().join("models.toml")).unwrap();
    let output = train(models, "trio", &[]);
    assert_refused(&output, "--force");
    assert_eq!(
        std::fs::read_to_string(copy.path().join("models.toml")).unwrap(),
        before
    );
    let cache = copy.path().join("cache");
    let output = train(
        models,
        "trio",
        &[
            "--force",
            "--seed",
            "7",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    let after = crate::util::manifest().with_models_dir(copy.path());
    let trio = after.model("trio").unwrap();
    assert_eq!(
        trio.sha256,
        edge_classify::weights::file_sha256(&copy.path().join("trio.safetensors")).unwrap()
    );
    assert_eq!(after.names().iter().filter(|n| **n == "trio").count(), 1);
}

#[test]
fn bad_class_folders_are_refused_with_a_reason() {
    type MakeData<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, MakeData, &str); 4] = [
        ("one class", &|d| small_class(d, "cat"), "at least two"),
        (
            "an empty class",
            &|d| {
                small_class(d, "cat");
                small_class(d, "dog");
                std::fs::create_dir_all(d.join("train/bird")).unwrap();
            },
            "holds no images",
        ),
        (
            "only files that are not images",
            &|d| {
                small_class(d, "cat");
                std::fs::create_dir_all(d.join("train/dog")).unwrap();
                std::fs::write(d.join("train/dog/a.jpg"), b"\xff\xd8 truncated").unwrap();
            },
            "holds no images",
        ),
        (
            "a tab in a class name",
            &|d| {
                small_class(d, "cat");
                small_class(d, "dog\tpuppy");
            },
            "cannot be a label",
        ),
    ];
    for (what, make, expect) in cases {
        let (data, models) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make(data.path());
        let output = classify(&[
            "--models-dir",
            models.path().to_str().unwrap(),
            "train",
            "--model",
            "bad",
            "--data",
            data.path().to_str().unwrap(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{what}: {}",
            stderr_of(&output)
        );
        assert!(
            stderr_of(&output).contains(expect),
            "{what}: {}",
            stderr_of(&output)
        );
        assert!(!models.path().join("models.toml").exists(), "{what}");
    }
    let output = classify(&["train", "--model", "no/slash", "--data", "."]);
    assert_refused(&output, "model name");
}

/// `dir/train/<class>/` with two cat photos.
fn small_class(dir: &Path, class: &str) {
    let folder = dir.join("train").join(class);
    std::fs::create_dir_all(&folder).unwrap();
    for photo in sorted_files(&catsdogs().join("train/cat"))
        .into_iter()
        .take(2)
    {
        std::os::unix::fs::symlink(&photo, folder.join(photo.file_name().unwrap())).unwrap();
    }
}
