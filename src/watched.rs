//! A value read from files and read again when they change (the TLS identity, the API keys): operators and
//! cert-manager rewrite such files in place while the server runs. A read that fails leaves the last good value
//! in force; the caller's `on_change` says so in the log.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// How often the files are looked at: a `stat` of each, nothing read unless one changed.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What a file looks like from outside (modified, length, inode: a rename over it changes the inode); `None`
/// when it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(metadata: std::io::Result<Metadata>) -> Stamp {
    let metadata = metadata.ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

/// How to read the value from its files.
type Reader<T> = Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>;

/// The value in force and how its files looked when it was last read.
pub struct Watched<T> {
    paths: Vec<PathBuf>,
    read: Reader<T>,
    current: RwLock<Arc<T>>,
    seen: Mutex<Vec<Stamp>>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads the value once: its error is the caller's start-up error.
    pub fn open(
        paths: Vec<PathBuf>,
        read: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Arc<Watched<T>>> {
        let seen = Mutex::new(stamps(&paths));
        let current = RwLock::new(Arc::new(read()?));
        Ok(Arc::new(Watched { paths, read: Box::new(read), current, seen }))
    }

    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the value again when a file changed since the last look: `None` when none did, else what the read
    /// gave (a failure leaves the previous value in force).
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<Arc<T>>> {
        let now = stamps(&self.paths);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some((self.read)().map(|value| {
            let value = Arc::new(value);
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&value);
            value
        }))
    }

    /// Looks at the files every `CHECK_EVERY` for as long as the runtime runs, telling `on_change` each outcome.
    pub fn watch(self: &Arc<Self>, on_change: impl Fn(anyhow::Result<&T>) + Send + Sync + 'static) {
        let (watched, on_change) = (Arc::clone(self), Arc::new(on_change));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECK_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (watched, on_change) = (Arc::clone(&watched), Arc::clone(&on_change));
                let _ = tokio::task::spawn_blocking(move || match watched.reload_if_changed() {
                    Some(Ok(value)) => on_change(Ok(&value)),
                    Some(Err(e)) => on_change(Err(e)),
                    None => {}
                })
                .await;
            }
        });
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|path| stamp(std::fs::metadata(path))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_and_a_failed_read_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let read_path = path.clone();
        let read = move || -> anyhow::Result<u32> { Ok(std::fs::read_to_string(&read_path)?.trim().parse()?) };
        let watched = Watched::open(vec![path.clone()], read).unwrap();
        assert_eq!(*watched.get(), 1);
        assert!(watched.reload_if_changed().is_none(), "nothing changed");

        std::fs::write(&path, "22").unwrap();
        assert_eq!(*watched.reload_if_changed().unwrap().unwrap(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert!(watched.reload_if_changed().unwrap().is_err());
        assert_eq!(*watched.get(), 22, "the last good value stays in force");
        std::fs::remove_file(&path).unwrap();
        assert!(watched.reload_if_changed().unwrap().is_err(), "a file gone is a failed read");
        assert_eq!(*watched.get(), 22);
    }
}
