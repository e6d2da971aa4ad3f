//! Worker threads of versions that stopped serving (a swap, an unload): they drain their queue and drop their
//! module on their own, after the last request lets go of the version. Nobody waits for them then, so their
//! handles are kept here and joined when the server shuts down: a process must not exit while one of them is
//! still tearing libtorch state down (libtorch's static destructors would run under it, and it crashes).

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

static RETIRED: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Keeps the threads of a closed pool, to be joined at shutdown; threads that have ended are forgotten.
pub fn keep(threads: impl IntoIterator<Item = JoinHandle<()>>) {
    let mut retired = RETIRED.lock().unwrap_or_else(PoisonError::into_inner);
    retired.retain(|thread| !thread.is_finished());
    retired.extend(threads);
}

/// Waits for every retired thread (each has been told to stop and only finishes its queue).
pub fn join_all() {
    let threads = std::mem::take(&mut *RETIRED.lock().unwrap_or_else(PoisonError::into_inner));
    for thread in threads {
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retired_threads_are_joined_at_shutdown() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rx.recv();
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        super::keep([thread]);
        drop(tx);
        super::join_all();
        assert!(super::RETIRED.lock().unwrap().is_empty());
    }
}
