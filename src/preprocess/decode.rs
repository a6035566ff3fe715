//! Image bytes to an upright 8-bit RGB picture: format sniffing, a pixel budget checked
//! from the header before any pixel is decoded, EXIF orientation, and colour conversion
//! (grey, alpha, 16-bit and CMYK all become RGB).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::PreprocessError;

/// The formats we promise to read; anything else is refused as unsupported.
const SUPPORTED_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Gif,
];

/// Decoded bytes allowed per declared pixel: RGBA at 16 bits per channel, plus the
/// converted copy. Bounds the decoder's allocations to what the pixel budget implies.
const MAX_BYTES_PER_PIXEL: u64 = 8 + 3;

/// Width and height as the file's header declares them, read from the first few
/// hundred bytes without decoding (or even receiving) any pixel.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    reader(bytes, Limits::no_limits())?;
    let size = imagesize::blob_size(bytes)
        .map_err(|e| PreprocessError::Invalid(format!("cannot read the image header: {e}")))?;
    let fits = |n: usize| u32::try_from(n).ok();
    match (fits(size.width), fits(size.height)) {
        (Some(width), Some(height)) => Ok((width, height)),
        _ => Err(PreprocessError::Invalid(
            "the image header declares impossible dimensions".into(),
        )),
    }
}

/// Refuses an image whose header declares more than `max_pixels` pixels, before any
/// pixel is decoded (or even received past the header).
pub fn check_pixel_budget(bytes: &[u8], max_pixels: u64) -> Result<(), PreprocessError> {
    let (width, height) = dimensions(bytes)?;
    within_pixel_budget(width, height, max_pixels)
}

fn within_pixel_budget(width: u32, height: u32, max_pixels: u64) -> Result<(), PreprocessError> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// Decodes `bytes` into an upright RGB image of at most `max_pixels` pixels.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PreprocessError> {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL).max(1 << 20));
    let reader = reader(bytes, limits)?;
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a missing tail with grey and carries on; a truncated
        // upload must be an error, not a confident answer about half a picture.
        return Err(PreprocessError::Invalid(
            "the JPEG data is truncated (no end-of-image marker)".into(),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(PreprocessError::from_image)?;
    let (width, height) = decoder.dimensions();
    within_pixel_budget(width, height, max_pixels)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::Invalid(format!(
            "the image is {width}x{height} pixels"
        )));
    }
    // A broken EXIF block should not cost the user their answer: keep the pixels as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(PreprocessError::from_image)?;
    image.apply_orientation(orientation);
    Ok(to_rgb(image))
}

fn reader(bytes: &[u8], limits: Limits) -> Result<ImageReader<Cursor<&[u8]>>, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Invalid(e.to_string()))?;
    match reader.format() {
        Some(format) if SUPPORTED_FORMATS.contains(&format) => {}
        Some(format) => {
            return Err(PreprocessError::Unsupported(format!(
                "{format:?} images are not supported (use JPEG, PNG, WebP, BMP or GIF)"
            )))
        }
        None => {
            return Err(PreprocessError::Unsupported(
                "not a JPEG, PNG, WebP, BMP or GIF image".to_string(),
            ))
        }
    }
    reader.limits(limits);
    Ok(reader)
}

/// Whether a JPEG's entropy-coded data ends with its end-of-image marker. Walks the
/// marker segments up to the first scan (so thumbnails inside EXIF blocks are skipped),
/// then looks for `FF D9`, which byte stuffing keeps out of scan data.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const START_OF_SCAN: u8 = 0xDA;
    let mut at = 2; // after SOI
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return false;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if marker == START_OF_SCAN {
            let scan = &bytes[(at + 2 + length).min(bytes.len())..];
            return memchr::memmem::find(scan, &[0xFF, 0xD9]).is_some();
        }
        at += 2 + length;
    }
    false
}

/// Flattens any colour type to 8-bit RGB; transparent pixels are composited over white,
/// the background a browser shows them on.
fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut rgb = RgbImage::new(width, height);
    for (out, pixel) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(pixel[3]);
        for channel in 0..3 {
            let blended = u32::from(pixel[channel]) * alpha + 255 * (255 - alpha);
            out[channel] = ((blended + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    #[test]
    fn every_colour_type_becomes_rgb() {
        let grey = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(4, 3, Luma([200u8])));
        let grey16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(4, 3, Luma([65535u16])));
        let rgb16 =
            DynamicImage::ImageRgb16(ImageBuffer::from_pixel(4, 3, Rgb([0u16, 32896, 65535])));
        let grey_alpha = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(4, 3, LumaA([0u8, 0])));
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 3, Rgba([0u8, 0, 0, 255])));
        for (image, expect) in [
            (grey, [200, 200, 200]),
            (grey16, [255, 255, 255]),
            (rgb16, [0, 128, 255]),
            (grey_alpha, [255, 255, 255]),
            (rgba, [0, 0, 0]),
        ] {
            let decoded = decode_rgb(&encode(&image, ImageFormat::Png), 1000).unwrap();
            assert_eq!(decoded.dimensions(), (4, 3));
            assert_eq!(decoded.get_pixel(1, 1).0, expect, "{:?}", image.color());
        }
    }

    #[test]
    fn reads_every_promised_format() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::from_fn(8, 6, |x, y| {
            Rgb([(x * 30) as u8, (y * 40) as u8, 128])
        }));
        for format in [
            ImageFormat::Png,
            ImageFormat::Bmp,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Jpeg,
        ] {
            let decoded = decode_rgb(&encode(&image, format), 1000)
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(decoded.dimensions(), (8, 6), "{format:?}");
        }
    }

    #[test]
    fn refuses_too_many_pixels_before_decoding() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::new(40, 30));
        let bytes = encode(&image, ImageFormat::Png);
        assert_eq!(dimensions(&bytes).unwrap(), (40, 30));
        let err = decode_rgb(&bytes, 1199).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 40,
                    height: 30,
                    ..
                }
            ),
            "{err}"
        );
        assert!(decode_rgb(&bytes, 1200).is_ok());
    }

    #[test]
    fn names_what_is_wrong_with_bad_bytes() {
        assert!(matches!(decode_rgb(b"", 10), Err(PreprocessError::Empty)));
        assert!(matches!(
            decode_rgb(b"hello, world", 10),
            Err(PreprocessError::Unsupported(_))
        ));
        let tiff_header = b"II*\0\x08\0\0\0";
        let err = decode_rgb(tiff_header, 10).unwrap_err();
        assert!(err.to_string().contains("Tiff"), "{err}");
        let image = DynamicImage::ImageRgb8(ImageBuffer::new(64, 64));
        let png = encode(&image, ImageFormat::Png);
        let err = decode_rgb(&png[..png.len() / 2], 10_000).unwrap_err();
        assert!(matches!(err, PreprocessError::Invalid(_)), "{err}");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap()
    }

    fn near(pixel: &Rgb<u8>, expect: [u8; 3]) -> bool {
        pixel.0.iter().zip(expect).all(|(a, b)| a.abs_diff(b) <= 12)
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        let image = decode_rgb(&fixture("cmyk.jpg"), 1000).unwrap();
        assert_eq!(image.dimensions(), (24, 16));
        assert!(
            near(image.get_pixel(3, 8), [220, 30, 30]),
            "{:?}",
            image.get_pixel(3, 8)
        );
        assert!(
            near(image.get_pixel(20, 8), [30, 30, 220]),
            "{:?}",
            image.get_pixel(20, 8)
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        let image = decode_rgb(&fixture("orientation6.jpg"), 1000).unwrap();
        assert_eq!(image.dimensions(), (16, 24), "rotated upright");
        assert!(
            near(image.get_pixel(8, 3), [220, 30, 30]),
            "red on top: {:?}",
            image.get_pixel(8, 3)
        );
        assert!(
            near(image.get_pixel(8, 20), [30, 30, 220]),
            "blue below: {:?}",
            image.get_pixel(8, 20)
        );
    }

    #[test]
    fn sixteen_bit_grey_and_gif_first_frame() {
        let grey = decode_rgb(&fixture("grey16.png"), 1000).unwrap();
        let last = grey.get_pixel(23, 15);
        assert_eq!(last[0], last[2]);
        assert!(last[0] > 200, "{last:?}");
        let gif = decode_rgb(&fixture("two-frames.gif"), 1000).unwrap();
        assert!(
            near(gif.get_pixel(5, 5), [20, 200, 20]),
            "the first frame: {:?}",
            gif.get_pixel(5, 5)
        );
    }

    #[test]
    fn a_truncated_jpeg_is_an_error() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| {
            Rgb([x as u8 * 4, y as u8 * 4, 7])
        }));
        let jpeg = encode(&image, ImageFormat::Jpeg);
        assert!(decode_rgb(&jpeg, 10_000).is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() / 2, 300] {
            let err = decode_rgb(&jpeg[..cut], 10_000).unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
        }
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes some cameras append");
        assert!(decode_rgb(&trailing, 10_000).is_ok());
    }

    #[test]
    fn dimensions_come_from_the_header_alone() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::new(40, 30));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let bytes = encode(&image, format);
            assert_eq!(
                dimensions(&bytes[..bytes.len().min(400)]).unwrap(),
                (40, 30),
                "{format:?}"
            );
        }
    }
}
