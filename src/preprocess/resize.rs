//! The spatial transforms, reproducing the references our weights were checked with:
//! torchvision's `Resize(shorter) + CenterCrop(size)` on PIL images (antialiased
//! bilinear), and Keras' `load_img(target_size=...)` (PIL nearest-neighbour squash).

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::{PreprocessError, ResizeMode};

/// Resizes `image` to `size` x `size` as `mode` says; `shorter` is the shorter side
/// before the centre crop.
pub fn resize(
    image: &RgbImage,
    mode: ResizeMode,
    size: u32,
    shorter: u32,
) -> Result<RgbImage, PreprocessError> {
    match mode {
        ResizeMode::CenterCrop => {
            // Resample only the source region that lands in the crop: the same filter
            // taps as resizing everything and cropping, without materialising a huge
            // intermediate for a panorama.
            let (width, height) = image.dimensions();
            let (resized_width, resized_height) = shorter_side_to((width, height), shorter);
            let source_box = |source: u32, resized: u32| {
                let scale = f64::from(source) / f64::from(resized);
                let offset = center_crop_offset(resized, size);
                (
                    f64::from(offset) * scale,
                    f64::from(size.min(resized)) * scale,
                )
            };
            let (left, crop_width) = source_box(width, resized_width);
            let (top, crop_height) = source_box(height, resized_height);
            let options = ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
                .crop(left, top, crop_width, crop_height);
            scale(
                image,
                size.min(resized_width),
                size.min(resized_height),
                &options,
            )
        }
        ResizeMode::SquashBilinear => {
            let options =
                ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
            scale(image, size, size, &options)
        }
        ResizeMode::SquashNearest => Ok(squash_nearest_like_pil(image, size, size)),
    }
}

/// torchvision's `Resize(int)`: the shorter side becomes `shorter`, the longer keeps the
/// aspect ratio, truncated like Python's `int()`.
fn shorter_side_to((width, height): (u32, u32), shorter: u32) -> (u32, u32) {
    let long_for = |long: u32, short: u32| {
        ((u64::from(shorter) * u64::from(long)) / u64::from(short)).max(1) as u32
    };
    if width <= height {
        (shorter, long_for(height, width))
    } else {
        (long_for(width, height), shorter)
    }
}

fn scale(
    image: &RgbImage,
    width: u32,
    height: u32,
    options: &ResizeOptions,
) -> Result<RgbImage, PreprocessError> {
    let source = Image::from_vec_u8(
        image.width(),
        image.height(),
        image.as_raw().clone(),
        PixelType::U8x3,
    )
    .map_err(|e| PreprocessError::Invalid(format!("cannot resize: {e}")))?;
    let mut target = Image::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(&source, &mut target, options)
        .map_err(|e| PreprocessError::Invalid(format!("cannot resize: {e}")))?;
    Ok(RgbImage::from_raw(width, height, target.into_vec())
        .expect("the resizer fills width*height*3 bytes"))
}

/// PIL's nearest-neighbour resize (`ImagingScaleAffine`), position by position: the
/// source coordinate starts at half a step and grows by repeated f64 addition, so
/// where `(x + 0.5) * scale` is an exact integer the accumulated sum can fall just
/// below it. Reproducing that choice of pixel matters: one pixel column in seven
/// differs otherwise, enough to swap the top two classes of a photo.
fn squash_nearest_like_pil(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let positions = |source: u32, target: u32| -> Vec<u32> {
        let step = f64::from(source) / f64::from(target);
        let mut at = step * 0.5;
        (0..target)
            .map(|_| {
                let index = (at as u32).min(source - 1);
                at += step;
                index
            })
            .collect()
    };
    let columns = positions(image.width(), width);
    let rows = positions(image.height(), height);
    RgbImage::from_fn(width, height, |x, y| {
        *image.get_pixel(columns[x as usize], rows[y as usize])
    })
}

/// torchvision's `CenterCrop` offset, `round((length - size) / 2)` with Python's
/// round-half-to-even.
fn center_crop_offset(length: u32, size: u32) -> u32 {
    let twice = length.saturating_sub(size);
    let (half, odd) = (twice / 2, twice % 2 == 1);
    if odd && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn shorter_side_truncates_like_torchvision() {
        assert_eq!(shorter_side_to((500, 375), 256), (341, 256));
        assert_eq!(shorter_side_to((375, 500), 256), (256, 341));
        assert_eq!(shorter_side_to((256, 256), 256), (256, 256));
        assert_eq!(shorter_side_to((10_000, 1), 256), (2_560_000, 256));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // (257 - 224) / 2 = 16.5 rounds to 16; (259 - 224) / 2 = 17.5 rounds to 18.
        for (length, expect) in [(256, 16), (257, 16), (259, 18), (224, 0), (100, 0)] {
            assert_eq!(center_crop_offset(length, 224), expect, "{length}");
        }
    }

    #[test]
    fn center_crop_equals_resize_then_crop() {
        let image = RgbImage::from_fn(300, 517, |x, y| {
            Rgb([
                (x * 7 % 251) as u8,
                (y * 3 % 253) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let direct = resize(&image, ResizeMode::CenterCrop, 224, 256).unwrap();
        let full_options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        let full = scale(&image, 256, 441, &full_options).unwrap();
        let top = center_crop_offset(441, 224);
        let cropped = image::imageops::crop_imm(&full, 16, top, 224, 224).to_image();
        let worst = direct
            .as_raw()
            .iter()
            .zip(cropped.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "max difference {worst}");
    }

    #[test]
    fn a_panorama_is_cropped_without_a_huge_intermediate() {
        let image = RgbImage::from_pixel(100_000, 2, Rgb([9, 9, 9]));
        let out = resize(&image, ResizeMode::CenterCrop, 224, 256).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
    }

    #[test]
    fn small_images_are_upscaled() {
        let image = RgbImage::from_pixel(3, 5, Rgb([1, 2, 3]));
        for mode in [
            ResizeMode::CenterCrop,
            ResizeMode::SquashBilinear,
            ResizeMode::SquashNearest,
        ] {
            let out = resize(&image, mode, 224, 256).unwrap();
            assert_eq!(out.dimensions(), (224, 224), "{mode:?}");
            assert_eq!(out.get_pixel(100, 100).0, [1, 2, 3]);
        }
    }

    #[test]
    fn nearest_squash_samples_pixel_centres_like_pil() {
        let image = RgbImage::from_fn(10, 1, |x, _| Rgb([x as u8, 0, 0]));
        let squashed = resize(&image, ResizeMode::SquashNearest, 4, 4).unwrap();
        // PIL: source x = floor((x + 0.5) * 10 / 4) = 1, 3, 6, 8
        let row: Vec<u8> = (0..4).map(|x| squashed.get_pixel(x, 0)[0]).collect();
        assert_eq!(row, [1, 3, 6, 8]);
    }

    #[test]
    fn nearest_squash_accumulates_like_pil() {
        // 512 -> 224: (x + 0.5) * 512 / 224 is exactly 8 at x = 3, but PIL's running sum
        // 8/7 + 3 * 16/7 lands just below it and picks column 7 (Pillow 10, checked).
        let image = RgbImage::from_fn(512, 1, |x, _| Rgb([(x % 256) as u8, (x / 256) as u8, 0]));
        let squashed = resize(&image, ResizeMode::SquashNearest, 224, 224).unwrap();
        let column = |x: u32| {
            let p = squashed.get_pixel(x, 0);
            u32::from(p[0]) + 256 * u32::from(p[1])
        };
        assert_eq!((0..5).map(column).collect::<Vec<_>>(), [1, 3, 5, 7, 10]);
    }

    #[test]
    fn bilinear_antialiases_when_shrinking() {
        // A one-pixel checkerboard shrunk 4x must become flat grey, not aliased stripes.
        let image = RgbImage::from_fn(64, 64, |x, y| {
            let v = if (x + y) % 2 == 0 { 255 } else { 0 };
            Rgb([v, v, v])
        });
        let shrunk = resize(&image, ResizeMode::SquashBilinear, 16, 16).unwrap();
        assert!(
            shrunk.pixels().all(|p| (120..=135).contains(&p[0])),
            "{:?}",
            shrunk.get_pixel(5, 5)
        );
    }
}
