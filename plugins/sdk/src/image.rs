//! Pre-processing for image models (Cargo feature `image`): decode PNG or JPEG bytes, resize,
//! and lay the pixels out as the normalised planes (`[3, height, width]`) vision models take.
//! The `image` crate is re-exported for everything else (rotation, crops, filters).

pub use ::image::{GrayImage, Luma, Rgb, RgbImage, imageops};
use ::image::{ImageReader, Limits, imageops::FilterType};

use crate::{PluginError, invalid};

/// The widest and tallest image [`decode`] accepts, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// The most memory [`decode`] lets a decoder allocate.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decode a PNG or JPEG (told apart by their bytes) into 8-bit RGB. Anything else, a
/// truncated file or one over [`MAX_SIDE`] / [`MAX_DECODE_BYTES`] is an invalid-input error.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, PluginError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(invalid("not a PNG or JPEG image"));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| invalid(format!("cannot decode the image: {e}")))?;
    Ok(image.into_rgb8())
}

/// `image` scaled to exactly `width` x `height` with bilinear interpolation (OpenCV's and
/// PIL's default for resizing model inputs).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    imageops::resize(image, width, height, FilterType::Triangle)
}

/// `image` scaled to `height` pixels high keeping its aspect ratio, at most `max_width` wide
/// (squeezed to fit beyond that), at least 1: text-line models' input.
pub fn fit_height(image: &RgbImage, height: u32, max_width: u32) -> RgbImage {
    let ratio = f64::from(image.width()) / f64::from(image.height().max(1));
    let width = ((f64::from(height) * ratio).ceil() as u32).clamp(1, max_width.max(1));
    resize(image, width, height)
}

/// How pixel values become model inputs: `(value / 255 - mean) / std` per channel, in the
/// channel order the model was trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Per channel, in RGB order.
    pub mean: [f32; 3],
    /// Per channel, in RGB order.
    pub std: [f32; 3],
    /// Planes in BGR order (models trained on OpenCV's `imread`), else RGB.
    pub bgr: bool,
}

impl Normalize {
    /// torchvision's ImageNet statistics, RGB.
    pub const IMAGENET: Normalize =
        Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], bgr: false };
    /// To [-1, 1] (`mean = std = 0.5`) in BGR order: PaddleOCR's models.
    pub const PADDLE_OCR: Normalize = Normalize { mean: [0.5; 3], std: [0.5; 3], bgr: true };
}

/// The image as `[3, height, width]` planes of normalised values. Columns right of the
/// image's own width, up to `width`, are 0 (padding after normalisation, as PaddleOCR pads).
pub fn to_chw(image: &RgbImage, width: u32, normalize: &Normalize) -> Vec<f32> {
    let (w, h) = (width as usize, image.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (x, y, pixel) in image.enumerate_pixels() {
        if x >= width {
            continue;
        }
        for (c, &value) in pixel.0.iter().enumerate() {
            let plane = if normalize.bgr { 2 - c } else { c };
            out[(plane * h + y as usize) * w + x as usize] =
                (f32::from(value) / 255.0 - normalize.mean[c]) / normalize.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(image: &RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, ::image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_png_decodes_and_becomes_normalised_padded_planes() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(0, 0, ::image::Rgb([255, 0, 51]));
        image.put_pixel(1, 0, ::image::Rgb([0, 255, 0]));
        let decoded = decode(&png(&image)).unwrap();
        assert_eq!(decoded, image);
        let rgb = to_chw(&decoded, 3, &Normalize { mean: [0.0; 3], std: [1.0; 3], bgr: false });
        // R plane, G plane, B plane; the third column is padding.
        assert_eq!(rgb, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0]);
        let bgr = to_chw(&decoded, 2, &Normalize::PADDLE_OCR);
        assert_eq!(bgr, [-0.6, -1.0, -1.0, 1.0, 1.0, -1.0]);
    }

    #[test]
    fn fit_height_keeps_the_aspect_ratio_up_to_the_widest() {
        let line = RgbImage::new(100, 20);
        assert_eq!(fit_height(&line, 48, 192).dimensions(), (192, 48));
        assert_eq!(fit_height(&line, 10, 192).dimensions(), (50, 10));
        assert_eq!(fit_height(&RgbImage::new(1, 100), 48, 192).dimensions(), (1, 48));
    }

    #[test]
    fn junk_truncated_and_huge_images_are_refused_as_invalid_input() {
        let message = |r: Result<RgbImage, PluginError>| match r.unwrap_err() {
            PluginError::InvalidInput(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(message(decode(b"hello")), "not a PNG or JPEG image");
        let whole = png(&RgbImage::new(8, 8));
        assert!(message(decode(&whole[..whole.len() / 2])).starts_with("cannot decode the image"));
        let wide = png(&RgbImage::new(MAX_SIDE + 1, 1));
        assert!(message(decode(&wide)).contains("limit"), "{:?}", decode(&wide).map(|_| ()));
    }
}
