//! Preprocessing: image bytes to the exact input tensor a model was trained on.
//!
//! [`decode`] turns any supported file into upright RGB, [`resize`] applies the spatial
//! transform, and [`to_chw`] the model's colour order and normalisation, all as the
//! model manifest's [`InputSpec`] says.

pub mod decode;
pub mod resize;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use decode::{check_pixel_budget, decode_rgb, dimensions};

/// Pixel budget when none is configured (the function's `max_pixels` default).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// What is wrong with an input image; every variant is the client's problem, not ours.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("the image is {width}x{height} pixels, more than the limit of {max_pixels}")]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("cannot decode the image: {0}")]
    Invalid(String),
}

impl PreprocessError {
    fn from_image(error: image::ImageError) -> Self {
        match error {
            image::ImageError::Unsupported(e) => Self::Unsupported(e.to_string()),
            image::ImageError::Limits(e) => {
                Self::Invalid(format!("the image needs too much memory to decode ({e})"))
            }
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// The spatial transform from a photo to the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Shorter side to `resize_shorter` (antialiased bilinear), then the centre square
    /// (torchvision's `Resize` + `CenterCrop`).
    CenterCrop,
    /// Squash to the input size with nearest neighbour (Keras' `load_img(target_size)`,
    /// what the original service did).
    SquashNearest,
    /// Squash to the input size, antialiased bilinear.
    SquashBilinear,
}

/// The order of the colour planes the network expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// How an image becomes a model's input, as the manifest states it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Side of the square input.
    pub size: u32,
    pub resize: ResizeMode,
    /// Shorter side before the centre crop (for [`ResizeMode::CenterCrop`]).
    pub resize_shorter: u32,
    pub channel_order: ChannelOrder,
    /// A channel of 255 maps to this value before normalisation (255 or 1).
    pub pixel_range: f32,
    /// Subtracted per channel, given in R, G, B order whatever the channel order.
    pub mean_rgb: [f32; 3],
    /// Divides per channel after the mean, in R, G, B order.
    pub std_rgb: [f32; 3],
}

/// Decodes, resizes and normalises one image into a `[3, size, size]` tensor.
pub fn prepare(
    bytes: &[u8],
    spec: &InputSpec,
    resize_mode: Option<ResizeMode>,
    max_pixels: u64,
) -> Result<Tensor, PreprocessError> {
    let image = decode_rgb(bytes, max_pixels)?;
    let mode = resize_mode.unwrap_or(spec.resize);
    let resized = resize::resize(&image, mode, spec.size, spec.resize_shorter)?;
    Ok(to_chw(&resized, spec))
}

/// Planar CHW f32 in the model's channel order and normalisation.
pub fn to_chw(image: &RgbImage, spec: &InputSpec) -> Tensor {
    let (width, height) = image.dimensions();
    let plane = (width * height) as usize;
    let planes = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut data = vec![0f32; 3 * plane];
    for (plane_index, &rgb) in planes.iter().enumerate() {
        let scale = spec.pixel_range / 255.0 / spec.std_rgb[rgb];
        let shift = spec.mean_rgb[rgb] / spec.std_rgb[rgb];
        let out = &mut data[plane_index * plane..(plane_index + 1) * plane];
        for (value, pixel) in out.iter_mut().zip(image.pixels()) {
            *value = f32::from(pixel[rgb]) * scale - shift;
        }
    }
    Tensor::from_vec(data, (3, height as usize, width as usize), &Device::Cpu)
        .expect("the buffer has exactly 3 * height * width values")
}

/// The mirror image (left and right swapped) of planar values `[planes, height, width]`.
pub fn mirrored(planar: &[f32], height: usize, width: usize) -> Vec<f32> {
    debug_assert_eq!(planar.len() % (height * width), 0);
    planar
        .chunks_exact(width)
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

/// [`mirrored`] for a batch tensor `[n, planes, height, width]`.
pub fn mirrored_batch(batch: &Tensor) -> candle_core::Result<Tensor> {
    let width = batch.dim(3)?;
    let reversed: Vec<u32> = (0..width as u32).rev().collect();
    batch.index_select(&Tensor::new(reversed, batch.device())?, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn mirroring_swaps_left_and_right_in_every_plane_and_agrees_with_the_batch_form() {
        // Two planes of 2 x 3.
        let planar = [1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.];
        let mirrored_values = mirrored(&planar, 2, 3);
        assert_eq!(
            mirrored_values,
            [3., 2., 1., 6., 5., 4., 9., 8., 7., 12., 11., 10.]
        );
        let batch = Tensor::from_slice(&planar, (1, 2, 2, 3), &Device::Cpu).unwrap();
        let from_batch = mirrored_batch(&batch).unwrap().flatten_all().unwrap();
        assert_eq!(from_batch.to_vec1::<f32>().unwrap(), mirrored_values);
    }

    fn caffe() -> InputSpec {
        InputSpec {
            size: 2,
            resize: ResizeMode::CenterCrop,
            resize_shorter: 2,
            channel_order: ChannelOrder::Bgr,
            pixel_range: 255.0,
            mean_rgb: [123.68, 116.779, 103.939],
            std_rgb: [1.0, 1.0, 1.0],
        }
    }

    #[test]
    fn caffe_normalisation_is_bgr_minus_means() {
        let image = RgbImage::from_pixel(2, 2, Rgb([200, 100, 50]));
        let tensor = to_chw(&image, &caffe());
        let values: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        let expect = [50.0 - 103.939, 100.0 - 116.779, 200.0 - 123.68];
        for (plane, expect) in expect.iter().enumerate() {
            for value in &values[plane * 4..(plane + 1) * 4] {
                assert!((value - expect).abs() < 1e-4, "{value} vs {expect}");
            }
        }
    }

    #[test]
    fn torchvision_normalisation_scales_to_unit_range() {
        let spec = InputSpec {
            channel_order: ChannelOrder::Rgb,
            pixel_range: 1.0,
            mean_rgb: [0.485, 0.456, 0.406],
            std_rgb: [0.229, 0.224, 0.225],
            ..caffe()
        };
        let image = RgbImage::from_pixel(2, 2, Rgb([255, 0, 51]));
        let values: Vec<f32> = to_chw(&image, &spec)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((values[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((values[4] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        assert!((values[8] - (0.2 - 0.406) / 0.225).abs() < 1e-5);
    }
}
