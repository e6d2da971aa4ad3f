//! Training data as read from disk: image folders and IDX files (image classification), CSV and JSONL (text
//! classification), plain text (text generation). Every problem is a `TrainError::Dataset` naming the file.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use ::image::{DynamicImage, GrayImage};

use super::TrainError;
use crate::model_toml::ImagePreprocessing;
use crate::rng::Rng;
use crate::tasks::image;

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

fn bad(message: impl Into<String>) -> TrainError {
    TrainError::Dataset(message.into())
}

fn read(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
}

/// Labelled examples of any kind: `labels[i]` indexes `classes`.
#[derive(Debug)]
pub struct Labelled<T> {
    pub examples: T,
    pub labels: Vec<i64>,
    pub classes: Vec<String>,
}

/// Images resized and cropped to `side` x `side`, 8-bit RGB, one after another (HWC).
#[derive(Debug)]
pub struct Images {
    pub pixels: Vec<u8>,
    pub side: u32,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.side * self.side * 3) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }
}

impl<T> Labelled<T> {
    /// Re-expresses the labels in `target`'s order (the model's labels): every class of the data must be there.
    pub fn relabel(&mut self, target: &[String]) -> Result<(), TrainError> {
        let mapping = self
            .classes
            .iter()
            .map(|class| {
                target.iter().position(|t| t == class).map(|i| i as i64).ok_or_else(|| {
                    bad(format!("label `{class}` of the data is not one of the model's labels ({})", target.join(", ")))
                })
            })
            .collect::<Result<Vec<i64>, _>>()?;
        self.labels.iter_mut().for_each(|label| *label = mapping[*label as usize]);
        self.classes = target.to_vec();
        Ok(())
    }

    /// Training needs two classes or more, each seen at least once.
    pub fn check_trainable(&self, what: &str) -> Result<(), TrainError> {
        match self.classes.len() {
            0 => Err(bad(format!("{what} holds no examples"))),
            1 => {
                Err(bad(format!("{what} has only one class (`{}`): a classifier needs at least two", self.classes[0])))
            }
            _ => Ok(()),
        }
    }
}

/// Class names in sorted order and each example's index into them.
fn index_labels(names: Vec<String>) -> (Vec<i64>, Vec<String>) {
    let classes: Vec<String> = names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let labels = names.iter().map(|n| classes.binary_search(n).expect("collected above") as i64).collect();
    (labels, classes)
}

/// `<dir>/<label>/*.jpg|png|...`: one folder per class, named by it.
pub fn image_folder(dir: &Path, prep: &ImagePreprocessing) -> Result<Labelled<Images>, TrainError> {
    let mut class_dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read the folder {}: {e}", dir.display())))? {
        let path = entry.map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            class_dirs.push((name, path));
        } else if has_image_extension(&path) {
            return Err(bad(format!(
                "{} is directly in {}: images go in one folder per label, <dir>/<label>/{name}",
                name,
                dir.display()
            )));
        }
    }
    class_dirs.sort();
    let mut names = Vec::new();
    let mut pixels = Vec::new();
    for (class, class_dir) in &class_dirs {
        let files = image_files(class_dir)?;
        if files.is_empty() {
            return Err(bad(format!("the class folder {} holds no images (.jpg, .png, ...)", class_dir.display())));
        }
        for file in files {
            push_image(&mut pixels, decode_file(&file)?, prep, &file)?;
            names.push(class.clone());
        }
    }
    if names.is_empty() {
        return Err(bad(format!("{} holds no class folders: expected <dir>/<label>/*.jpg|png", dir.display())));
    }
    let (labels, classes) = index_labels(names);
    Ok(Labelled { examples: Images { pixels, side: prep.crop }, labels, classes })
}

/// An image file decoded, or an error naming the file and what is wrong with it.
pub(crate) fn decode_file(file: &Path) -> Result<DynamicImage, TrainError> {
    image::decode(&read(file)?, image::ImageLimits::TRAINING).map_err(|e| bad(format!("{}: {e}", file.display())))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))? {
        let path = entry.map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?.path();
        if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn push_image(
    pixels: &mut Vec<u8>,
    decoded: DynamicImage,
    prep: &ImagePreprocessing,
    file: &Path,
) -> Result<(), TrainError> {
    let rgb = image::resize_and_crop(decoded, prep).map_err(|e| bad(format!("{}: {}", file.display(), e)))?;
    pixels.extend_from_slice(rgb.as_raw());
    Ok(())
}

/// An IDX image file (`*-images-idx3-ubyte`, optionally `.gz`) and its labels beside it (`*-labels-idx1-ubyte`),
/// as Fashion-MNIST and MNIST ship. `class_names` names the label values 0, 1, ... in order.
pub fn idx_images(
    images_file: &Path,
    class_names: Option<Vec<String>>,
    prep: &ImagePreprocessing,
) -> Result<Labelled<Images>, TrainError> {
    let name = images_file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let labels_file = images_file.with_file_name(name.replace("images-idx3", "labels-idx1"));
    if labels_file == images_file {
        return Err(bad(format!("{} is not named *-images-idx3-ubyte[.gz]", images_file.display())));
    }
    let (image_dims, image_bytes) = idx_array(images_file, 3)?;
    let (label_dims, label_bytes) = idx_array(&labels_file, 1)?;
    let count = image_dims[0];
    if label_dims[0] != count {
        return Err(bad(format!(
            "{} holds {count} images but {} holds {} labels",
            images_file.display(),
            labels_file.display(),
            label_dims[0]
        )));
    }
    let largest = label_bytes.iter().copied().max().unwrap_or(0) as usize;
    let classes = match class_names {
        Some(names) if names.len() > largest => names,
        Some(names) => {
            return Err(bad(format!(
                "{} has label {largest} but only {} class names were given",
                labels_file.display(),
                names.len()
            )))
        }
        None => (0..=largest).map(|i| i.to_string()).collect(),
    };
    let (height, width) = (image_dims[1] as u32, image_dims[2] as u32);
    let mut pixels = Vec::with_capacity(count * (prep.crop * prep.crop * 3) as usize);
    for raw in image_bytes.chunks_exact((height * width) as usize) {
        let gray = GrayImage::from_raw(width, height, raw.to_vec()).expect("chunk has width x height bytes");
        push_image(&mut pixels, DynamicImage::ImageLuma8(gray), prep, images_file)?;
    }
    let labels = label_bytes.iter().map(|&l| i64::from(l)).collect();
    Ok(Labelled { examples: Images { pixels, side: prep.crop }, labels, classes })
}

/// An unsigned-byte IDX array with `dims` dimensions: its sizes and its data.
fn idx_array(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let raw = read(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("{}: cannot gunzip: {e}", path.display())))?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * dims;
    if bytes.len() < header || bytes[..3] != [0, 0, 8] || bytes[3] as usize != dims {
        return Err(bad(format!(
            "{} is not an IDX file of unsigned bytes with {dims} dimension(s) (magic 0x0000080{dims})",
            path.display()
        )));
    }
    let sizes: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let expected = sizes.iter().product::<usize>();
    if bytes.len() - header != expected || expected == 0 {
        return Err(bad(format!(
            "{}: the header says {sizes:?} ({expected} bytes) but {} bytes follow it",
            path.display(),
            bytes.len() - header
        )));
    }
    Ok((sizes, bytes[header..].to_vec()))
}

/// `text,label` rows of a CSV file with a header, or `{"text": ..., "label": ...}` lines of a JSONL file.
pub fn labelled_texts(path: &Path) -> Result<Labelled<Vec<String>>, TrainError> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let rows = match extension.as_str() {
        "csv" => csv_rows(path)?,
        "jsonl" | "ndjson" => jsonl_rows(path)?,
        _ => return Err(bad(format!("{}: expected a .csv or .jsonl file of text and label", path.display()))),
    };
    let (texts, names): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    let (labels, classes) = index_labels(names);
    Ok(Labelled { examples: texts, labels, classes })
}

fn csv_rows(path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let bytes = read(path)?;
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    let headers = reader.headers().map_err(|e| bad(format!("{}: {e}", path.display())))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            bad(format!(
                "{}: no `{name}` column in the header (found: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (text, label) = (column("text")?, column("label")?);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| bad(format!("{} line {line}: {e}", path.display())))?;
        rows.push(row(path, line, record.get(text), record.get(label))?);
    }
    Ok(rows)
}

fn jsonl_rows(path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let text = String::from_utf8(read(path)?).map_err(|_| bad(format!("{} is not UTF-8 text", path.display())))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("{} line {}: {e}", path.display(), i + 1)))?;
        let label = match value.get("label") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        rows.push(row(path, i + 1, value.get("text").and_then(|t| t.as_str()), label.as_deref())?);
    }
    Ok(rows)
}

fn row(path: &Path, line: usize, text: Option<&str>, label: Option<&str>) -> Result<(String, String), TrainError> {
    let missing = |field: &str| bad(format!("{} line {line}: `{field}` is missing or empty", path.display()));
    let text = text.filter(|t| !t.trim().is_empty()).ok_or_else(|| missing("text"))?;
    let label = label.map(str::trim).filter(|l| !l.is_empty()).ok_or_else(|| missing("label"))?;
    Ok((text.to_string(), label.to_string()))
}

/// A text file, or every `.txt` file of a folder (sorted, joined by blank lines), as bytes.
pub fn corpus(path: &Path) -> Result<Vec<u8>, TrainError> {
    let files = corpus_files(path)?;
    let mut bytes = Vec::new();
    for file in &files {
        if !bytes.is_empty() {
            bytes.extend_from_slice(CORPUS_SEPARATOR);
        }
        bytes.extend_from_slice(&read(file)?);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(format!("{} holds no text (.txt files)", path.display())));
    }
    Ok(bytes)
}

/// What joins the files of a text folder.
const CORPUS_SEPARATOR: &[u8] = b"\n\n";

/// The length `corpus` would have, from the files' sizes (nothing is read).
pub fn corpus_len(path: &Path) -> Result<usize, TrainError> {
    let files = corpus_files(path)?;
    let mut len = CORPUS_SEPARATOR.len() * files.len().saturating_sub(1);
    for file in &files {
        let size = std::fs::metadata(file).map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?.len();
        len = len.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
    }
    Ok(len)
}

/// A text file, or the .txt files of a folder in name order.
fn corpus_files(path: &Path) -> Result<Vec<PathBuf>, TrainError> {
    Ok(if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| bad(format!("cannot read the folder {}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    })
}

/// Indices 0..n shuffled by `seed` (Fisher-Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// A seeded split of `n` examples into (training, validation); both get at least one example.
pub fn split(n: usize, validation_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), TrainError> {
    if n < 2 {
        return Err(bad(format!("{n} example(s) cannot be split into training and validation: need at least 2")));
    }
    let validation = ((n as f64 * validation_fraction).round() as usize).clamp(1, n - 1);
    let mut order = shuffled(n, seed);
    let train = order.split_off(validation);
    Ok((train, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (train, validation) = split(100, 0.2, 7).unwrap();
        assert_eq!((train.len(), validation.len()), (80, 20));
        let mut all: Vec<usize> = train.iter().chain(&validation).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split(100, 0.2, 7).unwrap().1, validation);
        assert_ne!(split(100, 0.2, 8).unwrap().1, validation);
        assert!(split(1, 0.5, 0).is_err());
    }

    #[test]
    fn relabel_maps_names_and_refuses_unknown_ones() {
        let (labels, classes) = index_labels(vec!["pos".into(), "neg".into(), "pos".into()]);
        let mut data = Labelled { examples: (), labels, classes };
        data.relabel(&["positive".into(), "pos".into(), "neg".into()]).unwrap();
        assert_eq!(data.labels, vec![1, 2, 1]);
        let err = data.relabel(&["a".into(), "b".into()]).unwrap_err().to_string();
        assert!(err.contains("label `positive`"), "{err}");
    }

    #[test]
    fn csv_and_jsonl_name_the_missing_field_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "text,label\ngood film,pos\n\"bad, very\",\n").unwrap();
        let err = labelled_texts(&csv).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("`label`"), "{err}");
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"fine\", \"label\": 1}\n{\"label\": 0}\n").unwrap();
        let err = labelled_texts(&jsonl).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("`text`"), "{err}");
        std::fs::write(&csv, "sentence,label\nx,y\n").unwrap();
        assert!(labelled_texts(&csv).unwrap_err().to_string().contains("no `text` column"));
    }
}
