//! The memory this process may use: its cgroup's limit, which is a container's `--memory` or a Kubernetes
//! memory limit. Past it the kernel kills the process (OOM), so a model memory budget above it would never be
//! reached, and `ember info` says what it is.
//!
//! Both cgroup versions: v2's `memory.max` ("max" when unlimited), v1's `memory.limit_in_bytes` (a number near
//! 2^63 when unlimited). Inside a container the process's own cgroup is usually the root of what it sees, but
//! with cgroup v1 and the host's cgroup namespace /proc/self/cgroup names the host's path
//! (/docker/<id>), which is not mounted inside: the root of the mount is then the container's cgroup.

use std::path::{Path, PathBuf};

/// A v1 limit at or above this is "no limit" (the kernel's default is the largest page-aligned i64).
const UNLIMITED_V1: u64 = 1 << 60;

/// The cgroup memory limit of this process, in bytes; `None` when there is none (or no cgroup to read).
pub fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    candidates(&own, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .find_map(|file| std::fs::read_to_string(file).ok())
        .and_then(|text| parse_limit(&text))
}

/// The limit files to try, most specific first: the process's own cgroup, then the root of the mount.
fn candidates(proc_self_cgroup: &str, mount: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        // hierarchy-ID:controllers:path
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            files.push(mount.join(relative).join("memory.max"));
            files.push(mount.join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            files.push(mount.join("memory").join(relative).join("memory.limit_in_bytes"));
            files.push(mount.join("memory/memory.limit_in_bytes"));
        }
    }
    files
}

/// A limit file's value: bytes, or `None` for no limit.
fn parse_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        value => value.parse::<u64>().ok().filter(|&bytes| bytes < UNLIMITED_V1),
    }
}

/// Refuses a model memory budget the kernel would never let the process reach.
pub fn check_budget(budget: u64, limit: Option<u64>) -> Result<(), String> {
    match limit {
        Some(limit) if budget >= limit => Err(format!(
            "--model-memory-budget {} MiB is not below this process's memory limit of {} MiB (a container's \
             --memory): the kernel would kill ember before the budget evicted a model. Give a budget that leaves \
             room for the process itself (about 120 MiB) and its requests",
            budget >> 20,
            limit >> 20
        )),
        _ => Ok(()),
    }
}

/// For a report: "1.0 GiB", or "none".
pub fn describe(limit: Option<u64>) -> String {
    match limit {
        Some(bytes) => format!("{:.1} GiB (the cgroup's: a container's --memory)", bytes as f64 / (1u64 << 30) as f64),
        None => "none (no cgroup limit)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cgroup_versions_are_read_and_unlimited_is_none() {
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn a_budget_must_stay_below_the_limit() {
        assert!(check_budget(512 << 20, Some(1 << 30)).is_ok());
        assert!(check_budget(512 << 20, None).is_ok());
        let refused = check_budget(1 << 30, Some(1 << 30)).unwrap_err();
        assert!(refused.contains("1024 MiB is not below") && refused.contains("--memory"), "{refused}");
    }

    #[test]
    fn the_own_cgroup_comes_before_the_root_of_the_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        let v2 = candidates("0::/kubepods/pod1/abc\n", mount);
        assert_eq!(v2[0], Path::new("/sys/fs/cgroup/kubepods/pod1/abc/memory.max"));
        assert_eq!(v2[1], Path::new("/sys/fs/cgroup/memory.max"));
        let v1 = candidates("12:cpu,cpuacct:/docker/x\n4:memory:/docker/x\n", mount);
        assert_eq!(
            v1,
            [
                PathBuf::from("/sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes"),
                PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes")
            ]
        );
        assert!(candidates("not a cgroup line", mount).is_empty());
    }
}
