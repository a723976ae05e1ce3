//! Names for OS objects: unique per process and call, and recognisable when left behind.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::{errno::Errno, sys::signal::kill, unistd::Pid};

use crate::Result;

/// Prefix of every name ipckit gives an OS object.
pub const NAME_PREFIX: &str = "ipckit-";

/// A fresh name `ipckit-<kind>-<pid>-<seq>-<salt>`, unique per process and call.
///
/// `kind` says what the object is (`fifo`, `shm`, …) and must not contain `-` or `/`.
pub fn unique_name(kind: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    debug_assert!(
        !kind.contains(['-', '/']),
        "kind must not contain '-' or '/'"
    );
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let salt = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{NAME_PREFIX}{kind}-{}-{seq}-{salt:08x}",
        std::process::id()
    )
}

/// A fresh path in the temporary directory, named by [`unique_name`].
pub fn temp_path(kind: &str) -> PathBuf {
    std::env::temp_dir().join(unique_name(kind))
}

/// The process id recorded in a name made by [`unique_name`].
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.rsplitn(4, '-');
    let (_salt, _seq, pid) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    pid.parse().ok()
}

/// Whether process `pid` is running: it exists and is not a zombie waiting to be reaped.
pub fn is_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return false;
    }
    // The state letter follows the parenthesised command name.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(") ").next().and_then(|s| s.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => true,
    }
}

/// Whether the process that made `name` has exited.
pub fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !is_alive(pid))
}

/// Entries of `dir` that ipckit named and whose owner process has exited (it was killed
/// before it could remove them).
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if `dir` cannot be read.
pub fn find_stale(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_stale) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Removes what [`find_stale`] finds; returns what was removed.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if `dir` cannot be read.
pub fn remove_stale(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in find_stale(dir)? {
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed object of a dead process");
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_the_pid() {
        let a = unique_name("fifo");
        let b = unique_name("fifo");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id() as i32));
        assert!(!is_stale(&a));
    }

    #[test]
    fn foreign_names_are_never_stale() {
        assert_eq!(owner_pid("ipckit"), None);
        assert!(!is_stale("something-else-1-2-3"));
    }

    #[test]
    fn a_dead_owner_makes_a_name_stale() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(is_stale(&format!("ipckit-fifo-{pid}-0-00000000")));
    }
}
