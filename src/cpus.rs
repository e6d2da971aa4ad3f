//! How many CPUs this process may use, and what `workers = "auto"` and `intra_op_threads = "auto"` in a
//! model.toml become on them.
//!
//! The CPUs are `std::thread::available_parallelism`: the affinity mask (`taskset`, a cpuset) and the cgroup
//! CPU quota (a Kubernetes limit), so a 4-CPU pod on a 64-core node counts 4, not 64.
//!
//! The rule for `auto` comes from measurement on 2 cores (bench/RESULTS.md): single-threaded workers side by
//! side beat fewer workers with more threads each, so `auto` gives one single-threaded worker per CPU; a lone
//! request still runs on all of them when `borrow_idle_threads` is on.

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

/// Most workers one model runs (more would cost memory and scheduling for no measured gain).
pub const MAX_WORKERS: usize = 64;

/// A thread count of model.toml: a number, or `"auto"` (derived from the CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    #[default]
    Auto,
    Fixed(usize),
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::Auto => write!(f, "auto"),
            Threads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Word(String),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Number(n)) => Ok(Threads::Fixed(n)),
            Ok(Raw::Word(word)) if word == "auto" => Ok(Threads::Auto),
            _ => Err(serde::de::Error::custom("expected a positive number or \"auto\"")),
        }
    }
}

/// The CPUs this process may use (measured once; at least 1).
pub fn available() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// What a model runs with: its workers and each one's intra-op threads, and the CPUs they were derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub workers: usize,
    pub intra_op_threads: usize,
    pub cpus: usize,
}

impl Sizing {
    /// Resolves `auto` on `cpus`. Explicit numbers win. `single_worker`: the task runs one worker whatever is
    /// asked (text generation advances all its sequences on one thread), which then gets every CPU.
    pub fn of(workers: Threads, intra_op_threads: Threads, cpus: usize, single_worker: bool) -> Sizing {
        let cpus = cpus.max(1);
        let workers = match (workers, intra_op_threads) {
            _ if single_worker => 1,
            (Threads::Fixed(n), _) => n,
            (Threads::Auto, Threads::Fixed(threads)) => (cpus / threads.max(1)).clamp(1, MAX_WORKERS),
            (Threads::Auto, Threads::Auto) => cpus.min(MAX_WORKERS),
        };
        let intra_op_threads = match intra_op_threads {
            Threads::Fixed(n) => n,
            Threads::Auto => (cpus / workers.max(1)).max(1),
        };
        Sizing { workers, intra_op_threads, cpus }
    }
}

#[cfg(test)]
mod tests {
    use super::{Sizing, Threads, MAX_WORKERS};

    fn size(workers: Threads, threads: Threads, cpus: usize) -> (usize, usize) {
        let sizing = Sizing::of(workers, threads, cpus, false);
        (sizing.workers, sizing.intra_op_threads)
    }

    #[test]
    fn auto_follows_the_cpus_and_explicit_numbers_win() {
        use Threads::{Auto, Fixed};
        // One single-threaded worker per CPU: 1 CPU -> 1 worker, a 4-CPU pod -> 4, however big the node.
        assert_eq!(size(Auto, Auto, 1), (1, 1));
        assert_eq!(size(Auto, Auto, 4), (4, 1));
        // Beyond MAX_WORKERS CPUs, the workers get several threads each.
        assert_eq!(size(Auto, Auto, 1000), (MAX_WORKERS, 1000 / MAX_WORKERS));
        // One side fixed: the other shares the CPUs out.
        assert_eq!(size(Fixed(2), Auto, 16), (2, 8));
        assert_eq!(size(Fixed(3), Auto, 2), (3, 1));
        assert_eq!(size(Auto, Fixed(4), 16), (4, 4));
        assert_eq!(size(Auto, Fixed(8), 2), (1, 8));
        assert_eq!(size(Fixed(2), Fixed(3), 64), (2, 3));
        // A single-worker task gets every CPU for its one worker, unless its threads are fixed.
        assert_eq!(Sizing::of(Auto, Auto, 8, true), Sizing { workers: 1, intra_op_threads: 8, cpus: 8 });
        assert_eq!(Sizing::of(Fixed(1), Fixed(1), 8, true).intra_op_threads, 1);
    }

    #[test]
    fn thread_counts_parse_as_numbers_or_auto() {
        #[derive(serde::Deserialize)]
        struct Table {
            n: Threads,
        }
        let parse = |text: &str| toml::from_str::<Table>(text).map(|t| t.n).map_err(|e| e.to_string());
        assert_eq!(parse("n = 3"), Ok(Threads::Fixed(3)));
        assert_eq!(parse("n = \"auto\""), Ok(Threads::Auto));
        for bad in ["n = \"all\"", "n = -1", "n = 1.5"] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("expected a positive number or \"auto\""), "{bad}: {error}");
        }
    }
}
