//! Loading at a lower CPU priority than serving. A load that runs while other models serve (an on-demand model's
//! first request) reads its file, prepacks its weights and warms up at every batch size: a second of CPU on
//! threads that would otherwise take cores from the models answering requests. Its thread runs at nice +19, which
//! Linux's scheduler gives little of a core that serving threads want, and all of it when they leave it idle.
//! Not `SCHED_IDLE`: a load holds locks that serving threads take too (the allocator's, the kernel's memory map),
//! and under `SCHED_IDLE` a serving thread waited up to a second for a load to get the CPU and let go of one.
//!
//! A thread inherits its creator's policy and nice value, and only a privileged process may raise them again,
//! so the threads a load starts to serve (a pool's workers, a generation scheduler) are not spawned by the
//! load's thread but by the spawner's (`start_serving_spawner`), which runs at the process's own priority.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

/// How much nicer than the process a load's thread runs: at nice 19 Linux gives it 1.5% of a core that a nice-0
/// thread wants too (weight 15 against 1024).
const LOAD_NICE: libc::c_int = 19;

type Spawn = Box<dyn FnOnce() -> io::Result<JoinHandle<()>> + Send>;
type Spawned = mpsc::Sender<io::Result<JoinHandle<()>>>;

/// The thread that spawns serving threads, at the process's own priority.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Spawn, Spawned)>>> = OnceLock::new();

/// Starts the spawner from the calling thread, whose priority serving threads get; call it from a thread at the
/// process's own priority (at start, or before a load thread lowers its own).
pub fn start_serving_spawner() {
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<(Spawn, Spawned)>();
        let started = std::thread::Builder::new().name("ember-spawner".into()).spawn(move || {
            for (spawn, reply) in incoming {
                let _ = reply.send(spawn());
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the serving-thread spawner; loads start their threads themselves");
        }
        Mutex::new(requests)
    });
}

/// Spawns a thread that serves (a worker), at the process's priority even when called from a load's thread.
pub fn spawn_serving(name: String, run: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    let spawn: Spawn = Box::new(move || std::thread::Builder::new().name(name).spawn(run));
    let Some(spawner) = SPAWNER.get() else { return spawn() };
    let (reply, answer) = mpsc::channel();
    let sent = spawner.lock().unwrap_or_else(PoisonError::into_inner).send((spawn, reply));
    match sent {
        Ok(()) => answer.recv().unwrap_or_else(|_| Err(io::Error::other("the serving-thread spawner stopped"))),
        // The spawner never started: spawn here.
        Err(mpsc::SendError((spawn, _))) => spawn(),
    }
}

/// Lowers the calling thread's priority for the load it is about to run (only this thread: Linux keeps a nice
/// value per thread). Best effort: a failure leaves it at its priority.
pub fn lower_for_loading() {
    // SAFETY: gettid has no arguments; setpriority on one's own thread id changes only that thread's nice value.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, thread);
        let _ = libc::setpriority(libc::PRIO_PROCESS, thread, (now + LOAD_NICE).min(19));
    }
}

/// The calling thread's scheduling policy and nice value.
pub fn current_priority() -> (i32, i32) {
    // SAFETY: as in `lower_for_loading`, on the calling thread only.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        (policy, libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_spawned_for_serving_keep_the_priority_a_load_thread_gives_up() {
        start_serving_spawner();
        let base = current_priority();
        let load = std::thread::spawn(move || {
            lower_for_loading();
            let lowered = current_priority();
            let (sender, worker) = mpsc::channel();
            let serving = move || sender.send(current_priority()).unwrap();
            spawn_serving("test-worker".into(), serving).unwrap().join().unwrap();
            let inherited = std::thread::spawn(current_priority).join().unwrap();
            (lowered, worker.recv().unwrap(), inherited)
        });
        let (lowered, worker, inherited) = load.join().unwrap();
        assert_eq!(lowered.1, (base.1 + LOAD_NICE).min(19), "the load's thread runs nicer");
        assert_eq!(inherited, lowered, "a thread it spawns itself would inherit that");
        assert_eq!(worker, base, "a serving thread does not");
    }
}
