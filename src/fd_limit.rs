//! The process's open-file limit: every connection is a file descriptor, and many systems start processes with
//! a soft limit of 1024 although the hard limit allows far more. `ember serve` raises the soft limit to the hard
//! one at start and caps `--max-connections` to what it then allows.

/// The soft and hard limits on open files, before and after raising the soft one as far as the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Descriptors kept for what is not a connection: model files, the repository watcher, libtorch, logs.
pub const RESERVED: u64 = 256;

/// Raises the soft limit to the hard limit (as an unprivileged process may). `None` where the platform has no
/// such limit or will not say.
pub fn raise() -> Option<OpenFiles> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        let before: u64 = limit.rlim_cur;
        let hard: u64 = limit.rlim_max;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one is always allowed.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return Some(OpenFiles { before, now: hard, hard });
            }
        }
        Some(OpenFiles { before, now: before, hard })
    }
    #[cfg(not(unix))]
    None
}

impl OpenFiles {
    /// How many connections the limit leaves room for.
    pub fn connections(&self) -> u64 {
        self.now.saturating_sub(RESERVED).max(1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let files = super::raise().expect("Linux has RLIMIT_NOFILE");
        assert_eq!(files.now, files.hard);
        assert!(files.before <= files.now);
        assert_eq!(super::raise().unwrap().before, files.hard, "raising again finds it raised");
    }
}
