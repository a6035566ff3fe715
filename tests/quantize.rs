//! `classify quantize` and the int8 files it writes: reproducible, the same model as
//! quantizing at load, checked against the f32 weights they came from, and enough on
//! their own (the ARM images carry only them).

use std::path::Path;

use candle_core::Tensor;
use edge_classify::classifier::Classifier;
use edge_classify::plan::Precision;
use edge_classify::preprocess;

use crate::util::{classify, manifest, root, shared, stderr_of, stdout_of};

#[test]
fn quantize_reproduces_the_committed_int8_files() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest();
    for model in ["resnet50", "catsdogs-cnn"] {
        let committed = manifest.model(model).unwrap().int8.clone().unwrap();
        let out = dir.path().join(format!("{model}.safetensors"));
        let output = classify(&["quantize", "--model", model, "--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        assert!(
            stdout_of(&output).contains(&format!("sha256 = \"{}\"", committed.sha256)),
            "{model}: the printed manifest lines name the committed hash:\n{}",
            stdout_of(&output)
        );
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&committed.path).unwrap(),
            "{model}: the committed int8 file is not what `classify quantize` writes now"
        );
        let f32_size = std::fs::metadata(&manifest.model(model).unwrap().weights)
            .unwrap()
            .len();
        let int8_size = std::fs::metadata(&out).unwrap().len();
        assert!(int8_size * 10 < f32_size * 3, "{model}: {int8_size} bytes");
    }
    let out = dir.path().join("head.safetensors");
    let output = classify(&[
        "quantize",
        "--model",
        "catsdogs",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("quantize the backbone"),
        "{}",
        stderr_of(&output)
    );
    assert!(!out.exists());
}

/// `--calibrate DIR` measures the int8 model against f32 on the photos before writing
/// it: the agreement goes into the file's metadata, and a file below `--min-agreement`
/// is not written. Files that are not photos are skipped, not fatal.
#[test]
fn quantize_checks_the_int8_model_on_photos_before_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let val = shared().join("data/catsdogs/val");
    for class in ["cat", "dog"] {
        let mut files: Vec<_> = std::fs::read_dir(val.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir(photos.join(class)).unwrap();
        for file in &files {
            std::fs::copy(file, photos.join(class).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(photos.join("notes.txt"), "not a photo").unwrap();
    let out = dir.path().join("cnn.safetensors");
    let out_arg = out.to_str().unwrap();
    let photos_arg = photos.to_str().unwrap();
    let quantize = ["quantize", "--model", "catsdogs-cnn", "--out", out_arg];
    let output = classify(&[&quantize[..], &["--calibrate", photos_arg]].concat());
    assert!(output.status.success(), "{}", stderr_of(&output));
    let report = stdout_of(&output);
    assert!(report.contains(" of 796 photos"), "{report}");
    assert!(report.contains("1 files skipped"), "{report}");
    assert!(report.contains("notes.txt"), "{report}");
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    assert_eq!(metadata["checked_on_photos"], "796");
    let agreement: f64 = metadata["top1_agreement_with_f32"].parse().unwrap();
    assert!(agreement >= 0.99, "{agreement}");

    // The committed CNN's int8 and f32 answers differ on a few of these photos
    // (agreement 0.9950 when this was written): a bar of 1 refuses the file.
    assert!(agreement < 1.0, "{agreement}");
    std::fs::remove_file(&out).unwrap();
    let strict = ["--calibrate", photos_arg, "--min-agreement", "1"];
    let output = classify(&[&quantize[..], &strict].concat());
    assert_eq!(output.status.code(), Some(2), "{}", stdout_of(&output));
    assert!(
        stderr_of(&output).contains("below --min-agreement"),
        "{}",
        stderr_of(&output)
    );
    assert!(!out.exists());
    let output = classify(&[&quantize[..], &["--calibrate", "/nonexistent"]].concat());
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("/nonexistent"),
        "{}",
        stderr_of(&output)
    );
}

fn logits(model: &Classifier, photo: &Path) -> Vec<f32> {
    let bytes = std::fs::read(photo).unwrap();
    let input = preprocess::prepare(
        &bytes,
        &model.spec().input,
        None,
        preprocess::DEFAULT_MAX_PIXELS,
    )
    .unwrap();
    let batch = Tensor::stack(&[input], 0).unwrap();
    model
        .logits(&batch)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_int8_file_is_the_model_quantized_at_load() {
    let manifest = manifest();
    let photos = shared().join("data/photos");
    for (model, photo) in [
        ("resnet50", photos.join("tiger.jpg")),
        (
            "catsdogs-cnn",
            shared().join("data/catsdogs/val/dog/dog.4001.jpg"),
        ),
    ] {
        let spec = manifest.model(model).unwrap().clone();
        assert!(spec.int8.is_some());
        let from_file = logits(
            &Classifier::load_with(&spec, Precision::Int8).unwrap(),
            &photo,
        );
        let mut without_file = spec.clone();
        without_file.int8 = None;
        let at_load = logits(
            &Classifier::load_with(&without_file, Precision::Int8).unwrap(),
            &photo,
        );
        let exact = logits(
            &Classifier::load_with(&spec, Precision::F32).unwrap(),
            &photo,
        );
        let scale = exact.iter().fold(1f32, |m, x| m.max(x.abs()));
        assert!(
            max_difference(&from_file, &at_load) <= 1e-5 * scale,
            "{model}: {}",
            max_difference(&from_file, &at_load)
        );
        // Both are int8: near f32, not equal to it.
        let quantization_error = max_difference(&from_file, &exact);
        assert!(
            quantization_error > 1e-5 * scale && quantization_error < 0.1 * scale,
            "{model}: {quantization_error} of {scale}"
        );
    }
}

/// A weights folder as the ARM images install it: the manifest, labels, the head and
/// the int8 files, without the f32 ResNet-50 and CNN.
fn int8_only_folder(dir: &Path) -> std::path::PathBuf {
    let weights = root().join("weights");
    for file in [
        "resnet50-int8.safetensors",
        "catsdogs-cnn-int8.safetensors",
        "catsdogs-head.safetensors",
        "imagenet-labels.tsv",
        "catsdogs-labels.tsv",
    ] {
        std::fs::copy(weights.join(file), dir.join(file)).unwrap();
    }
    let text = std::fs::read_to_string(weights.join("models.toml")).unwrap();
    let path = dir.join("models.toml");
    std::fs::write(&path, format!("precision = \"int8\"\n{text}")).unwrap();
    path
}

#[test]
fn an_int8_only_folder_serves_every_model_and_explains_f32() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = int8_only_folder(dir.path());
    let manifest = manifest.to_str().unwrap();
    let tiger = shared().join("data/photos/tiger.jpg");
    let tiger = tiger.to_str().unwrap();
    for model in ["resnet50", "catsdogs", "catsdogs-cnn"] {
        let output = classify(&["--manifest", manifest, "predict", "--model", model, tiger]);
        assert!(output.status.success(), "{model}: {}", stderr_of(&output));
        let answer: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
        if model == "resnet50" {
            assert_eq!(answer["predictions"][0]["label"], "tiger");
        }
    }
    let output = classify(&[
        "--manifest",
        manifest,
        "predict",
        "--precision",
        "f32",
        tiger,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let error = stderr_of(&output);
    assert!(
        error.contains("only the int8 weights of this model are installed")
            && error.contains("resnet50.safetensors")
            && error.contains("--precision int8"),
        "{error}"
    );
}

#[test]
fn int8_files_of_other_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = int8_only_folder(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap();
    let tiger = shared().join("data/photos/tiger.jpg");
    let run = |text: &str| {
        std::fs::write(&manifest, text).unwrap();
        let output = classify(&[
            "--manifest",
            manifest.to_str().unwrap(),
            "predict",
            tiger.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(2));
        stderr_of(&output)
    };
    // The f32 weights were retrained (another hash) but the int8 file was not remade.
    let resnet = manifest_value(&text, "resnet50.safetensors", "sha256");
    let error = run(&text.replacen(&resnet, &"0".repeat(64), 1));
    assert!(error.contains("run `classify quantize` again"), "{error}");
    // The model whose weights are `entry` named `file` instead, with that file's hashes
    // (so the file passes its hash check and the contents are what is refused).
    let named_as = |text: &str, file: &str, entry: &str| {
        let mut swapped = text.to_string();
        for key in ["sha256", "blake3"] {
            let (own, theirs) = (
                manifest_value(text, entry, key),
                manifest_value(text, file, key),
            );
            swapped = swapped.replacen(&own, &theirs, 1);
        }
        swapped.replace(&format!("\"{entry}\""), &format!("\"{file}\""))
    };
    // The CNN's int8 file named as the ResNet's.
    let swapped = named_as(
        &text,
        "catsdogs-cnn-int8.safetensors",
        "resnet50-int8.safetensors",
    );
    let error = run(&swapped);
    assert!(error.contains("holds a small-cnn"), "{error}");
    // An f32 file named as int8.
    std::fs::copy(
        root().join("weights/catsdogs-head.safetensors"),
        dir.path().join("fake.safetensors"),
    )
    .unwrap();
    let fake = named_as(
        &text,
        "catsdogs-head.safetensors",
        "resnet50-int8.safetensors",
    )
    .replacen("\"catsdogs-head.safetensors\"", "\"fake.safetensors\"", 1);
    let error = run(&fake);
    assert!(error.contains("not int8 weights"), "{error}");
}

/// The hash (`key`: sha256 or blake3) the manifest gives right after `weights = "<file>"`.
fn manifest_value(text: &str, file: &str, key: &str) -> String {
    let at = text.find(&format!("weights = \"{file}\"")).unwrap();
    let prefix = format!("{key} = \"");
    let hash = text[at..].find(&prefix).unwrap() + at + prefix.len();
    text[hash..hash + 64].to_string()
}
