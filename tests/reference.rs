//! The committed ResNet-50 against reference outputs: exact logits on golden inputs,
//! PyTorch's top-5 on real photos in both resize modes, and the original service's
//! published answers.

use std::collections::BTreeMap;

use candle_core::Tensor;
use edge_classify::classifier::ClassifyOptions;
use edge_classify::predictions::Prediction;
use edge_classify::preprocess::ResizeMode;

use crate::util::{golden_vectors, max_abs_difference, resnet50, shared};

#[test]
fn logits_match_the_golden_vectors() {
    // `<photo>.input` (preprocessed) and `<photo>.logits` (PyTorch's forward).
    for (photo, input, expected) in golden_vectors("resnet50-golden.safetensors") {
        let worst = max_abs_difference(&resnet50().logits(&input).unwrap(), &expected);
        assert!(worst <= 1e-3, "{photo}: max |logit difference| {worst}");
    }
}

/// `expected-top5.json`: photo -> mode -> [[index, wnid, names, probability]; 5].
type ExpectedTop5 = BTreeMap<String, BTreeMap<String, Vec<(usize, String, String, f32)>>>;

fn classify_photo(photo: &str, resize: ResizeMode, top: usize) -> Vec<Prediction> {
    let bytes = std::fs::read(shared().join("data/photos").join(photo)).unwrap();
    let options = ClassifyOptions {
        resize: Some(resize),
        top,
        ..Default::default()
    };
    resnet50().classify_bytes(&bytes, &options).unwrap()
}

#[test]
fn photos_agree_with_the_pytorch_reference_in_both_modes() {
    let text = std::fs::read_to_string(shared().join("data/photos/expected-top5.json")).unwrap();
    let expected: ExpectedTop5 = serde_json::from_str(&text).unwrap();
    assert!(expected.len() >= 7);
    let mut checked = 0;
    for (photo, modes) in &expected {
        for (mode_name, reference) in modes {
            let mode = match mode_name.as_str() {
                "resize256-centercrop224" => ResizeMode::CenterCrop,
                "squash-nearest-224" => ResizeMode::SquashNearest,
                other => panic!("unknown mode {other}"),
            };
            let ours = classify_photo(photo, mode, 1000);
            let context = format!("{photo} {mode_name}: ours {:?}", &ours[..5]);
            assert_eq!(ours[0].index, reference[0].0, "top-1 differs: {context}");
            let shared_in_top5 = reference
                .iter()
                .filter(|r| ours[..5].iter().any(|p| p.index == r.0))
                .count();
            assert!(
                shared_in_top5 >= 4,
                "only {shared_in_top5} of the reference top-5: {context}"
            );
            for (index, _, _, probability) in reference {
                let score = ours.iter().find(|p| p.index == *index).unwrap().score;
                assert!(
                    (score - probability).abs() <= 0.03,
                    "class {index}: {score} vs {probability}: {context}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * expected.len());
}

#[test]
fn tiger_squashed_like_the_original_service() {
    let top3 = classify_photo("tiger.jpg", ResizeMode::SquashNearest, 3);
    let labels: Vec<&str> = top3.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["tiger", "tiger cat", "zebra"]);
    assert!(top3[0].score >= 0.90, "{top3:?}");
}

#[test]
fn cow_squashed_like_the_original_service() {
    let top2 = classify_photo("cow.jpg", ResizeMode::SquashNearest, 2);
    let labels: Vec<&str> = top2.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["ox", "oxcart"]);
}

#[test]
fn a_batch_gives_the_same_logits_as_single_images() {
    let golden = golden_vectors("resnet50-golden.safetensors");
    let input = |name: &str| {
        golden
            .iter()
            .find(|(photo, ..)| photo == name)
            .unwrap()
            .1
            .clone()
    };
    let inputs = ["tiger", "coffee_cup"].map(input);
    let batch = Tensor::cat(&inputs, 0).unwrap();
    let together = resnet50().logits(&batch).unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let alone = resnet50().logits(input).unwrap();
        let diff = max_abs_difference(&together.get(i).unwrap(), &alone.squeeze(0).unwrap());
        assert!(diff <= 1e-4, "image {i}: {diff}");
    }
}
