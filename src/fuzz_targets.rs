//! Every parser of outside input, driven the way a fuzzer drives it. The `fuzz/` targets
//! (`cargo +nightly fuzz run NAME`) and the stable corpus replay test
//! (`tests/fuzz_corpus.rs`) both call these, so a crash found by one reproduces in the
//! other. Each function asserts the invariants its parser promises.

use std::path::Path;

use crate::manifest::Manifest;
use crate::models::resnet::{Config, ResNet, Variant};
use crate::predictions::MAX_TOP;
use crate::preprocess::{self, ChannelOrder, InputSpec, ResizeMode};
use crate::server::{multipart, request, settings};
use crate::weights::CheckedWeights;

/// One fuzz target: takes any bytes, panics only on a broken invariant.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/Cargo.toml` lists them.
pub const TARGETS: [(&str, Target); 5] = [
    ("decode_image", decode_image),
    ("multipart", multipart),
    ("request", request),
    ("duration", duration),
    ("model_files", model_files),
];

/// Image bytes through decoding, the pixel budget, resizing and normalisation; the
/// first byte picks the resize mode.
pub fn decode_image(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let resize = match mode % 3 {
        0 => ResizeMode::CenterCrop,
        1 => ResizeMode::SquashNearest,
        _ => ResizeMode::SquashBilinear,
    };
    let spec = InputSpec {
        size: 224,
        resize,
        resize_shorter: 256,
        channel_order: ChannelOrder::Bgr,
        pixel_range: 255.0,
        mean_rgb: [123.68, 116.779, 103.939],
        std_rgb: [1.0; 3],
    };
    // The server's default budget: the decoder must refuse, not allocate, beyond it.
    if let Ok(input) = preprocess::prepare(bytes, &spec, None, preprocess::DEFAULT_MAX_PIXELS) {
        assert_eq!(input.dims(), [3, 224, 224]);
    }
}

/// A multipart upload: the first line is the Content-Type header, the rest the body.
pub fn multipart(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default();
    if let Ok(Some(boundary)) = multipart::boundary(content_type) {
        if let Ok(file) = multipart::file_part(body, boundary) {
            // The file is a slice of the body, never a copy that could grow.
            let body_range = body.as_ptr_range();
            assert!(file.is_empty() || body_range.contains(&file.as_ptr()));
        }
    }
}

/// A query string, and the same text as the headers we read.
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match request::parse_query(text) {
        Ok(query) => assert!((1..=MAX_TOP).contains(&query.top)),
        Err(detail) => assert!(detail.len() < 512, "error details stay short"),
    }
    if let Some(id) = request::sane_call_id(Some(text)) {
        assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
    }
    request::wants_text(Some(text));
}

/// A duration from the environment (`read_timeout=…`).
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = settings::parse_duration(text) {
        assert!(
            duration.as_secs() <= 86_400,
            "durations are capped at a day"
        );
    }
}

/// A model manifest (first byte even) or a weights file (odd).
pub fn model_files(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = Manifest::parse(text, Path::new("/fuzz/models.toml"));
        }
    } else if let Ok(weights) = CheckedWeights::from_source(Path::new("fuzz.safetensors"), bytes) {
        // A narrow ResNet: whatever the tensors hold, building fails cleanly or works.
        let config = Config {
            variant: Variant::V1,
            blocks_per_stage: [1, 1, 1, 1],
            base_width: 1,
            num_classes: Some(2),
        };
        let _ = weights.build(|vb| ResNet::new(&config, vb));
    }
}
