//! Image decoding with limits, and torchvision-compatible preprocessing (`Resize`, `CenterCrop`, `ToTensor`,
//! `Normalize`), shared by every image task.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::model_toml::ImagePreprocessing;
use crate::tasks::TaskError;

/// What an image may be before any memory is spent on its pixels (flags `--max-image-pixels` and
/// `--max-image-aspect`).
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest width x height.
    pub max_pixels: u64,
    /// Largest ratio of the longer side to the shorter one. Resizing scales the shorter side to the model's size,
    /// so a 1 x 1,000,000 image (1 Mpx) would become 256 x 256,000,000.
    pub max_aspect: u32,
}

impl ImageLimits {
    /// The limits `ember train` applies to the images of a dataset.
    pub const TRAINING: ImageLimits = ImageLimits { max_pixels: 40_000_000, max_aspect: 32 };
}

/// What the header of an image says, read without decoding its pixels.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Probe {
    /// An upper bound of the bytes decoding this image may allocate: the frame at 16 bits per channel with alpha,
    /// plus decoder scratch space (the same bound the decoder is held to).
    pub fn decode_bytes(&self) -> u64 {
        (u64::from(self.width) * u64::from(self.height)).saturating_mul(8).saturating_add(DECODER_SCRATCH_BYTES)
    }
}

const DECODER_SCRATCH_BYTES: u64 = 64 << 20;

/// Progressive JPEG scans a decoder will read; real encoders write about ten, and each scan can cost a pass over
/// the whole image, so a file of thousands of tiny scans is a CPU bomb (libjpeg-turbo's own advice is 500).
const MAX_JPEG_SCANS: u32 = 500;

/// Reads an image's format and dimensions from its header and checks them against `limits`: refused images
/// cost no decoding and no allocation sized by what they claim.
pub fn probe(bytes: &[u8], limits: ImageLimits) -> Result<Probe, TaskError> {
    let reader = reader(bytes)?;
    let Some(format) = reader.format() else {
        return Err(TaskError::Unreadable(
            "the image is not in a supported format: expected JPEG, PNG, WebP, GIF or BMP".into(),
        ));
    };
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| TaskError::Unreadable(format!("the {format:?} image is corrupt or truncated: {e}")))?;
    check_dimensions(width, height, limits)?;
    Ok(Probe { format, width, height })
}

/// A reader of `bytes` that has guessed their format from the magic bytes.
fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, TaskError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| TaskError::Unreadable(format!("cannot read the image: {e}")))
}

/// The pixel and aspect-ratio limits, in u64 so that no claimed size can overflow the check.
pub fn check_dimensions(width: u32, height: u32, limits: ImageLimits) -> Result<(), TaskError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(TaskError::TooLarge(format!(
            "the image is {width}x{height} = {pixels} pixels; the limit is {} (--max-image-pixels)",
            limits.max_pixels
        )));
    }
    let (longer, shorter) = (u64::from(width.max(height)), u64::from(width.min(height)));
    if shorter == 0 {
        return Err(TaskError::Unreadable(format!("the image is {width}x{height}: it has no pixels")));
    }
    if longer > shorter.saturating_mul(u64::from(limits.max_aspect)) {
        return Err(TaskError::Invalid(format!(
            "the image is {width}x{height}: its sides differ by more than {}:1 (--max-image-aspect)",
            limits.max_aspect
        )));
    }
    Ok(())
}

/// Decodes JPEG, PNG, WebP, GIF (first frame) or BMP, refusing images over `limits` before decoding them,
/// so a small file that expands to gigabytes (a decompression bomb) costs nothing.
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, TaskError> {
    decode_probed(bytes, probe(bytes, limits)?)
}

/// How large a decoded image must be for what is made of it next. A JPEG much larger than that is decoded at
/// 1/2, 1/4 or 1/8 of its size, which libjpeg-turbo does inside the inverse DCT for a fraction of the work (a
/// 4000-pixel photo for a 224-pixel model: bench/RESULTS.md), but never below the size asked for, so the resize
/// that follows still only shrinks (antialiased, as torchvision's). Its other scales (3/8 to 7/8) have no SIMD
/// code: a 640x427 photo decoded at 5/8 took longer than decoded whole (3.1 against 2.6 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeSize {
    Full,
    /// The shorter side at least this long (classification resizes the shorter side).
    ShorterAtLeast(u32),
    /// The longer side at least this long (stylize fits the longer side).
    LongerAtLeast(u32),
}

impl DecodeSize {
    /// The smallest of libjpeg-turbo's DCT scales (1/8, 1/4, 1/2, 1) that keeps `width` x `height` at least the
    /// size asked for.
    fn jpeg_scale(self, width: u32, height: u32) -> turbojpeg::ScalingFactor {
        use turbojpeg::ScalingFactor as S;
        let fits = |denom: u32| {
            let (w, h) = (width.div_ceil(denom), height.div_ceil(denom));
            match self {
                DecodeSize::Full => false,
                DecodeSize::ShorterAtLeast(side) => w.min(h) >= side,
                DecodeSize::LongerAtLeast(side) => w.max(h) >= side,
            }
        };
        [(8, S::ONE_EIGHTH), (4, S::ONE_QUARTER), (2, S::ONE_HALF)]
            .into_iter()
            .find(|(denom, _)| fits(*denom))
            .map_or(S::ONE, |(_, scale)| scale)
    }
}

/// `decode` of an image whose header `probe` has read and checked already.
pub fn decode_probed(bytes: &[u8], probe: Probe) -> Result<DynamicImage, TaskError> {
    decode_probed_for(bytes, probe, DecodeSize::Full)
}

/// `decode_probed`, a large JPEG decoded no larger than `size` needs.
pub fn decode_probed_for(bytes: &[u8], probe: Probe, size: DecodeSize) -> Result<DynamicImage, TaskError> {
    let Probe { format, width, height } = probe;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(TaskError::Unreadable(
            "the Jpeg image is corrupt or truncated: no end-of-image marker after its last scan".into(),
        ));
    }
    if format == ImageFormat::Jpeg {
        match decode_jpeg_with_libjpeg_turbo(bytes, probe, size.jpeg_scale(width, height), MAX_JPEG_SCANS) {
            Ok(Some(image)) => return Ok(image),
            Ok(None) => {} // libjpeg-turbo cannot convert some JPEGs to RGB (CMYK, for one): the image crate can.
            Err(message) => return Err(TaskError::Unreadable(format!("the Jpeg image cannot be decoded: {message}"))),
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(probe.decode_bytes());
    let mut decoder = reader(bytes)?;
    decoder.limits(limits);
    decoder.decode().map_err(|e| TaskError::Unreadable(format!("the {format:?} image is corrupt or truncated: {e}")))
}

/// libjpeg-turbo, as PIL and torchvision use it (ISLOW DCT, fancy upsampling): the same pixels the Python side
/// saw at full size, and about a third faster than the image crate's pure-Rust decoder; at `scale` of its size.
/// `Ok(None)` when libjpeg-turbo cannot make RGB of it; an error when the file is refused (too many scans).
fn decode_jpeg_with_libjpeg_turbo(
    bytes: &[u8],
    probe: Probe,
    scale: turbojpeg::ScalingFactor,
    max_scans: u32,
) -> Result<Option<DynamicImage>, String> {
    let mut decompressor = turbojpeg::Decompressor::new().map_err(|e| e.to_string())?;
    decompressor.set_scan_limit(max_scans).map_err(|e| e.to_string())?;
    let Ok(header) = decompressor.read_header(bytes) else { return Ok(None) };
    // The buffer below is sized by libjpeg-turbo's reading of the header: only when it is the size checked.
    if (header.width, header.height) != (probe.width as usize, probe.height as usize) {
        return Ok(None);
    }
    decompressor.set_scaling_factor(scale).map_err(|e| e.to_string())?;
    let header = header.scaled(scale);
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; header.width * header.height * 3],
        width: header.width,
        pitch: header.width * 3,
        height: header.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    match decompressor.decompress(bytes, image.as_deref_mut()) {
        Ok(()) => {}
        Err(e) if e.to_string().contains("scans") => return Err(format!("{e} (at most {max_scans} are read)")),
        Err(_) => return Ok(None),
    }
    let (Ok(width), Ok(height)) = (u32::try_from(image.width), u32::try_from(image.height)) else { return Ok(None) };
    Ok(RgbImage::from_raw(width, height, image.pixels).map(DynamicImage::ImageRgb8))
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

/// The most pixels a resize may produce (192 MB of RGB). Decoded images are held to `--max-image-aspect` first,
/// so only a model's own oversized `resize` or a caller that skipped `decode` can reach it.
const MAX_RESIZED_PIXELS: u64 = 64_000_000;

/// torchvision `Resize(n)` on a PIL image: the shorter side becomes n, the longer `int(n * long / short)`.
/// Computed in u64 and refused, before anything is allocated, when the result would be too large.
pub fn resized_dimensions(width: u32, height: u32, shorter: u32) -> Result<(u32, u32), TaskError> {
    let (long, short) = (u64::from(width.max(height)), u64::from(width.min(height)));
    let too_large = || {
        TaskError::Invalid(format!(
            "the image is {width}x{height}: resizing its shorter side to {shorter} would make more than \
             {MAX_RESIZED_PIXELS} pixels"
        ))
    };
    if short == 0 {
        return Err(TaskError::Unreadable(format!("the image is {width}x{height}: it has no pixels")));
    }
    let scaled = u64::from(shorter) * long / short;
    if scaled.saturating_mul(u64::from(shorter)) > MAX_RESIZED_PIXELS {
        return Err(too_large());
    }
    let scaled = u32::try_from(scaled).map_err(|_| too_large())?;
    Ok(if width <= height { (shorter, scaled) } else { (scaled, shorter) })
}

/// torchvision `CenterCrop`: offsets are `int(round((size - crop) / 2))`, and Python rounds halves to even.
pub fn center_crop_offset(size: u32, crop: u32) -> u32 {
    (f64::from(size.saturating_sub(crop)) / 2.0).round_ties_even() as u32
}

/// Resize (bilinear with antialiasing, as PIL does), centre crop and normalise into a `[3, crop, crop]` tensor.
pub fn to_normalized_tensor(image: DynamicImage, prep: &ImagePreprocessing) -> Result<Tensor, TaskError> {
    let cropped = resize_and_crop(image, prep)?;
    let plane = (prep.crop * prep.crop) as usize;
    let mut chw = vec![0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * prep.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| prep.mean[c] / prep.std[c]);
    // One channel at a time: contiguous writes without bounds checks, which the compiler vectorises.
    for (c, channel) in chw.chunks_exact_mut(plane).enumerate() {
        for (value, pixel) in channel.iter_mut().zip(cropped.as_raw().chunks_exact(3)) {
            *value = f32::from(pixel[c]) * scale[c] - shift[c];
        }
    }
    let crop = i64::from(prep.crop);
    Ok(Tensor::from_slice(&chw).view([3, crop, crop]))
}

/// torchvision's `Resize(prep.resize)` then `CenterCrop(prep.crop)`, as 8-bit RGB (training keeps its images so,
/// a quarter of the memory of normalised floats).
pub fn resize_and_crop(image: DynamicImage, prep: &ImagePreprocessing) -> Result<RgbImage, TaskError> {
    let rgb: RgbImage = image.into_rgb8(); // no copy when it already is 8-bit RGB
    let (width, height) = rgb.dimensions();
    let (new_width, new_height) = resized_dimensions(width, height, prep.resize)?;
    let (left, top) = (center_crop_offset(new_width, prep.crop), center_crop_offset(new_height, prep.crop));
    if (new_width, new_height) == (width, height) {
        return Ok(image::imageops::crop_imm(&rgb, left, top, prep.crop, prep.crop).to_image());
    }
    // Only the pixels the crop keeps are computed: the part of the source under the crop, resized at the scale
    // of the whole resize. Each output pixel's kernel is centred where the whole resize centres it and reaches
    // outside the box as far as it would there (fast_image_resize clips kernels to the image, not the box), so
    // the pixels are the whole resize's, for a fraction of its work (a quarter of it for a 640x427 photo).
    let (scale_x, scale_y) = (f64::from(width) / f64::from(new_width), f64::from(height) / f64::from(new_height));
    let crop = f64::from(prep.crop);
    let region = (f64::from(left) * scale_x, f64::from(top) * scale_y, crop * scale_x, crop * scale_y);
    resize_bilinear(rgb, prep.crop, prep.crop, Some(region))
}

/// PIL's BILINEAR resize: a triangle kernel widened by the scale factor when shrinking (antialiasing), in
/// fixed point. fast_image_resize implements the same convolution with SIMD, about 10x faster than `image`'s.
/// With `region` (left, top, width, height in source pixels), only that part of the source is resized.
fn resize_bilinear(
    rgb: RgbImage,
    width: u32,
    height: u32,
    region: Option<(f64, f64, f64, f64)>,
) -> Result<RgbImage, TaskError> {
    let internal = |e: &dyn std::fmt::Display| TaskError::Failed(format!("resizing the image failed: {e}"));
    let (source_width, source_height) = rgb.dimensions();
    let source = fir::images::Image::from_vec_u8(source_width, source_height, rgb.into_raw(), fir::PixelType::U8x3)
        .map_err(|e| internal(&e))?;
    let mut target = fir::images::Image::new(width, height, fir::PixelType::U8x3);
    let mut options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
    if let Some((left, top, region_width, region_height)) = region {
        options = options.crop(left, top, region_width, region_height);
    }
    fir::Resizer::new().resize(&source, &mut target, &options).map_err(|e| internal(&e))?;
    RgbImage::from_raw(width, height, target.into_vec()).ok_or_else(|| internal(&"wrong buffer size"))
}

/// Scales an image down so that its longer side is at most `max_side` (aspect kept; never scaled up).
pub fn fit_within(image: DynamicImage, max_side: u32) -> Result<RgbImage, TaskError> {
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    let longer = width.max(height);
    if longer <= max_side {
        return Ok(rgb);
    }
    let scale =
        |side: u32| ((u64::from(side) * u64::from(max_side) + u64::from(longer) / 2) / u64::from(longer)).max(1) as u32;
    resize_bilinear(rgb, scale(width), scale(height), None)
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
pub fn from_unit_tensor(tensor: &Tensor) -> Result<RgbImage, TaskError> {
    let internal = |e: &dyn std::fmt::Display| TaskError::Failed(format!("converting the output image failed: {e}"));
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

/// The encodings an image answer can take (`format` of a stylize or style-transfer request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    #[serde(alias = "jpg")]
    Jpeg,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
        }
    }
}

/// PNG (fast compression: the network's output has little to gain from more) or JPEG at quality 90.
pub fn encode(rgb: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, TaskError> {
    let internal = |e: &dyn std::fmt::Display| TaskError::Failed(format!("encoding the {format:?} image failed: {e}"));
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
    fn a_large_jpeg_is_decoded_at_the_smallest_scale_that_still_covers_the_size_asked_for() {
        let scale = |size: DecodeSize, w, h| size.jpeg_scale(w, h).denom();
        assert_eq!(scale(DecodeSize::ShorterAtLeast(256), 4000, 3000), 8); // 500 x 375
        assert_eq!(scale(DecodeSize::ShorterAtLeast(256), 2000, 1500), 4); // 500 x 375
        assert_eq!(scale(DecodeSize::ShorterAtLeast(256), 640, 509), 1); // half would be 255 (rounded up)
        assert_eq!(scale(DecodeSize::ShorterAtLeast(256), 640, 512), 2);
        assert_eq!(scale(DecodeSize::LongerAtLeast(512), 4000, 100), 4); // longer 1000
        assert_eq!(scale(DecodeSize::Full, 8000, 8000), 1);
    }

    #[test]
    fn a_scaled_decode_keeps_the_picture() {
        // A smooth 1024 x 768 gradient: decoded at 1/2 it is the full decode averaged 2 x 2, within JPEG noise.
        let full = RgbImage::from_fn(1024, 768, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, 128]));
        let jpeg = encode(&full, OutputFormat::Jpeg).unwrap();
        let limits = ImageLimits { max_pixels: 10_000_000, max_aspect: 32 };
        let probed = probe(&jpeg, limits).unwrap();
        let half = decode_probed_for(&jpeg, probed, DecodeSize::ShorterAtLeast(300)).unwrap().into_rgb8();
        assert_eq!(half.dimensions(), (512, 384));
        let whole = decode_probed(&jpeg, probed).unwrap().into_rgb8();
        let averaged = fit_within(DynamicImage::ImageRgb8(whole), 512).unwrap();
        let worst =
            half.pixels().zip(averaged.pixels()).flat_map(|(a, b)| (0..3).map(move |c| a[c].abs_diff(b[c]))).max();
        assert!(worst.unwrap() <= 8, "a pixel differs by {worst:?}");
    }

    #[test]
    fn resizing_only_the_cropped_region_gives_the_whole_resizes_pixels() {
        // A noisy picture (every pixel its own), in the shapes a classifier meets: wide, tall, odd sides.
        let prep = ImagePreprocessing { resize: 256, crop: 224, mean: [0.5; 3], std: [0.5; 3] };
        for (width, height) in [(640, 427), (427, 640), (451, 300), (1001, 999), (300, 256)] {
            let noisy = RgbImage::from_fn(width, height, |x, y| {
                let v = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503);
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            let (new_width, new_height) = resized_dimensions(width, height, prep.resize).unwrap();
            let whole = resize_bilinear(noisy.clone(), new_width, new_height, None).unwrap();
            let (left, top) = (center_crop_offset(new_width, prep.crop), center_crop_offset(new_height, prep.crop));
            let want = image::imageops::crop_imm(&whole, left, top, prep.crop, prep.crop).to_image();
            let got = resize_and_crop(DynamicImage::ImageRgb8(noisy), &prep).unwrap();
            assert_eq!(got.dimensions(), (prep.crop, prep.crop));
            let worst = got.pixels().zip(want.pixels()).flat_map(|(a, b)| (0..3).map(move |c| a[c].abs_diff(b[c])));
            assert!(worst.max().unwrap() <= 1, "{width}x{height}: a pixel differs by more than rounding");
        }
    }

    #[test]
    fn resize_keeps_aspect_ratio_like_torchvision() {
        assert_eq!(resized_dimensions(451, 300, 256).unwrap(), (384, 256)); // int(256 * 451 / 300) = 384
        assert_eq!(resized_dimensions(427, 640, 256).unwrap(), (256, 383));
        assert_eq!(resized_dimensions(256, 256, 256).unwrap(), (256, 256));
    }

    #[test]
    fn a_resize_that_would_explode_is_refused_before_allocating() {
        let err = resized_dimensions(1, 1_000_000, 256).unwrap_err();
        assert!(matches!(&err, TaskError::Invalid(m) if m.contains("1x1000000")), "{err:?}");
        assert!(resized_dimensions(u32::MAX, 1, 8192).is_err());
        assert!(resized_dimensions(0, 5, 256).is_err());
    }

    #[test]
    fn extreme_aspect_ratios_and_pixel_counts_are_refused_from_the_header() {
        let limits = ImageLimits { max_pixels: 2_000_000, max_aspect: 32 };
        let png = |w, h| {
            let mut png = Vec::new();
            image::GrayImage::new(w, h).write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
            png
        };
        for (w, h) in [(1, 1_000_000), (1_000_000, 1), (33, 1)] {
            let err = decode(&png(w, h), limits).unwrap_err();
            assert!(matches!(&err, TaskError::Invalid(m) if m.contains("--max-image-aspect")), "{err:?}");
        }
        assert!(decode(&png(32, 1), limits).is_ok());
        let err = probe(&png(2000, 1001), limits).unwrap_err();
        assert!(matches!(err, TaskError::TooLarge(_)), "{err:?}");
        let probed = probe(&png(100, 50), limits).unwrap();
        assert_eq!((probed.width, probed.height), (100, 50));
        assert_eq!(probed.decode_bytes(), 100 * 50 * 8 + DECODER_SCRATCH_BYTES);
    }

    #[test]
    fn progressive_jpegs_with_too_many_scans_are_refused() {
        let rgb = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]));
        let mut compressor = turbojpeg::Compressor::new().unwrap();
        compressor.set_progressive(true).unwrap();
        let source = turbojpeg::Image {
            pixels: rgb.as_raw().as_slice(),
            width: 64,
            pitch: 64 * 3,
            height: 64,
            format: turbojpeg::PixelFormat::RGB,
        };
        let jpeg = compressor.compress_to_vec(source).unwrap();
        let probed = probe(&jpeg, ImageLimits::TRAINING).unwrap();
        assert!(decode_jpeg_with_libjpeg_turbo(&jpeg, probed, turbojpeg::ScalingFactor::ONE, MAX_JPEG_SCANS)
            .unwrap()
            .is_some());
        let err = decode_jpeg_with_libjpeg_turbo(&jpeg, probed, turbojpeg::ScalingFactor::ONE, 2).unwrap_err();
        assert!(err.contains("scans"), "{err}");
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
        match decode(&png, ImageLimits { max_pixels: 50_000, max_aspect: 32 }) {
            Err(TaskError::TooLarge(message)) => assert!(message.contains("300x200"), "{message}"),
            other => panic!("expected 413, got {other:?}"),
        }
        assert!(decode(&png, ImageLimits { max_pixels: 60_000, max_aspect: 32 }).is_ok());
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert!(decode(&jpeg, ImageLimits::TRAINING).is_ok());
        assert!(matches!(decode(&jpeg[..jpeg.len() - 40], ImageLimits::TRAINING), Err(TaskError::Unreadable(_))));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_bad_requests() {
        let mut png = Vec::new();
        image::RgbImage::new(64, 64).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(matches!(decode(&png[..png.len() / 2], ImageLimits::TRAINING), Err(TaskError::Unreadable(_))));
        assert!(matches!(decode(b"hello, world", ImageLimits::TRAINING), Err(TaskError::Unreadable(_))));
    }
}
