//! EfficientNet-Lite0 against its reference: the golden logits (ONNX Runtime's forward of
//! the same tensors) and top-1 on `../shared/data/imagenet-sample` (reference 0.868).

use edge_classify::classifier::Classifier;

use crate::util::{golden_vectors, manifest, max_abs_difference, prepared, shared};

fn lite0() -> Classifier {
    Classifier::load(manifest().model("efficientnet-lite0").unwrap()).unwrap()
}

#[test]
fn logits_match_the_golden_vectors() {
    let model = lite0();
    for (photo, input, expected) in golden_vectors("efficientnet-lite0-golden.safetensors") {
        let worst = max_abs_difference(&model.logits(&input).unwrap(), &expected);
        println!("{photo}: max |logit difference| {worst:.2e}");
        assert!(worst <= 1e-3, "{photo}: max |logit difference| {worst}");
    }
}

#[test]
fn imagenet_sample_top1() {
    let folder = shared().join("data/imagenet-sample");
    let listing = std::fs::read_to_string(folder.join("labels.tsv")).unwrap();
    let samples: Vec<(std::path::PathBuf, usize)> = listing
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (folder.join(fields[0]), fields[2].parse().unwrap())
        })
        .collect();
    assert_eq!(samples.len(), 500);
    let model = lite0();
    let mut top1 = 0;
    for chunk in samples.chunks(16) {
        let inputs = prepared(
            chunk.iter().map(|(path, _)| path.as_path()),
            &model.spec().input,
        );
        for ((_, truth), row) in chunk.iter().zip(model.probability_rows(&inputs).unwrap()) {
            top1 += usize::from(row.iter().all(|&p| p <= row[*truth]));
        }
    }
    let accuracy = top1 as f64 / samples.len() as f64;
    println!("efficientnet-lite0 top-1 on the ImageNet sample: {accuracy:.3}");
    assert!(accuracy >= 0.86, "top-1 {accuracy:.3}");
}
