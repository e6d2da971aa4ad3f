//! Unpacking a fine-tuning upload safely: a zip or tar.gz of an image folder (or of text files), or a single
//! CSV / JSONL / text file. Only regular files and folders are written, under the job's own folder: absolute
//! paths, `..`, links and devices are refused, and the bytes written are counted against a limit, whatever the
//! archive's headers claim (decompression bombs stop there).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::TrainError;

/// Limits on what an upload may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

fn bad(message: impl Into<String>) -> TrainError {
    TrainError::Dataset(message.into())
}

/// What the upload was.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpacked {
    /// An archive, unpacked into this folder (or into its only top-level folder).
    Folder(PathBuf),
    /// A single file, saved under this name.
    File(PathBuf),
}

impl Unpacked {
    pub fn path(&self) -> &Path {
        match self {
            Unpacked::Folder(path) | Unpacked::File(path) => path,
        }
    }
}

/// Writes `bytes` into `into`, unpacking archives; anything else is saved as one file named `file_name` (its last
/// component only), which the caller chooses for the task.
pub fn unpack(bytes: &[u8], file_name: &str, into: &Path, limits: UnpackLimits) -> Result<Unpacked, TrainError> {
    let io = |context: String| move |error| TrainError::Io { context, error };
    if bytes.starts_with(b"PK\x03\x04") {
        unzip(bytes, into, limits)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        untar(flate2::read::GzDecoder::new(bytes), into, limits)?;
    } else {
        // A single file is written as it came: it too counts against what an upload may put on disk.
        if bytes.len() as u64 > limits.max_bytes {
            return Err(TrainError::Dataset(format!(
                "the upload is {} bytes; the limit is {} (--max-fine-tune-bytes)",
                bytes.len(),
                limits.max_bytes
            )));
        }
        let name = Path::new(file_name).file_name().and_then(|n| n.to_str()).filter(|n| !n.starts_with('.'));
        let path = into.join(name.unwrap_or("data"));
        std::fs::write(&path, bytes).map_err(io(format!("cannot write {}", path.display())))?;
        return Ok(Unpacked::File(path));
    }
    Ok(Unpacked::Folder(single_top_folder(into)))
}

/// `archive.zip` of `pets/cat/...` unpacks to `pets/`: look inside it, as people zip a folder, not its contents.
fn single_top_folder(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| !is_hidden(p)).collect())
        .unwrap_or_default();
    match entries.as_slice() {
        [only] if only.is_dir() => only.clone(),
        _ => dir.to_path_buf(),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') || n == "__MACOSX")
}

/// The entry's path under `into`, or an error if it would land anywhere else.
fn safe_path(into: &Path, name: &str) -> Result<PathBuf, TrainError> {
    let relative = Path::new(name);
    let mut path = into.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => {
                return Err(bad(format!(
                    "the archive entry `{name}` points outside the archive (absolute path or `..`): refused"
                )))
            }
        }
    }
    if path == into {
        return Err(bad(format!("the archive entry `{name}` has no name")));
    }
    Ok(path)
}

/// Counts what has been written so far against the limits.
struct Budget {
    limits: UnpackLimits,
    bytes: u64,
    entries: usize,
}

impl Budget {
    fn entry(&mut self) -> Result<(), TrainError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(bad(format!("the archive holds more than {} entries", self.limits.max_entries)));
        }
        Ok(())
    }

    /// Copies `reader` to `path`, stopping at the byte limit.
    fn copy(&mut self, reader: &mut dyn Read, path: &Path) -> Result<(), TrainError> {
        let io = |error| TrainError::Io { context: format!("cannot write {}", path.display()), error };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::File::create(path).map_err(io)?;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buffer).map_err(|e| bad(format!("the archive is corrupt: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            self.bytes += n as u64;
            if self.bytes > self.limits.max_bytes {
                return Err(bad(format!(
                    "the archive unpacks to more than {} bytes (--max-fine-tune-bytes): refused",
                    self.limits.max_bytes
                )));
            }
            file.write_all(&buffer[..n]).map_err(io)?;
        }
    }
}

fn unzip(bytes: &[u8], into: &Path, limits: UnpackLimits) -> Result<(), TrainError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("the zip archive is corrupt: {e}")))?;
    let mut budget = Budget { limits, bytes: 0, entries: 0 };
    for i in 0..archive.len() {
        budget.entry()?;
        let mut entry = archive.by_index(i).map_err(|e| bad(format!("the zip archive is corrupt: {e}")))?;
        let name = entry.name().to_string();
        let path = safe_path(into, &name)?;
        if entry.is_symlink() {
            return Err(bad(format!("the archive entry `{name}` is a symbolic link: refused")));
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&path)
                .map_err(|error| TrainError::Io { context: format!("cannot create {}", path.display()), error })?;
        } else {
            budget.copy(&mut entry, &path)?;
        }
    }
    Ok(())
}

fn untar(reader: impl Read, into: &Path, limits: UnpackLimits) -> Result<(), TrainError> {
    let mut archive = tar::Archive::new(reader);
    let mut budget = Budget { limits, bytes: 0, entries: 0 };
    let corrupt = |e: std::io::Error| bad(format!("the tar.gz archive is corrupt: {e}"));
    for entry in archive.entries().map_err(corrupt)? {
        budget.entry()?;
        let mut entry = entry.map_err(corrupt)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = safe_path(into, &name)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => budget.copy(&mut entry, &path)?,
            tar::EntryType::Directory => std::fs::create_dir_all(&path)
                .map_err(|error| TrainError::Io { context: format!("cannot create {}", path.display()), error })?,
            // pax and GNU long-name headers are metadata the tar crate applies to the next entry.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName => {}
            other => {
                return Err(bad(format!(
                    "the archive entry `{name}` is a {other:?} (links and devices are refused): only files and folders"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: UnpackLimits = UnpackLimits { max_bytes: 1 << 20, max_entries: 100 };

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // set_path refuses `..`; write the raw name as a hostile archive would.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_folder_archive_unpacks_into_its_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_gz(&[("pets/cat/a.png", b"x"), ("pets/dog/b.png", b"y")]);
        let unpacked = unpack(&archive, "pets.tar.gz", dir.path(), LIMITS).unwrap();
        assert_eq!(unpacked, Unpacked::Folder(dir.path().join("pets")));
        assert_eq!(std::fs::read(dir.path().join("pets/dog/b.png")).unwrap(), b"y");
    }

    #[test]
    fn paths_out_of_the_folder_are_refused() {
        for name in ["../evil.txt", "pets/../../evil.txt", "/etc/evil"] {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(&tar_gz(&[(name, b"x")]), "a.tar.gz", dir.path(), LIMITS).unwrap_err().to_string();
            assert!(err.contains("outside the archive"), "{name}: {err}");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 2 << 20];
        let err = unpack(&tar_gz(&[("big.bin", &zeros)]), "a.tar.gz", dir.path(), LIMITS).unwrap_err().to_string();
        assert!(err.contains("more than 1048576 bytes"), "{err}");
    }

    #[test]
    fn zip_archives_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        writer.start_file("a/cat/1.png", zip::write::SimpleFileOptions::default()).unwrap();
        writer.write_all(b"png").unwrap();
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(unpack(&bytes, "x.zip", dir.path(), LIMITS).unwrap(), Unpacked::Folder(dir.path().join("a")));
        let file = unpack(b"text,label\n", "../../reviews.csv", dir.path(), LIMITS).unwrap();
        assert_eq!(file, Unpacked::File(dir.path().join("reviews.csv")));
    }
}
