//! Writing a trained model into the repository atomically: every file goes into a hidden staging folder beside
//! the versions, which is renamed to the next free version number only once complete. A failed, cancelled or
//! interrupted run leaves at most a `.train-*.partial` folder, which is never a version (not an integer) and is
//! removed on the way out when the process can still do so. An existing version is never overwritten: rename(2)
//! onto a non-empty folder fails, and the next number is tried.

use std::path::{Path, PathBuf};

use super::TrainError;

/// The version folder being written.
pub struct Staging {
    /// The folder renamed into place: the version itself, or a whole new model holding version 1.
    root: PathBuf,
    /// Where the version's files go (`root`, or `root/1` for a new model).
    version_dir: PathBuf,
    target: Target,
    published: bool,
}

enum Target {
    /// The next version of the model in this folder.
    NextVersion(PathBuf),
    /// A new model folder (which must not exist yet), version 1.
    NewModel(PathBuf),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> TrainError {
    move |error| TrainError::Io { context, error }
}

impl Staging {
    /// Stages the next version of the model in `model_dir`.
    pub fn next_version(model_dir: &Path) -> Result<Staging, TrainError> {
        let root = unique_staging_dir(model_dir);
        std::fs::create_dir(&root).map_err(io(format!("cannot create {}", root.display())))?;
        Ok(Staging {
            version_dir: root.clone(),
            root,
            target: Target::NextVersion(model_dir.to_path_buf()),
            published: false,
        })
    }

    /// Stages a new model at `model_dir` (refused if it exists), with `files` (model.toml and the like) copied
    /// in from their paths, and version 1.
    pub fn new_model(model_dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<Staging, TrainError> {
        if model_dir.exists() {
            return Err(TrainError::Settings(format!("{} exists already", model_dir.display())));
        }
        let parent = model_dir.parent().unwrap_or(Path::new("."));
        let root = unique_staging_dir(parent);
        let version_dir = root.join("1");
        std::fs::create_dir_all(&version_dir).map_err(io(format!("cannot create {}", version_dir.display())))?;
        let staging =
            Staging { root, version_dir, target: Target::NewModel(model_dir.to_path_buf()), published: false };
        for (name, bytes) in files {
            staging.write_beside_versions(name, bytes)?;
        }
        Ok(staging)
    }

    /// A file of the version being written.
    pub fn path(&self, name: &str) -> PathBuf {
        self.version_dir.join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), TrainError> {
        let path = self.path(name);
        std::fs::write(&path, bytes).map_err(io(format!("cannot write {}", path.display())))
    }

    /// A model-level file of a new model (model.toml, labels.txt, tokenizer.json).
    fn write_beside_versions(&self, name: &str, bytes: &[u8]) -> Result<(), TrainError> {
        let path = self.root.join(name);
        std::fs::write(&path, bytes).map_err(io(format!("cannot write {}", path.display())))
    }

    /// Moves the finished version into place; returns its number and folder. Every file is on disk before the
    /// rename, so a crash leaves either no version or a whole one. Once renamed, the version exists: a failure to
    /// sync the folder that now holds it is logged, not reported as a failed run.
    pub fn publish(mut self) -> Result<(u64, PathBuf), TrainError> {
        sync_tree(&self.root)?;
        let published = match &self.target {
            Target::NewModel(model_dir) => {
                std::fs::rename(&self.root, model_dir)
                    .map_err(io(format!("cannot create the model folder {}", model_dir.display())))?;
                (1, model_dir.join("1"))
            }
            Target::NextVersion(model_dir) => {
                let mut version = highest_version(model_dir)? + 1;
                loop {
                    let dir = model_dir.join(version.to_string());
                    match std::fs::rename(&self.root, &dir) {
                        Ok(()) => break (version, dir),
                        // Taken meanwhile (another run published it): try the next number.
                        Err(e) if dir.exists() && version < u64::MAX => {
                            tracing::debug!(error = %e, version, "version taken; trying the next");
                            version += 1;
                        }
                        Err(e) => return Err(io(format!("cannot publish {}", dir.display()))(e)),
                    }
                }
            }
        };
        self.published = true;
        let parent = match &self.target {
            Target::NewModel(model_dir) => model_dir.parent().map(Path::to_path_buf),
            Target::NextVersion(model_dir) => Some(model_dir.clone()),
        };
        if let Some(Err(e)) = parent.map(|dir| sync_dir(&dir)) {
            tracing::warn!(version = %published.1.display(), error = %e, "published, but syncing its folder failed: a crash now may lose it");
        }
        Ok(published)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn unique_staging_dir(parent: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    parent.join(format!("{STAGING_PREFIX}{}-{nanos}{STAGING_SUFFIX}", std::process::id()))
}

const STAGING_PREFIX: &str = ".train-";
const STAGING_SUFFIX: &str = ".partial";
/// The prefix of a fine-tuning upload's folder in the temporary folder, followed by the server's pid and `-`.
pub const UPLOAD_PREFIX: &str = "ember-fine-tune-";

/// The process id in the name of a staging folder or an upload folder; `None` for any other name.
pub fn leftover_pid(name: &str) -> Option<u32> {
    let rest = match name.strip_prefix(STAGING_PREFIX) {
        Some(rest) => rest.strip_suffix(STAGING_SUFFIX)?,
        None => name.strip_prefix(UPLOAD_PREFIX)?,
    };
    rest.split('-').next()?.parse().ok()
}

/// Whether a leftover folder of process `pid` is abandoned: that process does not run here (or is this one,
/// which at start-up has made none yet: a restarted container reuses its pid), and nothing in it changed for
/// `quiet`.
pub fn abandoned(path: &Path, pid: u32, quiet: std::time::Duration) -> bool {
    let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
    !alive && newest_change(path).is_some_and(|changed| changed.elapsed().is_ok_and(|age| age >= quiet))
}

/// The latest modification time of a folder and everything in it.
fn newest_change(path: &Path) -> Option<std::time::SystemTime> {
    let mut newest = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()) {
            newest = newest.max(newest_change(&entry.path())?);
        }
    }
    Some(newest)
}

/// Flushes every file and folder under `dir` (not following links) to disk.
fn sync_tree(dir: &Path) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(io(format!("cannot read {}", dir.display())))?.path();
        let kind = std::fs::symlink_metadata(&path).map_err(io(format!("cannot read {}", path.display())))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("cannot sync {}", path.display())))?;
        }
    }
    sync_dir(dir)
}

/// The highest integer-named folder (a version, or one being claimed), or 0.
fn highest_version(model_dir: &Path) -> Result<u64, TrainError> {
    let entries = std::fs::read_dir(model_dir).map_err(io(format!("cannot read {}", model_dir.display())))?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()).max().unwrap_or(0))
}

/// Flushes a folder's entries to disk, so a published version survives a crash whole.
fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(format!("cannot sync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_after_the_highest_and_never_overwritten() {
        let repo = tempfile::tempdir().unwrap();
        let model = repo.path().join("pets");
        std::fs::create_dir_all(model.join("3")).unwrap();
        std::fs::write(model.join("3/model.pt"), b"old").unwrap();
        let staging = Staging::next_version(&model).unwrap();
        staging.write("model.pt", b"new").unwrap();
        let (version, dir) = staging.publish().unwrap();
        assert_eq!((version, dir.clone()), (4, model.join("4")));
        assert_eq!(std::fs::read(model.join("3/model.pt")).unwrap(), b"old");
        assert_eq!(std::fs::read(dir.join("model.pt")).unwrap(), b"new");
    }

    #[test]
    fn leftovers_are_named_by_their_process_and_swept_only_when_abandoned() {
        assert_eq!(leftover_pid(".train-4242-1700000000000000000.partial"), Some(4242));
        assert_eq!(leftover_pid("ember-fine-tune-4242-AbC123"), Some(4242));
        assert_eq!(leftover_pid(".train-4242-17.tmp"), None);
        assert_eq!(leftover_pid("3"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.pt"), b"half").unwrap();
        let parent = std::os::unix::process::parent_id(); // a process that runs
        assert!(!abandoned(dir.path(), parent, std::time::Duration::ZERO), "its process still runs");
        assert!(abandoned(dir.path(), std::process::id(), std::time::Duration::ZERO), "a restart reuses the pid");
        assert!(!abandoned(dir.path(), u32::MAX, std::time::Duration::from_secs(3600)), "changed a moment ago");
        assert!(abandoned(dir.path(), u32::MAX, std::time::Duration::ZERO));
    }

    #[test]
    fn a_dropped_staging_leaves_nothing() {
        let repo = tempfile::tempdir().unwrap();
        let model = repo.path().join("pets");
        std::fs::create_dir_all(&model).unwrap();
        let staging = Staging::next_version(&model).unwrap();
        staging.write("model.pt", b"half").unwrap();
        drop(staging);
        assert_eq!(std::fs::read_dir(&model).unwrap().count(), 0);

        let staging = Staging::new_model(&repo.path().join("new"), &[("model.toml", b"task = 1".to_vec())]).unwrap();
        drop(staging);
        assert_eq!(std::fs::read_dir(repo.path()).unwrap().count(), 1, "only pets/ remains");
    }

    #[test]
    fn a_new_model_appears_whole_and_an_existing_one_is_refused() {
        let repo = tempfile::tempdir().unwrap();
        let model = repo.path().join("fashion");
        let staging = Staging::new_model(&model, &[("model.toml", b"x".to_vec())]).unwrap();
        staging.write("model.pt", b"w").unwrap();
        assert_eq!(staging.publish().unwrap(), (1, model.join("1")));
        assert!(model.join("model.toml").is_file() && model.join("1/model.pt").is_file());
        assert!(Staging::new_model(&model, &[]).is_err());
    }
}
