//! How many model loads run at once (`--max-concurrent-loads`), and what one load costs: the growth of the
//! process's resident memory from before the load to after its warm-up.
//!
//! A load's cost is read from the whole process (weights, prepacked weights, warm-up buffers, the allocator's
//! arenas: whatever it made resident), so it is exact only while no other load runs beside it: with a limit of
//! one, each load is measured alone.

use std::sync::{Condvar, Mutex, PoisonError};

/// At most `limit` loads at a time; a load waits for a free place.
pub struct LoadGate {
    limit: usize,
    running: Mutex<usize>,
    freed: Condvar,
}

/// A place in the gate, held for one load; dropping it lets the next load in.
pub struct LoadPlace<'a> {
    gate: &'a LoadGate,
    resident_before: u64,
}

impl LoadGate {
    /// `limit` is at least 1.
    pub fn new(limit: usize) -> LoadGate {
        LoadGate { limit: limit.max(1), running: Mutex::new(0), freed: Condvar::new() }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a place; `prepare` then runs inside it before the measurement starts, for one-time work that
    /// is not the model's (opening ONNX Runtime's library the first time an ONNX model loads).
    pub fn enter(&self, prepare: impl FnOnce()) -> LoadPlace<'_> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while *running >= self.limit {
            running = self.freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        drop(running);
        // The place exists before `prepare` runs, so that a panic in it still gives the place back.
        let mut place = LoadPlace { gate: self, resident_before: 0 };
        prepare();
        // Memory freed earlier (an evicted or replaced version) and still held by the allocator would be reused
        // by this load without the process growing: given back first, the growth is what this load made resident.
        give_back_freed_memory();
        place.resident_before = resident_bytes();
        place
    }
}

impl LoadPlace<'_> {
    /// How much the process's resident memory grew since the place was taken (0 if it shrank).
    pub fn resident_growth(&self) -> u64 {
        resident_bytes().saturating_sub(self.resident_before)
    }
}

impl Drop for LoadPlace<'_> {
    fn drop(&mut self) {
        *self.gate.running.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.gate.freed.notify_one();
    }
}

/// Returns the heap pages freed so far to the system: glibc keeps them in its arenas otherwise, and the process's
/// resident memory, which the budget bounds and a load's cost is read from, would not fall.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only releases free memory in glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident memory in bytes (`/proc/self/statm`), or 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf takes no pointer and only reads a configuration value.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page_size).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_more_loads_run_at_once_than_the_limit() {
        let gate = Arc::new(LoadGate::new(2));
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, inside, most) = (Arc::clone(&gate), Arc::clone(&inside), Arc::clone(&most));
                std::thread::spawn(move || {
                    let _place = gate.enter(|| {});
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_load_is_charged_what_it_makes_resident_and_not_what_prepare_did() {
        let gate = LoadGate::new(1);
        let mut opened_once = Vec::new();
        // The other tests of this process run beside this one and move its RSS by up to a few hundred MiB: the
        // sizes keep "the load's 256 MiB, not prepare's 1 GiB" apart all the same. black_box: an allocation the
        // optimiser can see is unused would not be made at all.
        let place = gate.enter(|| opened_once = std::hint::black_box(vec![1u8; 1 << 30]));
        let loaded = std::hint::black_box(vec![1u8; 256 << 20]);
        let growth = place.resident_growth();
        assert!((128 << 20..1 << 30).contains(&growth), "256 MiB made resident, measured {growth}");
        assert_eq!((opened_once.len(), loaded.len()), (1 << 30, 256 << 20));
    }
}
