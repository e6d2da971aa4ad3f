//! Image decoding with limits, and torchvision-compatible preprocessing (`Resize`, `CenterCrop`, `ToTensor`,
//! `Normalize`), shared by every image task.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};
use tch::{Device, Kind, Tensor};

use super::style::OutputFormat;
use crate::config::ImagePreprocessing;
use crate::error::ApiError;

/// Decodes JPEG, PNG, WebP, GIF (first frame) or BMP, refusing images over `max_pixels` before decoding them,
/// so a small file that expands to gigabytes (a decompression bomb) costs nothing.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ApiError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ApiError::BadRequest(format!("cannot read the image: {e}")))
    };
    let probe = reader()?;
    let Some(format) = probe.format() else {
        return Err(ApiError::BadRequest(
            "the image is not in a supported format: expected JPEG, PNG, WebP, GIF or BMP".into(),
        ));
    };
    let (width, height) = probe
        .into_dimensions()
        .map_err(|e| ApiError::BadRequest(format!("the {format:?} image is corrupt or truncated: {e}")))?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ApiError::BadRequest(
            "the Jpeg image is corrupt or truncated: no end-of-image marker after its last scan".into(),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ApiError::PayloadTooLarge(format!(
            "the image is {width}x{height} = {pixels} pixels; the limit is {max_pixels} (--max-image-pixels)"
        )));
    }
    if format == ImageFormat::Jpeg {
        if let Some(image) = decode_jpeg_with_libjpeg_turbo(bytes) {
            return Ok(image);
        }
        // libjpeg-turbo cannot convert some JPEGs to RGB (CMYK, for one): the image crate's decoder below can.
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // Room for the decoded frame at 16 bits per channel with alpha, plus decoder scratch space.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    let mut decoder = reader()?;
    decoder.limits(limits);
    decoder.decode().map_err(|e| ApiError::BadRequest(format!("the {format:?} image is corrupt or truncated: {e}")))
}

/// libjpeg-turbo, as PIL and torchvision use it (ISLOW DCT, fancy upsampling): the same pixels the Python side
/// saw, and about a third faster than the image crate's pure-Rust decoder.
fn decode_jpeg_with_libjpeg_turbo(bytes: &[u8]) -> Option<DynamicImage> {
    let decoded = turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB).ok()?;
    let (width, height) = (u32::try_from(decoded.width).ok()?, u32::try_from(decoded.height).ok()?);
    RgbImage::from_raw(width, height, decoded.pixels).map(DynamicImage::ImageRgb8)
}

/// The image crate's JPEG decoder fills a truncated scan with grey instead of failing (PIL refuses such files), so a cut-off
/// upload would be classified as a half-grey picture. A complete JPEG has an end-of-image marker (FF D9) after
/// the start of its last scan (FF DA); entropy-coded data never contains either (0xFF is stuffed as FF 00).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_marker = |marker: u8| bytes.windows(2).rposition(|pair| pair == [0xFF, marker]);
    match (last_marker(0xDA), last_marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// torchvision `Resize(n)` on a PIL image: the shorter side becomes n, the longer `int(n * long / short)`.
pub fn resized_dimensions(width: u32, height: u32, shorter: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| (u64::from(shorter) * u64::from(long) / u64::from(short)) as u32;
    if width <= height {
        (shorter, scale(height, width))
    } else {
        (scale(width, height), shorter)
    }
}

/// torchvision `CenterCrop`: offsets are `int(round((size - crop) / 2))`, and Python rounds halves to even.
pub fn center_crop_offset(size: u32, crop: u32) -> u32 {
    (f64::from(size.saturating_sub(crop)) / 2.0).round_ties_even() as u32
}

/// Resize (bilinear with antialiasing, as PIL does), centre crop and normalise into a `[3, crop, crop]` tensor.
pub fn to_normalized_tensor(image: DynamicImage, prep: &ImagePreprocessing) -> Result<Tensor, ApiError> {
    let cropped = resize_and_crop(image, prep)?;
    let plane = (prep.crop * prep.crop) as usize;
    let mut chw = vec![0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * prep.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| prep.mean[c] / prep.std[c]);
    for (i, pixel) in cropped.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(pixel[c]) * scale[c] - shift[c];
        }
    }
    let crop = i64::from(prep.crop);
    Ok(Tensor::from_slice(&chw).view([3, crop, crop]))
}

/// torchvision's `Resize(prep.resize)` then `CenterCrop(prep.crop)`, as 8-bit RGB (training keeps its images so,
/// a quarter of the memory of normalised floats).
pub fn resize_and_crop(image: DynamicImage, prep: &ImagePreprocessing) -> Result<RgbImage, ApiError> {
    let rgb: RgbImage = image.into_rgb8(); // no copy when it already is 8-bit RGB
    let (width, height) = rgb.dimensions();
    let (new_width, new_height) = resized_dimensions(width, height, prep.resize);
    let resized =
        if (new_width, new_height) == (width, height) { rgb } else { resize_bilinear(rgb, new_width, new_height)? };
    if (new_width, new_height) == (prep.crop, prep.crop) {
        return Ok(resized);
    }
    let (left, top) = (center_crop_offset(new_width, prep.crop), center_crop_offset(new_height, prep.crop));
    Ok(image::imageops::crop_imm(&resized, left, top, prep.crop, prep.crop).to_image())
}

/// PIL's BILINEAR resize: a triangle kernel widened by the scale factor when shrinking (antialiasing), in
/// fixed point. fast_image_resize implements the same convolution with SIMD, about 10x faster than `image`'s.
fn resize_bilinear(rgb: RgbImage, width: u32, height: u32) -> Result<RgbImage, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(format!("resizing the image failed: {e}"));
    let (source_width, source_height) = rgb.dimensions();
    let source = fir::images::Image::from_vec_u8(source_width, source_height, rgb.into_raw(), fir::PixelType::U8x3)
        .map_err(|e| internal(&e))?;
    let mut target = fir::images::Image::new(width, height, fir::PixelType::U8x3);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
    fir::Resizer::new().resize(&source, &mut target, &options).map_err(|e| internal(&e))?;
    RgbImage::from_raw(width, height, target.into_vec()).ok_or_else(|| internal(&"wrong buffer size"))
}

/// Scales an image down so that its longer side is at most `max_side` (aspect kept; never scaled up).
pub fn fit_within(image: DynamicImage, max_side: u32) -> Result<RgbImage, ApiError> {
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    let longer = width.max(height);
    if longer <= max_side {
        return Ok(rgb);
    }
    let scale =
        |side: u32| ((u64::from(side) * u64::from(max_side) + u64::from(longer) / 2) / u64::from(longer)).max(1) as u32;
    resize_bilinear(rgb, scale(width), scale(height))
}

/// `[3, H, W]` float in 0..1 (torchvision `ToTensor`).
pub fn to_unit_tensor(rgb: &RgbImage) -> Tensor {
    let (width, height) = rgb.dimensions();
    Tensor::from_slice(rgb.as_raw())
        .view([i64::from(height), i64::from(width), 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// The reverse of `to_unit_tensor`: values are clamped to 0..1 and rounded to 8 bits.
pub fn from_unit_tensor(tensor: &Tensor) -> Result<RgbImage, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(format!("converting the output image failed: {e}"));
    let size = tensor.size();
    let [3, height, width] = size[..] else {
        return Err(internal(&format!("expected a [3, H, W] image, got shape {size:?}")));
    };
    let bytes = (tensor.f_clamp(0.0, 1.0).map_err(|e| internal(&e))? * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let raw = Vec::<u8>::try_from(bytes.view([-1])).map_err(|e| internal(&e))?;
    RgbImage::from_raw(width as u32, height as u32, raw).ok_or_else(|| internal(&"wrong buffer size"))
}

/// PNG (fast compression: the network's output has little to gain from more) or JPEG at quality 90.
pub fn encode(rgb: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(format!("encoding the {format:?} image failed: {e}"));
    match format {
        OutputFormat::Png => {
            let mut png = Vec::new();
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                &mut png,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            rgb.write_with_encoder(encoder).map_err(|e| internal(&e))?;
            Ok(png)
        }
        OutputFormat::Jpeg => {
            let (width, height) = rgb.dimensions();
            let image = turbojpeg::Image {
                pixels: rgb.as_raw().as_slice(),
                width: width as usize,
                pitch: width as usize * 3,
                height: height as usize,
                format: turbojpeg::PixelFormat::RGB,
            };
            let jpeg = turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2).map_err(|e| internal(&e))?;
            Ok(jpeg.to_vec())
        }
    }
}

/// A blank normalised image of the model's input size, for warm-up.
pub fn blank_input(prep: &ImagePreprocessing) -> Tensor {
    let crop = i64::from(prep.crop);
    Tensor::zeros([3, crop, crop], (Kind::Float, Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_aspect_ratio_like_torchvision() {
        assert_eq!(resized_dimensions(451, 300, 256), (384, 256)); // int(256 * 451 / 300) = 384
        assert_eq!(resized_dimensions(427, 640, 256), (256, 383));
        assert_eq!(resized_dimensions(256, 256, 256), (256, 256));
    }

    #[test]
    fn centre_crop_rounds_half_to_even_like_python() {
        assert_eq!(center_crop_offset(256, 224), 16);
        assert_eq!(center_crop_offset(225, 224), 0); // round(0.5) == 0
        assert_eq!(center_crop_offset(227, 224), 2); // round(1.5) == 2
        assert_eq!(center_crop_offset(383, 224), 80); // round(79.5) == 80
    }

    #[test]
    fn fit_within_keeps_the_aspect_and_never_scales_up() {
        let image = |w, h| DynamicImage::ImageRgb8(RgbImage::new(w, h));
        assert_eq!(fit_within(image(451, 300), 100).unwrap().dimensions(), (100, 67));
        assert_eq!(fit_within(image(300, 451), 100).unwrap().dimensions(), (67, 100));
        assert_eq!(fit_within(image(451, 300), 512).unwrap().dimensions(), (451, 300));
    }

    #[test]
    fn unit_tensors_round_trip_to_the_same_pixels() {
        let rgb = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 100, 255]));
        let tensor = to_unit_tensor(&rgb);
        assert_eq!(tensor.size(), [3, 3, 5]);
        assert!((tensor.double_value(&[1, 2, 0]) - 200.0 / 255.0).abs() < 1e-6);
        assert_eq!(from_unit_tensor(&tensor).unwrap(), rgb);
        let png = encode(&rgb, OutputFormat::Png).unwrap();
        assert_eq!(image::load_from_memory(&png).unwrap().into_rgb8(), rgb);
    }

    #[test]
    fn oversized_image_is_refused_before_decoding() {
        let mut png = Vec::new();
        image::RgbImage::new(300, 200).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        match decode(&png, 50_000) {
            Err(ApiError::PayloadTooLarge(message)) => assert!(message.contains("300x200"), "{message}"),
            other => panic!("expected 413, got {other:?}"),
        }
        assert!(decode(&png, 60_000).is_ok());
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert!(decode(&jpeg, 1 << 20).is_ok());
        assert!(matches!(decode(&jpeg[..jpeg.len() - 40], 1 << 20), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_bad_requests() {
        let mut png = Vec::new();
        image::RgbImage::new(64, 64).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(matches!(decode(&png[..png.len() / 2], 1 << 20), Err(ApiError::BadRequest(_))));
        assert!(matches!(decode(b"hello, world", 1 << 20), Err(ApiError::BadRequest(_))));
    }
}
