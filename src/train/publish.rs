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
    move |source| TrainError::Io { context, source }
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

    /// Moves the finished version into place; returns its number and folder.
    pub fn publish(mut self) -> Result<(u64, PathBuf), TrainError> {
        sync_dir(&self.version_dir)?;
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
        if let Some(parent) = published.1.parent() {
            sync_dir(parent)?;
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
    parent.join(format!(".train-{}-{nanos}.partial", std::process::id()))
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
