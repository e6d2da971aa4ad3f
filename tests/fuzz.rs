//! Fuzz tests (proptest properties) of every parser of untrusted bytes: image probing, decoding and preprocessing
//! (`tasks::image`), the Open Inference Protocol codec (`http::v2::codec`), request bodies (`http::body`: multipart,
//! JSON, query strings, base64 images), the text tokenizer (`tasks::sentiment`) and fine-tuning uploads
//! (`train::upload`).
//!
//! Inputs are arbitrary bytes, and mutations (byte flips, truncations, insertions, integers written over header
//! fields) of small valid inputs built here. Every property checks that nothing panics, that a refusal is an error
//! value (a 4xx for a request), and that what a parser produces stays within its limits.
//!
//! Each test runs a modest number of cases from a fixed seed, so `cargo test` is quick and reproducible. A longer
//! campaign sets the case count, and another seed to explore new inputs:
//!
//! ```text
//! EMBER_FUZZ_CASES=100000 EMBER_FUZZ_SEED=2 cargo test --release --test fuzz
//! ```

use std::sync::LazyLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{RngAlgorithm, RngSeed};

use ember::service::ApiError;

/// The seed of every run that does not set `EMBER_FUZZ_SEED`.
const SEED: u64 = 0x454d_4245_525f_465a;

/// A config for `cases` cases in release builds (an eighth of them unoptimised; `EMBER_FUZZ_CASES` when set) from a
/// fixed seed (`EMBER_FUZZ_SEED` when set): no failure files are written, and shrinking a failure is bounded in time.
fn config(cases: u32) -> ProptestConfig {
    fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
        std::env::var(name).ok()?.parse().ok()
    }
    let cases = if cfg!(debug_assertions) { cases / 8 } else { cases };
    ProptestConfig {
        cases: var("EMBER_FUZZ_CASES").unwrap_or(cases),
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(var("EMBER_FUZZ_SEED").unwrap_or(SEED)),
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

/// A refusal of what a client sent must be the client's error (4xx), never a 500.
fn assert_client_error(error: impl Into<ApiError>) -> Result<(), TestCaseError> {
    let error = error.into();
    prop_assert!(error.status().is_client_error(), "a malformed input answered {}: {error:?}", error.status());
    Ok(())
}

/// Runs the async parsers.
static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

/// One edit of a valid input.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the input short.
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Write an integer of `width` bytes, as a header's sizes, counts and offsets are.
    Integer {
        at: Index,
        value: u64,
        width: usize,
        big_endian: bool,
    },
}

/// Integers at the edges of the widths headers use, small sizes, or any.
fn interesting_integer() -> impl Strategy<Value = u64> {
    let edges = vec![0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x7fff, 0x8000, 0xffff, 0x1_0000, 1 << 24, 0x7fff_ffff];
    let more = vec![0x8000_0000, 0xffff_ffff, 1 << 32, 1 << 62, u64::MAX - 1, u64::MAX];
    prop_oneof![select(edges), select(more), 0..=2048u64, any::<u64>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1..64usize).prop_map(|(at, count)| Mutation::Remove(at, count)),
        2 => (any::<Index>(), interesting_integer(), select(vec![1, 2, 3, 4, 8]), any::<bool>())
            .prop_map(|(at, value, width, big_endian)| Mutation::Integer { at, value, width, big_endian }),
    ]
}

/// Up to `max` mutations; none in about one case of three, so that valid inputs are checked too.
fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![1 => Just(Vec::new()), 2 => vec(mutation(), 1..=max)]
}

/// Writes the low `width` bytes of `value` at `offset`, as far as `bytes` goes.
fn write_integer(bytes: &mut [u8], offset: usize, width: usize, big_endian: bool, value: u64) {
    let little = value.to_le_bytes();
    for k in 0..width.min(8) {
        if let Some(byte) = bytes.get_mut(offset + k) {
            *byte = if big_endian { little[width - 1 - k] } else { little[k] };
        }
    }
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(at, insert) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, insert.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Flip(at, mask) => bytes[at.index(len)] ^= mask,
            Mutation::Truncate(at) => bytes.truncate(at.index(len)),
            Mutation::Remove(at, count) => {
                let at = at.index(len);
                bytes.drain(at..(at + count).min(len));
            }
            Mutation::Integer { at, value, width, big_endian } => {
                write_integer(&mut bytes, at.index(len), *width, *big_endian, *value)
            }
        }
    }
    bytes
}

/// Image probing and decoding under limits, then torchvision preprocessing.
mod image {
    use std::io::Cursor;

    use ::image::{DynamicImage, ImageFormat, RgbImage};

    use super::*;
    use ember::model_toml::ImagePreprocessing;
    use ember::tasks::image::{decode, decode_probed, probe, resize_and_crop, ImageLimits};
    use ember::tasks::TaskError;

    const LIMITS: ImageLimits = ImageLimits { max_pixels: 1_000_000, max_aspect: 32 };

    fn prep(resize: u32, crop: u32) -> ImagePreprocessing {
        ImagePreprocessing { resize, crop, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }

    /// A small valid image, and where its header states its width and height.
    struct Sample {
        bytes: Vec<u8>,
        dimensions: Vec<Field>,
        /// PNG: its header is checksummed, which a rewrite can fix so that the decoder reads on.
        png: bool,
    }

    /// An integer field of a header.
    struct Field {
        offset: usize,
        width: usize,
        big_endian: bool,
    }

    fn encode(image: DynamicImage, format: ImageFormat) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), format).ok()?;
        Some(bytes)
    }

    fn progressive_jpeg(rgb: &RgbImage) -> Vec<u8> {
        let mut compressor = turbojpeg::Compressor::new().unwrap();
        compressor.set_progressive(true).unwrap();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let source = turbojpeg::Image {
            pixels: rgb.as_raw().as_slice(),
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        };
        compressor.compress_to_vec(source).unwrap()
    }

    /// Every format ember reads, in colour, grey and with alpha where the format has them. WebP is skipped when
    /// the image crate cannot encode it.
    static SAMPLES: LazyLock<Vec<Sample>> = LazyLock::new(|| {
        let rgb = RgbImage::from_fn(13, 7, |x, y| ::image::Rgb([x as u8 * 19, y as u8 * 36, (x * y) as u8]));
        let colour = DynamicImage::ImageRgb8(rgb.clone());
        let encoded = [
            (ImageFormat::Png, encode(colour.clone(), ImageFormat::Png)),
            (ImageFormat::Png, encode(DynamicImage::ImageLuma8(colour.to_luma8()), ImageFormat::Png)),
            (ImageFormat::Png, encode(DynamicImage::ImageRgba8(colour.to_rgba8()), ImageFormat::Png)),
            (ImageFormat::Jpeg, encode(colour.clone(), ImageFormat::Jpeg)),
            (ImageFormat::Jpeg, Some(progressive_jpeg(&rgb))),
            (ImageFormat::Gif, encode(colour.clone(), ImageFormat::Gif)),
            (ImageFormat::Bmp, encode(colour.clone(), ImageFormat::Bmp)),
            (ImageFormat::WebP, encode(colour.clone(), ImageFormat::WebP)),
            (ImageFormat::WebP, encode(DynamicImage::ImageRgba8(colour.to_rgba8()), ImageFormat::WebP)),
        ];
        encoded
            .into_iter()
            .filter_map(|(format, bytes)| bytes.map(|bytes| (format, bytes)))
            .map(|(format, bytes)| Sample {
                dimensions: header_fields(format, &bytes),
                png: format == ImageFormat::Png,
                bytes,
            })
            .collect()
    });

    fn find(bytes: &[u8], pattern: &[u8]) -> Option<usize> {
        bytes.windows(pattern.len()).position(|window| window == pattern)
    }

    /// Where `bytes`, a `format` image, states its dimensions.
    fn header_fields(format: ImageFormat, bytes: &[u8]) -> Vec<Field> {
        let field = |offset, width, big_endian| Field { offset, width, big_endian };
        let pair = |offset: Option<usize>, width, big_endian| {
            offset.map(|o| [field(o, width, big_endian), field(o + width, width, big_endian)]).into_iter().flatten()
        };
        match format {
            ImageFormat::Png => pair(Some(16), 4, true).collect(),
            ImageFormat::Bmp => pair(Some(18), 4, false).collect(),
            // The logical screen, then the first frame's descriptor.
            ImageFormat::Gif => {
                pair(Some(6), 2, false).chain(pair(gif_frame(bytes).map(|at| at + 5), 2, false)).collect()
            }
            // SOF0 (baseline) or SOF2 (progressive): length, precision, height, width.
            ImageFormat::Jpeg => {
                pair(find(bytes, &[0xFF, 0xC0]).or(find(bytes, &[0xFF, 0xC2])).map(|at| at + 5), 2, true).collect()
            }
            // VP8L packs 14-bit sizes into 4 bytes after its signature byte; VP8X has 24-bit canvas sizes.
            _ => find(bytes, b"VP8L")
                .map(|at| field(at + 9, 4, false))
                .into_iter()
                .chain(pair(find(bytes, b"VP8X").map(|at| at + 12), 3, false))
                .chain(pair(find(bytes, b"VP8 ").map(|at| at + 14), 2, false))
                .collect(),
        }
    }

    /// The offset of a GIF's first image descriptor, past the colour table and any extensions.
    fn gif_frame(bytes: &[u8]) -> Option<usize> {
        let packed = *bytes.get(10)?;
        let mut at = 13 + if packed & 0x80 != 0 { 3 << ((packed & 7) + 1) } else { 0 };
        loop {
            match *bytes.get(at)? {
                0x2C => return Some(at),
                0x21 => {
                    at += 2;
                    while *bytes.get(at)? != 0 {
                        at += usize::from(bytes[at]) + 1;
                    }
                    at += 1;
                }
                _ => return None,
            }
        }
    }

    /// PNG's header chunk is followed by its CRC.
    fn fix_png_header_crc(bytes: &mut [u8]) {
        if bytes.len() >= 33 && &bytes[12..16] == b"IHDR" {
            let mut crc = flate2::Crc::new();
            crc.update(&bytes[12..29]);
            bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        }
    }

    fn within_limits(width: u32, height: u32) -> Result<(), TestCaseError> {
        let (long, short) = (u64::from(width.max(height)), u64::from(width.min(height)));
        prop_assert!(long * short <= LIMITS.max_pixels, "{width}x{height} is over the pixel limit");
        prop_assert!(short > 0 && long <= short * u64::from(LIMITS.max_aspect), "{width}x{height} is over the aspect");
        Ok(())
    }

    /// Preprocessing gives exactly the model's crop, or an error.
    fn check_preprocessing(image: DynamicImage, prep: &ImagePreprocessing) -> Result<(), TestCaseError> {
        match resize_and_crop(image, prep) {
            Ok(cropped) => prop_assert_eq!(cropped.dimensions(), (prep.crop, prep.crop)),
            Err(error) => prop_assert!(!matches!(error, TaskError::Failed(_)), "{error:?}"),
        }
        Ok(())
    }

    /// Probing and decoding `bytes` refuse them with a client error, or give an image within the limits that
    /// preprocesses to the crop.
    fn check_image(bytes: &[u8]) -> Result<(), TestCaseError> {
        let probed = match probe(bytes, LIMITS) {
            Ok(probed) => probed,
            Err(error) => {
                prop_assert!(decode(bytes, LIMITS).is_err());
                return assert_client_error(error.clone());
            }
        };
        within_limits(probed.width, probed.height)?;
        let image = match decode_probed(bytes, probed) {
            Ok(image) => image,
            Err(error) => return assert_client_error(error.clone()),
        };
        prop_assert_eq!((image.width(), image.height()), (probed.width, probed.height), "not the probed size");
        within_limits(image.width(), image.height())?;
        // The preprocessing a model uses, and a small one.
        for prep in [prep(256, 224), prep(8, 4)] {
            check_preprocessing(image.clone(), &prep)?;
        }
        Ok(())
    }

    /// Magic numbers that get arbitrary bytes past format detection.
    fn magic() -> impl Strategy<Value = &'static [u8]> {
        select(vec![
            &b""[..],
            b"\x89PNG\r\n\x1a\n",
            b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR",
            b"\xff\xd8\xff",
            b"\xff\xd8\xff\xe0\0\x10JFIF\0",
            b"GIF89a",
            b"GIF87a",
            b"BM",
            b"RIFF\0\0\0\0WEBPVP8L",
            b"RIFF\0\0\0\0WEBPVP8X",
            b"RIFF\0\0\0\0WEBPVP8 ",
        ])
    }

    /// Valid preprocessing settings (model.toml requires 1 <= crop <= resize).
    fn preprocessing() -> impl Strategy<Value = ImagePreprocessing> {
        prop_oneof![
            Just(prep(256, 224)),
            Just(prep(8, 4)),
            (1..=64u32).prop_flat_map(|crop| (crop..=crop + 64).prop_map(move |resize| prep(resize, crop))),
        ]
    }

    proptest! {
        #![proptest_config(config(2048))]

        #[test]
        fn arbitrary_bytes_are_refused_or_decoded_within_limits(magic in magic(), tail in vec(any::<u8>(), 0..2048)) {
            check_image(&[magic, &tail].concat())?;
        }

        #[test]
        fn mutated_images_are_refused_or_decoded_within_limits(
            sample in any::<Index>(),
            rewrite in proptest::option::of((any::<Index>(), interesting_integer())),
            mutations in mutations(6),
            fix_crc in any::<bool>(),
        ) {
            let sample = &SAMPLES[sample.index(SAMPLES.len())];
            let mut bytes = sample.bytes.clone();
            if let Some((field, value)) = rewrite.filter(|_| !sample.dimensions.is_empty()) {
                let Field { offset, width, big_endian } = sample.dimensions[field.index(sample.dimensions.len())];
                write_integer(&mut bytes, offset, width, big_endian, value);
            }
            let mut bytes = mutate(bytes, &mutations);
            if sample.png && fix_crc {
                fix_png_header_crc(&mut bytes);
            }
            check_image(&bytes)?;
        }

        #[test]
        fn preprocessing_gives_exactly_the_crop(
            width in 0..=1500u32,
            height in 0..=1500u32,
            prep in preprocessing(),
        ) {
            check_preprocessing(DynamicImage::ImageRgb8(RgbImage::new(width, height)), &prep)?;
        }
    }

    #[test]
    fn every_sample_decodes_and_has_its_dimensions_located() {
        assert!(SAMPLES.len() >= 7, "only {} sample images could be encoded", SAMPLES.len());
        for sample in SAMPLES.iter() {
            let image = decode(&sample.bytes, LIMITS).unwrap();
            assert_eq!((image.width(), image.height()), (13, 7));
            assert!(!sample.dimensions.is_empty(), "no dimension field found in {:?}", &sample.bytes[..16]);
        }
    }
}

/// The Open Inference Protocol's infer bodies, JSON and binary, checked against a signature.
mod codec {
    use serde_json::{json, Value};

    use super::*;
    use ember::http::v2::codec::{decode, Decoded};
    use ember::signature::{DataType, InputBounds, Limit, Signature, TensorSpec, ValueRange};

    const INPUT_NAMES: [&str; 3] = ["x", "y", "z"];

    /// One input of a model, with the bounds ember's signatures put on inputs: dimension and element limits, and a
    /// value range on INT64 token ids.
    #[derive(Debug, Clone)]
    struct SpecCase {
        datatype: DataType,
        shape: Vec<i64>,
        dim_limits: Vec<Option<i64>>,
        elements: Option<i64>,
        max_value: Option<i64>,
    }

    fn spec_case() -> impl Strategy<Value = SpecCase> {
        (
            select(DataType::ALL.to_vec()),
            vec(prop_oneof![Just(-1i64), 1..=3i64], 0..=3),
            vec(proptest::option::weighted(0.4, 1..=8i64), 0..=3),
            proptest::option::weighted(0.3, 1..=64i64),
            proptest::option::of(0..=300i64),
        )
            .prop_map(|(datatype, shape, dim_limits, elements, max_value)| SpecCase {
                datatype,
                shape,
                dim_limits,
                elements,
                max_value: max_value.filter(|_| datatype == DataType::Int64),
            })
    }

    fn signature(specs: &[SpecCase]) -> Signature {
        let limit = |max| Limit { max, setting: "fuzz.limit".into() };
        let spec =
            |name: &str, datatype, shape: &[i64]| TensorSpec { name: name.into(), datatype, shape: shape.to_vec() };
        Signature {
            inputs: specs.iter().zip(INPUT_NAMES).map(|(s, name)| spec(name, s.datatype, &s.shape)).collect(),
            outputs: vec![spec("out", DataType::Fp32, &[-1]), spec("out2", DataType::Int64, &[-1, 2])],
            bounds: specs
                .iter()
                .map(|s| InputBounds {
                    dims: s.dim_limits.iter().map(|max| max.map(limit)).collect(),
                    elements: s.elements.map(limit),
                    values: s.max_value.map(|max| ValueRange { min: 0, max, what: "fuzz ids".into() }),
                })
                .collect(),
        }
    }

    /// A dimension of a request's shape.
    #[derive(Debug, Clone)]
    enum Dim {
        /// The spec's fixed size, or this for a free (-1) one.
        Fit(i64),
        /// Whatever the client claims.
        Raw(i64),
    }

    fn dim() -> impl Strategy<Value = Dim> {
        let claims = vec![-1, -2, i64::MIN, 1 << 31, 1 << 32, 1 << 40, 1 << 62, i64::MAX];
        prop_oneof![
            30 => (0..=4i64).prop_map(Dim::Fit),
            1 => prop_oneof![select(claims), -(1i64 << 62)..=(1i64 << 62)].prop_map(Dim::Raw),
        ]
    }

    /// What the elements of `data` are.
    #[derive(Debug, Clone, Copy)]
    enum Values {
        /// Of the datatype's kind, mostly in range.
        Fit,
        /// Any JSON, nested arrays included.
        Mixed,
    }

    #[derive(Debug, Clone, Copy)]
    enum Payload {
        Json,
        Binary,
        Both,
        Neither,
    }

    /// The `binary_data_size` a binary input claims.
    #[derive(Debug, Clone)]
    enum Size {
        Exact,
        Off(i64),
        Raw(Value),
    }

    #[derive(Debug, Clone)]
    struct InputCase {
        /// Another signature input than the one at its position in the request.
        target: Option<Index>,
        /// Another name (the model lacks it), or none of its own.
        name: Option<&'static str>,
        /// Another datatype name than the spec's.
        datatype: Option<&'static str>,
        dims: Vec<Dim>,
        /// Use `dims` as they are instead of the spec's rank.
        rank_change: bool,
        /// How many values more or fewer than the shape holds.
        count_delta: Option<i64>,
        values: Values,
        payload: Payload,
        size: Size,
        /// Binary bytes more or fewer than the size claimed.
        bytes_delta: Option<i64>,
        /// The values and bytes of this input.
        seed: u64,
    }

    /// A flaw (`Some`) in a few cases in a hundred: inputs are rarely wrong in more than one way, so that whole
    /// requests are accepted often enough to check what they decode to.
    fn rarely<S: Strategy>(strategy: S) -> impl Strategy<Value = Option<S::Value>> {
        proptest::option::weighted(0.03, strategy)
    }

    fn input_case() -> impl Strategy<Value = InputCase> {
        let names = select(vec!["x", "y", "w", "", "X"]);
        let datatypes = select(vec!["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
            .prop_union(select(vec!["BYTES", "BF16", "UINT64", "fp32", ""]));
        let sizes = select(vec![json!(-1), json!("8"), json!(1.5), json!(u64::MAX), json!(1u64 << 62), json!(null)]);
        let payload = prop_oneof![
            20 => Just(Payload::Json),
            18 => Just(Payload::Binary),
            1 => Just(Payload::Both),
            1 => Just(Payload::Neither),
        ];
        let values = prop_oneof![30 => Just(Values::Fit), 1 => Just(Values::Mixed)];
        let size =
            prop_oneof![20 => Just(Size::Exact), 1 => (-9..=9i64).prop_map(Size::Off), 1 => sizes.prop_map(Size::Raw)];
        (
            (rarely(any::<Index>()), rarely(names), rarely(datatypes)),
            (vec(dim(), 0..=4), proptest::bool::weighted(0.03)),
            (rarely(-2..=2i64), values, payload),
            size,
            (rarely(-9..=9i64), any::<u64>()),
        )
            .prop_map(
                |(
                    (target, name, datatype),
                    (dims, rank_change),
                    (count_delta, values, payload),
                    size,
                    (bytes_delta, seed),
                )| {
                    InputCase {
                        target,
                        name,
                        datatype,
                        dims,
                        rank_change,
                        count_delta,
                        values,
                        payload,
                        size,
                        bytes_delta,
                        seed,
                    }
                },
            )
    }

    /// Builds no more values or bytes than this, whatever the shape claims.
    const MAX_BUILT: usize = 1 << 16;

    /// A tiny deterministic generator for the values and bytes of one input.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn leaf(random: &mut XorShift, datatype: DataType, values: Values) -> Value {
        let r = random.next();
        match values {
            Values::Fit if datatype == DataType::Bool => json!(r & 1 == 1),
            Values::Fit if datatype.is_float() => json!((r % 2001) as f64 / 8.0 - 125.0),
            // Small ids, and now and then one at the edge of a datatype or a vocabulary.
            Values::Fit if r.is_multiple_of(64) => json!([-1, 128, 256, 301, 32768][(r >> 8) as usize % 5]),
            Values::Fit => json!(r % 6),
            Values::Mixed => {
                let pool = [json!(null), json!("1"), json!(1e300), json!(-1), json!(256), json!(true), json!(1.5)];
                let more = [json!([]), json!([[1]]), json!({}), json!(u64::MAX), json!(i64::MIN), json!(-0.0)];
                let index = (r % 13) as usize;
                if index < pool.len() {
                    pool[index].clone()
                } else {
                    more[index - pool.len()].clone()
                }
            }
        }
    }

    /// The input's JSON, and its binary data when it has some.
    fn build_input(case: &InputCase, position: usize, signature: &Signature) -> (Value, Vec<u8>) {
        let count = signature.inputs.len();
        let index = case.target.map_or(position % count, |target| target.index(count));
        let spec = &signature.inputs[index];
        let name = case.name.unwrap_or(INPUT_NAMES[index]);
        let datatype_name = case.datatype.unwrap_or(spec.datatype.name());
        let datatype = DataType::parse(datatype_name).unwrap_or(spec.datatype);
        let shape: Vec<i64> = if case.rank_change {
            case.dims
                .iter()
                .map(|d| match *d {
                    Dim::Fit(n) | Dim::Raw(n) => n,
                })
                .collect()
        } else {
            let dim = |(i, &fixed): (usize, &i64)| match case.dims.get(i) {
                Some(Dim::Raw(n)) => *n,
                Some(Dim::Fit(n)) if fixed == -1 => *n,
                None if fixed == -1 => 1,
                _ => fixed,
            };
            spec.shape.iter().enumerate().map(dim).collect()
        };
        let elements = shape.iter().try_fold(1i64, |n, &d| n.checked_mul(d.max(0))).unwrap_or(i64::MAX);
        let count = (elements.saturating_add(case.count_delta.unwrap_or(0)).max(0) as usize).min(MAX_BUILT);
        let mut random = XorShift(case.seed | 1);
        let mut input = json!({"name": name, "shape": shape, "datatype": datatype_name});
        let mut binary = Vec::new();
        if matches!(case.payload, Payload::Json | Payload::Both) {
            let data: Vec<Value> = (0..count).map(|_| leaf(&mut random, datatype, case.values)).collect();
            // Nested like a [n, 2] shape, sometimes: the protocol accepts both.
            input["data"] = match case.seed % 4 {
                0 => json!(data.chunks(2).collect::<Vec<_>>()),
                _ => json!(data),
            };
        }
        if matches!(case.payload, Payload::Binary | Payload::Both) {
            let bytes = count.saturating_mul(datatype.byte_size());
            let size = match &case.size {
                Size::Exact => json!(bytes),
                Size::Off(delta) => json!(bytes as i64 + delta),
                Size::Raw(value) => value.clone(),
            };
            input["parameters"] = json!({ "binary_data_size": size });
            let length = (bytes as i64 + case.bytes_delta.unwrap_or(0)).clamp(0, MAX_BUILT as i64) as usize;
            binary = (0..length).map(|_| random.next() as u8).collect();
        }
        (input, binary)
    }

    /// How the request states the length of its JSON part.
    #[derive(Debug, Clone)]
    enum HeaderLength {
        Exact,
        Missing,
        Off(i64),
        Raw(usize),
    }

    #[derive(Debug, Clone)]
    struct RequestCase {
        inputs: Vec<InputCase>,
        /// How many of `inputs` the request holds, when not one per signature input.
        count: Option<usize>,
        parameters: Value,
        outputs: Value,
        header_length: HeaderLength,
        mutations: Vec<Mutation>,
    }

    fn request_case() -> impl Strategy<Value = RequestCase> {
        let parameters = prop_oneof![
            12 => Just(json!({})),
            2 => Just(json!({"binary_data_output": true})),
            1 => select(vec![json!({"binary_data_output": 1}), json!([])]),
        ];
        let outputs = prop_oneof![
            12 => Just(json!(null)),
            4 => select(vec![
                json!([{"name": "out"}]),
                json!([{"name": "out2", "parameters": {"binary_data": true}}, {"name": "out"}]),
            ]),
            1 => select(vec![
                json!([{"name": "out", "parameters": {"binary_data": "yes"}}]),
                json!([{"name": "nope"}]),
                json!([{"name": "out"}, {"name": "out"}]),
                json!([{"name": "out", "parameters": {"classification": 3}}]),
                json!({"name": "out"}),
            ]),
        ];
        let header_length = prop_oneof![
            30 => Just(HeaderLength::Exact),
            1 => Just(HeaderLength::Missing),
            1 => (-4..=4i64).prop_map(HeaderLength::Off),
            1 => any::<usize>().prop_map(HeaderLength::Raw),
        ];
        let mutations = prop_oneof![20 => Just(Vec::new()), 1 => vec(mutation(), 1..=3)];
        (vec(input_case(), 4), rarely(0..=4usize), parameters, outputs, header_length, mutations).prop_map(
            |(inputs, count, parameters, outputs, header_length, mutations)| RequestCase {
                inputs,
                count,
                parameters,
                outputs,
                header_length,
                mutations,
            },
        )
    }

    /// The body and the header length of a request.
    fn build_request(case: &RequestCase, signature: &Signature) -> (Vec<u8>, Option<usize>) {
        let count = case.count.unwrap_or(signature.inputs.len());
        let (inputs, binary): (Vec<Value>, Vec<Vec<u8>>) =
            case.inputs.iter().take(count).enumerate().map(|(i, input)| build_input(input, i, signature)).unzip();
        let request = json!({"id": "r", "parameters": case.parameters, "inputs": inputs, "outputs": case.outputs});
        let mut body = serde_json::to_vec(&request).unwrap();
        let json_length = body.len();
        body.extend(binary.concat());
        let header_length = match case.header_length {
            HeaderLength::Exact => Some(json_length),
            HeaderLength::Missing => None,
            HeaderLength::Off(delta) => Some(json_length.saturating_add_signed(delta as isize)),
            HeaderLength::Raw(length) => Some(length),
        };
        (mutate(body, &case.mutations), header_length)
    }

    /// A refusal is a client error; an accepted request has one tensor per input, each of the spec's datatype and
    /// an accepted shape, holding as many elements as its shape says, within its bounds.
    fn check_decoded(result: Result<Decoded, ApiError>, signature: &Signature) -> Result<(), TestCaseError> {
        let decoded = match result {
            Ok(decoded) => decoded,
            Err(error) => return assert_client_error(error.clone()),
        };
        prop_assert_eq!(decoded.inputs.len(), signature.inputs.len());
        for ((tensor, spec), bounds) in decoded.inputs.iter().zip(&signature.inputs).zip(&signature.bounds) {
            let shape = tensor.size();
            prop_assert!(spec.accepts(&shape), "shape {:?} for spec {:?}", shape, spec.shape);
            prop_assert_eq!(tensor.kind(), spec.datatype.kind());
            prop_assert!(shape.iter().all(|&d| d >= 0), "shape {:?}", shape);
            let product = shape.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
            // The element count libtorch holds, not one computed from the shape.
            let held = tensor.f_reshape([-1]).map_err(|e| TestCaseError::fail(e.to_string()))?.size()[0];
            prop_assert_eq!(Some(held), product, "shape {:?}", shape);
            for (size, limit) in shape.iter().zip(&bounds.dims) {
                if let Some(limit) = limit {
                    prop_assert!(*size <= limit.max, "shape {:?} is over the dimension limit {}", shape, limit.max);
                }
            }
            if let Some(limit) = &bounds.elements {
                prop_assert!(held <= limit.max, "{} elements, over the limit {}", held, limit.max);
            }
            if let (Some(range), true) = (&bounds.values, held > 0) {
                let (min, max) = (tensor.min().int64_value(&[]), tensor.max().int64_value(&[]));
                prop_assert!(range.min <= min && max <= range.max, "values {min}..={max} outside {range:?}");
            }
        }
        for (i, wanted) in decoded.outputs.iter().enumerate() {
            prop_assert!(wanted.index < signature.outputs.len());
            prop_assert!(decoded.outputs[..i].iter().all(|w| w.index != wanted.index), "an output is wanted twice");
        }
        Ok(())
    }

    /// JSON-ish bytes: the protocol's tokens in any order.
    fn json_soup() -> impl Strategy<Value = Vec<u8>> {
        const TOKENS: &str = r#"{ } [ ] , : "inputs" "outputs" "name" "x" "shape" "datatype" "INT64" "FP32" "BOOL"
            "data" "parameters" "binary_data_size" "binary_data_output" "id" 0 -1 3 1e999 4611686018427387904
            -9223372036854775808 18446744073709551616 1.5 true null "\ud800" "\u0000""#;
        let tokens: Vec<&str> = TOKENS.split_whitespace().chain([" "]).collect();
        vec(select(tokens), 0..96).prop_map(|tokens| tokens.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(config(4096))]

        #[test]
        fn structured_requests_are_refused_or_decoded_within_bounds(
            specs in vec(spec_case(), 1..=3),
            case in request_case(),
        ) {
            let signature = signature(&specs);
            let (body, header_length) = build_request(&case, &signature);
            check_decoded(decode(&body, header_length, &signature), &signature)?;
        }

        #[test]
        fn arbitrary_bodies_are_refused_or_decoded_within_bounds(
            specs in vec(spec_case(), 1..=3),
            body in prop_oneof![json_soup(), vec(any::<u8>(), 0..512)],
            binary in vec(any::<u8>(), 0..64),
            header_length in proptest::option::of(any::<Index>()),
        ) {
            let signature = signature(&specs);
            let header_length = header_length.map(|at| at.index(body.len() + binary.len() + 2));
            let body = [body, binary].concat();
            check_decoded(decode(&body, header_length, &signature), &signature)?;
        }

        /// The protocol's binary BOOL is one byte per element, 0 or 1 (JSON data is held to true and false).
        #[test]
        fn binary_bools_are_refused_unless_0_or_1(bytes in vec(any::<u8>(), 1..=8)) {
            // Minimal input, for a model input `x` of BOOL [-1]: the JSON
            //   {"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":1}}]}
            // then the byte 0x02, with inference-header-content-length the length of the JSON.
            let signature = signature(&[SpecCase {
                datatype: DataType::Bool,
                shape: vec![-1],
                dim_limits: vec![],
                elements: None,
                max_value: None,
            }]);
            let header = serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [bytes.len()],
                "datatype": "BOOL", "parameters": {"binary_data_size": bytes.len()}}]})).unwrap();
            if let Ok(decoded) = decode(&[&header[..], &bytes].concat(), Some(header.len()), &signature) {
                let mut held = vec![0u8; bytes.len()];
                decoded.inputs[0].copy_data_u8(&mut held, bytes.len());
                prop_assert!(held.iter().all(|&b| b <= 1), "BOOL bytes {:?} decoded to {:?}", bytes, held);
            }
        }
    }
}

/// Request bodies: multipart forms, JSON objects, base64 images and query strings.
mod body {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde_json::{json, Map, Value};

    use super::*;
    use ember::http::body::{parse_json, query_params, read_json_image, read_multipart};

    /// A typed body, as routes parse theirs.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Typed {
        top_k: Option<i64>,
        text: Option<String>,
        scores: Option<Vec<f32>>,
    }

    /// A part of a multipart form.
    #[derive(Debug, Clone)]
    struct Part {
        name: &'static str,
        data: Vec<u8>,
        filename: bool,
        content_type: bool,
    }

    const FILES: [&str; 2] = ["content", "style"];

    fn part() -> impl Strategy<Value = Part> {
        let text = prop_oneof!["[ -~]{0,24}", "-?[0-9]{1,3}|true|false"].prop_map(String::into_bytes);
        let names = select(vec!["image", "content", "style", "top_k", "note", ""]);
        // Files hold any bytes and other fields text, but for one part in ten.
        (names, text, vec(any::<u8>(), 0..512), proptest::bool::weighted(0.1), any::<bool>(), any::<bool>()).prop_map(
            |(name, text, bytes, swap, filename, content_type)| {
                let file = ["image"].iter().chain(&FILES).any(|file| *file == name);
                Part { name, data: if file != swap { bytes } else { text }, filename, content_type }
            },
        )
    }

    /// RFC 2046 boundaries: 1 to 70 of its characters, not ending in a space.
    fn boundary() -> impl Strategy<Value = String> {
        "[0-9A-Za-z'()+_,./:=?-][0-9A-Za-z'()+_,./:=? -]{0,68}[0-9A-Za-z'()+_,./:=?-]|[0-9A-Za-z]"
    }

    fn multipart_body(boundary: &str, parts: &[Part]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in parts {
            let filename = if part.filename { "; filename=\"f.bin\"" } else { "" };
            let content_type = if part.content_type { "Content-Type: application/octet-stream\r\n" } else { "" };
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"{filename}\r\n{content_type}\r\n",
                    part.name
                )
                .bytes(),
            );
            body.extend(&part.data);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").bytes());
        body
    }

    /// What `read_multipart` must answer for an intact form: each of `files` (the last part of its name), when
    /// every one is there and not empty and every other part is UTF-8 text.
    fn expected<const N: usize>(parts: &[Part], files: [&str; N]) -> Option<[Vec<u8>; N]> {
        if parts.iter().any(|p| !files.contains(&p.name) && std::str::from_utf8(&p.data).is_err()) {
            return None;
        }
        let found = files.map(|file| parts.iter().rev().find(|p| p.name == file).map(|p| p.data.clone()));
        found
            .iter()
            .all(|data| data.as_ref().is_some_and(|d| !d.is_empty()))
            .then(|| found.map(Option::unwrap_or_default))
    }

    /// Reads `body` as a form with `files`; checks the answer against `expected` when given.
    fn check_multipart<const N: usize>(
        body: &[u8],
        content_type: &mime::Mime,
        files: [&str; N],
        expected: Option<Option<[Vec<u8>; N]>>,
    ) -> Result<(), TestCaseError> {
        let mut params = Map::new();
        let read =
            RUNTIME.block_on(read_multipart(Bytes::copy_from_slice(body), content_type, files, "a form", &mut params));
        match (read, expected) {
            (Ok(files), Some(Some(expected))) => {
                prop_assert!(files.iter().zip(&expected).all(|(got, want)| got[..] == want[..]), "wrong file bytes")
            }
            (Ok(_), Some(None)) => prop_assert!(false, "an invalid form was accepted"),
            (Ok(files), None) => prop_assert!(files.iter().all(|file| !file.is_empty()), "an empty file was accepted"),
            (Err(error), Some(Some(_))) => prop_assert!(false, "a valid form was refused: {error:?}"),
            (Err(error), _) => assert_client_error(error.clone())?,
        }
        Ok(())
    }

    fn form_type(boundary: &str) -> mime::Mime {
        format!("multipart/form-data; boundary=\"{boundary}\"").parse().unwrap()
    }

    /// Checks the JSON parsers on `body` against serde_json's own reading of it.
    fn check_json(body: &[u8]) -> Result<(), TestCaseError> {
        let starts_as_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let object = serde_json::from_slice::<Value>(body).ok().filter(Value::is_object);
        match parse_json::<Map<String, Value>>(body) {
            Ok(parsed) => prop_assert_eq!(Some(&Value::Object(parsed)), object.as_ref()),
            Err(error) => {
                assert_client_error(error.clone())?;
                prop_assert!(object.is_none(), "a JSON object was refused: {error:?}");
            }
        }
        match parse_json::<Typed>(body) {
            Ok(parsed) => prop_assert_eq!(Some(parsed), serde_json::from_slice::<Typed>(body).ok()),
            Err(error) => {
                assert_client_error(error.clone())?;
                prop_assert!(!starts_as_object || serde_json::from_slice::<Typed>(body).is_err(), "{error:?}");
            }
        }
        match read_json_image(body) {
            Ok((_, params)) => prop_assert!(object.is_some() && !params.contains_key("image")),
            Err(error) => assert_client_error(error.clone())?,
        }
        Ok(())
    }

    /// How a JSON image body carries its base64.
    fn json_image_body(image: &[u8], data_url: bool, padding: &str, other: Value) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(image);
        let prefix = if data_url { "data:image/png;base64," } else { "" };
        serde_json::to_vec(&json!({"top_k": other, "image": format!("{prefix}{padding}{encoded}{padding}")})).unwrap()
    }

    proptest! {
        #![proptest_config(config(2048))]

        #[test]
        fn multipart_forms_are_read_or_refused(
            boundary in boundary(),
            parts in vec(part(), 0..=5),
            mutations in mutations(4),
            two_files in any::<bool>(),
        ) {
            let body = multipart_body(&boundary, &parts);
            let delimiter = format!("--{boundary}").into_bytes();
            let in_data = parts.iter().any(|p| p.data.windows(delimiter.len()).any(|w| w == delimiter));
            let intact = mutations.is_empty() && !in_data;
            let body = mutate(body, &mutations);
            let content_type = form_type(&boundary);
            if two_files {
                check_multipart(&body, &content_type, FILES, intact.then(|| expected(&parts, FILES)))?;
            } else {
                check_multipart(&body, &content_type, ["image"], intact.then(|| expected(&parts, ["image"])))?;
            }
        }

        #[test]
        fn arbitrary_multipart_bodies_are_refused_or_read(
            content_type in "multipart/form-data(; boundary=[!-~]{0,12}|; boundary=\"\")?",
            body in vec(any::<u8>(), 0..1024),
        ) {
            if let Ok(content_type) = content_type.parse::<mime::Mime>() {
                check_multipart(&body, &content_type, ["image"], None)?;
            }
        }

        #[test]
        fn json_bodies_are_parsed_like_serde_json(
            body in prop_oneof![
                vec(any::<u8>(), 0..256),
                vec(select(vec!["{", "}", "[", "]", ",", ":", " ", "\x0c", "\"top_k\"", "\"text\"", "\"scores\"",
                    "\"image\"", "\"x\"", "3", "-1", "1e999", "9223372036854775808", "1.5", "true", "null",
                    "\"\\ud800\"", "\"aGVsbG8=\""]), 0..48).prop_map(|t| t.concat().into_bytes()),
            ],
        ) {
            check_json(&body)?;
        }

        #[test]
        fn json_images_decode_to_their_bytes(
            image in vec(any::<u8>(), 0..512),
            data_url in any::<bool>(),
            padding in select(vec!["", " ", "\n", "\t "]),
            other in select(vec![json!(3), json!("x"), json!(null), json!([1])]),
            mutations in mutations(3),
        ) {
            let body = json_image_body(&image, data_url, padding, other.clone());
            let intact = mutations.is_empty();
            let body = mutate(body, &mutations);
            check_json(&body)?;
            if intact {
                let (decoded, params) = read_json_image(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&decoded[..], &image[..]);
                prop_assert_eq!(params.get("top_k"), Some(&other));
            }
        }

        #[test]
        fn query_strings_are_parsed_or_refused(
            query in prop_oneof![
                any::<String>(),
                "([a-z_%+0-9]{0,6}(=[a-z0-9%+.&=-]{0,8})?&?){0,6}",
                vec(any::<u8>(), 0..128).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ],
        ) {
            match query_params(Some(&query)) {
                Ok(params) => prop_assert!(params.len() <= query.split('&').count()),
                Err(error) => assert_client_error(error.clone())?,
            }
        }
    }
}

/// The sentiment model's tokenizer: any text becomes at most `max_tokens` ids of its vocabulary.
mod tokenizer {
    use std::path::Path;

    use super::*;
    use ember::model_toml::TextPreprocessing;
    use ember::tasks::sentiment::{LongTexts, TextClassifier};

    /// The tokenizer at the smallest `text.max_tokens` model.toml allows and at larger ones, truncating and
    /// cutting windows (the smallest stride, one that overlaps, one that just touches).
    static CLASSIFIERS: LazyLock<Vec<TextClassifier>> = LazyLock::new(|| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sentiment/tokenizer.json");
        let labels = vec!["negative".to_string(), "positive".to_string()];
        [(2, None), (3, None), (3, Some(1)), (16, Some(10)), (16, Some(14)), (128, Some(96)), (512, None)]
            .into_iter()
            .map(|(max_tokens, window_stride)| {
                let text = TextPreprocessing { max_tokens, window_stride, max_windows: 64 };
                TextClassifier::load(&file, labels.clone(), &text).unwrap()
            })
            .collect()
    });

    const WORDS: [&str; 12] =
        ["the", "film", "was", "unbelievably", "good", "!", "😀", "naïve", "東京", "don't", "[SEP]", "[CLS]"];

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any::<String>(),
            2 => vec(any::<u8>(), 0..1024).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            2 => "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{200b}-\\u{200f}\\u{2028}\\u{feff}\\u{fffd} a-z]{0,256}",
            1 => vec(select(WORDS.to_vec()), 0..2000).prop_map(|words| words.join(" ")),
            // Up to about 100 KB: one unit repeated, with or without spaces.
            1 => ("[^\\x00]{1,8}|[a-z]{1,8} ", 1..=100_000usize)
                .prop_map(|(unit, bytes)| unit.repeat(bytes / unit.len() + 1)),
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn any_text_becomes_windows_within_max_tokens(text in text(), which in any::<Index>()) {
            let classifier = &CLASSIFIERS[which.index(CLASSIFIERS.len())];
            match classifier.windows(&text) {
                Ok(windows) => {
                    let max_tokens = classifier.max_tokens;
                    let limit = match classifier.long_texts() {
                        LongTexts::Truncate => 1,
                        LongTexts::Windows { max_windows, .. } => max_windows,
                    };
                    prop_assert!((1..=limit).contains(&windows.len()), "{} windows, limit {limit}", windows.len());
                    let vocabulary = classifier.vocabulary_size();
                    for window in &windows {
                        let ids = window.ids();
                        prop_assert!(ids.len() <= max_tokens, "{} tokens, over max_tokens {max_tokens}", ids.len());
                        prop_assert!(ids.iter().all(|&id| (id as usize) < vocabulary), "an id outside the vocabulary");
                    }
                    prop_assert_eq!(classifier.tokenize(&text).map(|t| t.ids().to_vec()).ok(), Some(windows[0].ids().to_vec()));
                }
                Err(error) => assert_client_error(error.clone())?,
            }
        }
    }
}

/// Fine-tuning uploads: archives are unpacked only under their folder, within the byte and entry limits.
mod archive {
    use std::io::Write;
    use std::path::Path;

    use super::*;
    use ember::train::upload::{unpack, UnpackLimits, Unpacked};

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        File,
        Dir,
        Symlink,
        HardLink,
        Fifo,
        /// A file whose name comes in a GNU long-name record (tar) before its header.
        LongName,
    }

    #[derive(Debug, Clone)]
    struct Entry {
        name: String,
        kind: Kind,
        data: Vec<u8>,
        /// Where a link points.
        target: &'static str,
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let hostile = vec![
            "a.txt",
            "d/b.txt",
            "d/",
            "d/e/f.bin",
            "./c.txt",
            "../x.txt",
            "d/../../x.txt",
            "/tmp/x.txt",
            "d//g.txt",
            "",
            ".",
            "..",
            ".hidden",
            "__MACOSX/y",
            "d/./h",
            "x\\..\\y",
            "d",
            "d/b.txt/z",
        ];
        let name = prop_oneof![3 => select(hostile).prop_map(String::from), 1 => "[a-z./\\\\]{1,40}"];
        let kind = prop_oneof![
            8 => Just(Kind::File),
            2 => Just(Kind::Dir),
            1 => Just(Kind::Symlink),
            1 => Just(Kind::HardLink),
            1 => Just(Kind::Fifo),
            1 => Just(Kind::LongName),
        ];
        let data = prop_oneof![4 => vec(any::<u8>(), 0..2048), 1 => (0..200_000usize).prop_map(|n| vec![0; n])];
        let target = select(vec!["../../outside", "/etc/passwd", "a.txt", "d"]);
        (name, kind, data, target).prop_map(|(name, kind, data, target)| Entry { name, kind, data, target })
    }

    /// A tar header with the raw name and link target a hostile archive holds (`set_path` would refuse `..`).
    fn tar_header(kind: tar::EntryType, name: &[u8], size: usize, target: &str) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size as u64);
        header.set_mode(0o644);
        let old = header.as_old_mut();
        let name = &name[..name.len().min(old.name.len())];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        header.set_cksum();
        header
    }

    fn tar_gz(entries: &[Entry], mutations: &[Mutation]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            if let Kind::LongName = entry.kind {
                // Climbing out with `..`, or just long.
                let prefix = if entry.data.len() % 2 == 0 { "../" } else { "l/" };
                let long = format!("{}{}\0", prefix.repeat(40), entry.name);
                let record = tar_header(tar::EntryType::GNULongName, b"././@LongLink", long.len(), "");
                builder.append(&record, long.as_bytes()).unwrap();
            }
            let (kind, data) = match entry.kind {
                Kind::File | Kind::LongName => (tar::EntryType::Regular, &entry.data[..]),
                Kind::Dir => (tar::EntryType::Directory, &[][..]),
                Kind::Symlink => (tar::EntryType::Symlink, &[][..]),
                Kind::HardLink => (tar::EntryType::Link, &[][..]),
                Kind::Fifo => (tar::EntryType::Fifo, &[][..]),
            };
            let header = tar_header(kind, entry.name.as_bytes(), data.len(), entry.target);
            builder.append(&header, data).unwrap();
        }
        let raw = mutate(builder.into_inner().unwrap(), mutations);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&raw).unwrap();
        gzip.finish().unwrap()
    }

    fn zip_archive(entries: &[Entry], deflate: bool) -> Vec<u8> {
        let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for entry in entries {
            // The writer refuses some entries (a name given twice): a hostile archive is made without it.
            let _ = match entry.kind {
                Kind::File | Kind::HardLink | Kind::Fifo | Kind::LongName => {
                    writer.start_file(entry.name.as_str(), options).and_then(|()| Ok(writer.write_all(&entry.data)?))
                }
                Kind::Dir => writer.add_directory(entry.name.as_str(), options),
                Kind::Symlink => writer.add_symlink(entry.name.as_str(), entry.target, options),
            };
        }
        writer.finish().unwrap().into_inner()
    }

    /// Sums the bytes of the regular files under `dir` and counts its links, never following one.
    fn walk(dir: &Path) -> (u64, usize) {
        let (mut bytes, mut links) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.file_type().is_symlink() {
                links += 1;
            } else if metadata.is_dir() {
                let (more_bytes, more_links) = walk(&path);
                bytes += more_bytes;
                links += more_links;
            } else {
                bytes += metadata.len();
            }
        }
        (bytes, links)
    }

    /// Unpacks `data` into a folder `a` of an empty folder: nothing may appear beside `a`, no link under it, and
    /// no upload may write more than `limits.max_bytes` (a single file is written as it came, or refused).
    fn check_unpack(data: &[u8], file_name: &str, limits: UnpackLimits) -> Result<(), TestCaseError> {
        let root = tempfile::tempdir().unwrap();
        let into = root.path().join("a");
        std::fs::create_dir(&into).unwrap();
        let result = unpack(data, file_name, &into, limits);
        let beside: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(beside, vec![std::ffi::OsString::from("a")], "written outside the folder");
        let (bytes, links) = walk(&into);
        prop_assert_eq!(links, 0, "a link was written");
        let archive = data.starts_with(b"PK\x03\x04") || data.starts_with(&[0x1f, 0x8b]);
        prop_assert!(bytes <= limits.max_bytes, "{bytes} bytes written; the limit is {}", limits.max_bytes);
        match &result {
            Ok(Unpacked::File(path)) => {
                prop_assert!(
                    !archive && path.parent() == Some(into.as_path()),
                    "{} is not in the folder",
                    path.display()
                );
                prop_assert_eq!(bytes, data.len() as u64, "a single file is written as it came");
            }
            Ok(Unpacked::Folder(path)) => prop_assert!(archive && path.starts_with(&into), "{}", path.display()),
            Err(_) => {}
        }
        Ok(())
    }

    /// The names a single-file upload may claim.
    const FILE_NAMES: [&str; 9] = ["data.csv", "../../x.csv", "/etc/x", "..", ".", "", ".hidden", "a/b.jsonl", "a\0b"];

    fn limits() -> impl Strategy<Value = UnpackLimits> {
        (0..=300_000u64, 0..=12usize).prop_map(|(max_bytes, max_entries)| UnpackLimits { max_bytes, max_entries })
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn tar_gz_archives_stay_in_their_folder_and_limits(
            entries in vec(entry(), 0..=8),
            mutations in mutations(4),
            compressed_mutations in prop_oneof![8 => Just(Vec::new()), 1 => vec(mutation(), 1..=2)],
            limits in limits(),
        ) {
            let archive = mutate(tar_gz(&entries, &mutations), &compressed_mutations);
            check_unpack(&archive, "data.tar.gz", limits)?;
        }

        #[test]
        fn zip_archives_stay_in_their_folder_and_limits(
            entries in vec(entry(), 0..=8),
            deflate in any::<bool>(),
            mutations in mutations(4),
            limits in limits(),
        ) {
            check_unpack(&mutate(zip_archive(&entries, deflate), &mutations), "data.zip", limits)?;
        }

        #[test]
        fn arbitrary_uploads_stay_in_their_folder(
            magic in select(vec![&b""[..], b"PK\x03\x04", b"\x1f\x8b", b"\x1f\x8b\x08\0\0\0\0\0\0\xff"]),
            tail in vec(any::<u8>(), 0..1024),
            file_name in select(FILE_NAMES.to_vec()),
            limits in limits(),
        ) {
            check_unpack(&[magic, &tail].concat(), file_name, limits)?;
        }
    }
}
