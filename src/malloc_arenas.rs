//! Caps glibc's malloc arenas at one per CPU this process may use.
//!
//! glibc gives threads that contend for malloc arenas of their own, up to 8 per core, and each arena keeps the
//! memory it once held. ember's decodes run on tokio's blocking threads, and tensors are allocated on the
//! workers' threads, so under load the arenas multiply and RSS with them: mobilenet_v2 alone at concurrency 32
//! peaked at 460-500 MiB with glibc's default (16 on 2 cores) and 422 MiB with this cap (bench/RESULTS.md).
//! An operator's own `MALLOC_ARENA_MAX` wins (glibc reads it at start; this only sets the cap when it is unset).

/// Call first thing in `main`, before any thread starts.
pub fn cap() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts glibc's allocator settings; called before other threads allocate.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, i32::try_from(default_cap()).unwrap_or(i32::MAX)) };
    }
}

/// The cap ember sets: one arena per CPU, at least 2.
pub fn default_cap() -> usize {
    crate::cpus::available().max(2)
}

/// For `ember info`: the cap in force and where it comes from.
pub fn describe() -> String {
    match std::env::var("MALLOC_ARENA_MAX") {
        Ok(value) => format!("malloc arenas: MALLOC_ARENA_MAX={value}"),
        Err(_) => format!("malloc arenas: at most {} (one per CPU; MALLOC_ARENA_MAX overrides)", default_cap()),
    }
}
