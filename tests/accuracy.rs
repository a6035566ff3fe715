//! Accuracy on `../shared/data/imagenet-sample`: 500 photos, one per even ImageNet class.
//! PyTorch with these weights reaches top-1 0.908; we must reach at least 0.89.

use candle_core::Tensor;
use edge_classify::preprocess;

use crate::util::{resnet50, shared};

/// Images per forward pass: larger batches amortise the per-layer overhead.
const BATCH: usize = 16;

#[test]
fn imagenet_sample_top1() {
    let folder = shared().join("data/imagenet-sample");
    let listing = std::fs::read_to_string(folder.join("labels.tsv")).unwrap();
    let samples: Vec<(String, usize)> = listing
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields[0].to_string(), fields[2].parse().unwrap())
        })
        .collect();
    assert_eq!(samples.len(), 500);
    let model = resnet50();
    let (mut top1, mut top5) = (0usize, 0usize);
    for chunk in samples.chunks(BATCH) {
        let inputs: Vec<Tensor> = chunk
            .iter()
            .map(|(file, _)| {
                let bytes = std::fs::read(folder.join(file)).unwrap();
                preprocess::prepare(
                    &bytes,
                    &model.spec().input,
                    None,
                    preprocess::DEFAULT_MAX_PIXELS,
                )
                .unwrap()
            })
            .collect();
        let probabilities = model.probability_rows(&inputs).unwrap();
        for ((_, truth), row) in chunk.iter().zip(&probabilities) {
            let rank = row.iter().filter(|&&p| p > row[*truth]).count();
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
        }
    }
    let (top1, top5) = (top1 as f64 / 500.0, top5 as f64 / 500.0);
    println!("imagenet-sample: top-1 {top1:.3}, top-5 {top5:.3} (500 photos)");
    assert!(top1 >= 0.89, "top-1 {top1:.3} < 0.89 (top-5 {top5:.3})");
}
