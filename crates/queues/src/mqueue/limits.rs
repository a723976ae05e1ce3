//! What the kernel allows a POSIX message queue, and errors that name the limit that was
//! hit, its value, and what to do about it.

use std::{fmt, io};

use ipckit_core::Error;
use nix::errno::Errno;

use super::MqOptions;

/// The kernel's bound on a queue's capacity for a process with `CAP_SYS_RESOURCE`
/// (Linux ≥ 3.5).
pub const HARD_MSG_MAX: usize = 65_536;
/// The kernel's bound on `max_message` for a process with `CAP_SYS_RESOURCE` (Linux ≥ 3.5).
pub const HARD_MSGSIZE_MAX: usize = 16 << 20;
/// Kernel bookkeeping counted against `RLIMIT_MSGQUEUE` on 64-bit Linux: a `struct msg_msg`
/// per message, and a priority-tree node per message up to `MQ_PRIO_MAX` of them.
const MSG_HEADER: u64 = 48;
const TREE_NODE: u64 = 48;
const MQ_PRIO_MAX: u64 = 32_768;
/// Where the sysctls are.
pub(super) const SYSCTL: &str = "/proc/sys/fs/mqueue";

/// How many bytes of `RLIMIT_MSGQUEUE` a queue of `capacity` messages of up to
/// `max_message` bytes takes, as Linux counts them on 64-bit machines.
pub(super) fn accounted_bytes(capacity: usize, max_message: usize) -> u64 {
    let n = capacity as u64;
    n.saturating_mul((max_message as u64).saturating_add(MSG_HEADER))
        .saturating_add(n.min(MQ_PRIO_MAX).saturating_mul(TREE_NODE))
}

/// The kernel's limits on POSIX message queues, as this process sees them. `None` where a
/// limit could not be read, or (for `rlimit_bytes`) is unlimited.
///
/// | Limit | Default | Bounds | Applies to | Refusal |
/// |---|---|---|---|---|
/// | `/proc/sys/fs/mqueue/msg_max` | 10 | [`MqOptions::capacity`] | unprivileged processes; with `CAP_SYS_RESOURCE` the bound is [`HARD_MSG_MAX`] (65 536) | `EINVAL` |
/// | `/proc/sys/fs/mqueue/msgsize_max` | 8192 | [`MqOptions::max_message`] | unprivileged processes; with `CAP_SYS_RESOURCE` the bound is [`HARD_MSGSIZE_MAX`] (16 MiB) | `EINVAL` |
/// | `/proc/sys/fs/mqueue/queues_max` | 256 | queues in the IPC namespace | unprivileged processes | `ENOSPC` |
/// | `RLIMIT_MSGQUEUE` (`ulimit -q`) | 819 200 bytes | the sum, over every queue of the same user, of `capacity × (max_message + 96)` ([`MqOptions::accounted_bytes`]) | **everyone, root included**; checked against the creating process's soft limit, whose hard limit only `CAP_SYS_RESOURCE` raises | `EMFILE` |
/// | `RLIMIT_NOFILE` (`ulimit -n`) | 1024 | descriptors: one per process-local set of handles | everyone | `EMFILE` |
///
/// [`MessageQueue::create`](super::MessageQueue::create) turns each refusal into an error naming the limit and its value.
/// So without privileges a queue holds at most 10 messages of up to 8 KiB, and a user's
/// queues about 800 KB in all, unless an administrator raises the sysctls and
/// `ulimit -q`; 16 MiB messages need `CAP_SYS_RESOURCE` (or a raised `msgsize_max`) *and*
/// an `RLIMIT_MSGQUEUE` of more than 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MqLimits {
    /// `/proc/sys/fs/mqueue/msg_max`: the most messages per queue, unprivileged.
    pub msg_max: Option<u64>,
    /// `/proc/sys/fs/mqueue/msgsize_max`: the largest message, unprivileged.
    pub msgsize_max: Option<u64>,
    /// `/proc/sys/fs/mqueue/queues_max`: the most queues in the IPC namespace, unprivileged.
    pub queues_max: Option<u64>,
    /// `RLIMIT_MSGQUEUE` (soft): bytes of queues this user may have; `None` if unlimited.
    pub rlimit_bytes: Option<u64>,
    /// Whether this process has `CAP_SYS_RESOURCE`, which lifts `msg_max`, `msgsize_max`
    /// and `queues_max` (up to [`HARD_MSG_MAX`] and [`HARD_MSGSIZE_MAX`]), but not
    /// `RLIMIT_MSGQUEUE`.
    pub privileged: bool,
}

impl MqLimits {
    /// Reads the limits from `/proc`.
    pub fn read() -> Self {
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("{SYSCTL}/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let rlimit_bytes = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                let line = limits
                    .lines()
                    .find(|l| l.starts_with("Max msgqueue size"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        // CAP_SYS_RESOURCE is capability 24.
        let privileged = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(caps.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 24) != 0);
        MqLimits {
            msg_max: sysctl("msg_max"),
            msgsize_max: sysctl("msgsize_max"),
            queues_max: sysctl("queues_max"),
            rlimit_bytes,
            privileged,
        }
    }
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// Why the kernel refused to create a queue: the limit, its value, what to do, and the
/// error number. The source of the [`Error::Os`] that [`explain_open_error`] makes.
#[derive(Debug)]
struct Refused {
    why: String,
    errno: Errno,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.why, self.errno)
    }
}

impl std::error::Error for Refused {}

/// Turns `mq_open`'s refusal to create queue `name` sized by `opts` into an error that
/// says which limit was hit and what to do about it.
pub(super) fn explain_open_error(
    errno: Errno,
    name: &str,
    opts: &MqOptions,
    limits: &MqLimits,
) -> Error {
    let (n, size) = (opts.capacity, opts.max_message);
    let why = match errno {
        Errno::EINVAL => {
            let mut why = Vec::new();
            if n == 0 || size == 0 {
                why.push(format!(
                    "capacity ({n}) and max_message ({size}) must both be at least 1"
                ));
            }
            if n > HARD_MSG_MAX {
                why.push(format!(
                    "capacity {n} exceeds the kernel's hard limit of {HARD_MSG_MAX} \
                     (even with CAP_SYS_RESOURCE; ask for fewer)"
                ));
            }
            if size > HARD_MSGSIZE_MAX {
                why.push(format!(
                    "max_message {size} exceeds the kernel's hard limit of {HARD_MSGSIZE_MAX} \
                     bytes (even with CAP_SYS_RESOURCE; send smaller messages)"
                ));
            }
            if why.is_empty() {
                if limits.msg_max.is_some_and(|m| n as u64 > m) {
                    why.push(format!(
                        "capacity {n} exceeds {SYSCTL}/msg_max = {} (raise it or ask for \
                         fewer)",
                        show(limits.msg_max)
                    ));
                }
                if limits.msgsize_max.is_some_and(|m| size as u64 > m) {
                    why.push(format!(
                        "max_message {size} exceeds {SYSCTL}/msgsize_max = {} (raise it or \
                         send smaller messages)",
                        show(limits.msgsize_max)
                    ));
                }
            }
            if why.is_empty() {
                why.push(format!(
                    "the kernel refused capacity {n}, max_message {size} \
                     ({SYSCTL}/msg_max = {}, msgsize_max = {})",
                    show(limits.msg_max),
                    show(limits.msgsize_max)
                ));
            }
            why.join("; ")
        }
        Errno::EMFILE => {
            let need = opts.accounted_bytes();
            match limits.rlimit_bytes {
                Some(limit) => format!(
                    "a queue of {n} messages of up to {size} bytes takes {need} bytes of \
                     RLIMIT_MSGQUEUE (`ulimit -q`) = {limit} bytes, which this user's other \
                     queues share (raise it, or ask for fewer or smaller messages); or the \
                     process has too many open descriptors (`ulimit -n`)"
                ),
                None => format!(
                    "too many open descriptors (`ulimit -n`), or this user's queues already \
                     take all of RLIMIT_MSGQUEUE (this one needs {need} bytes)"
                ),
            }
        }
        Errno::ENOSPC => format!(
            "the system already has {SYSCTL}/queues_max = {} message queues (remove unused \
             ones or raise it)",
            show(limits.queues_max)
        ),
        Errno::ENOMEM => {
            format!("not enough kernel memory for a queue of {n} messages of up to {size} bytes")
        }
        Errno::EOVERFLOW => format!("capacity {n} × max_message {size} overflows"),
        Errno::ENOSYS => {
            return Error::Unsupported(
                "POSIX message queues (the kernel was built without CONFIG_POSIX_MQUEUE)",
            );
        }
        e => format!("mq_open: {}", e.desc()),
    };
    let kind = io::Error::from(errno).kind();
    Error::os(
        "create",
        "message queue",
        name,
        io::Error::new(kind, Refused { why, errno }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unprivileged() -> MqLimits {
        MqLimits {
            msg_max: Some(10),
            msgsize_max: Some(8192),
            queues_max: Some(256),
            rlimit_bytes: Some(819_200),
            privileged: false,
        }
    }

    const NAME: &str = "/ipckit-mq-1-2-0000abcd";

    /// The error's text; and it names the queue and keeps the kernel's error kind.
    fn message(e: Error) -> String {
        let m = e.to_string();
        if let Error::Os { .. } = e {
            assert!(
                m.starts_with(&format!("cannot create message queue `{NAME}`: ")),
                "{m}"
            );
        }
        m
    }

    #[test]
    fn too_many_messages_names_msg_max() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            NAME,
            &MqOptions::new(64),
            &unprivileged(),
        ));
        assert!(
            m.contains(
                "capacity 64 exceeds /proc/sys/fs/mqueue/msg_max = 10 (raise it or ask for fewer)"
            ),
            "{m}"
        );
        assert!(!m.contains("msgsize_max"), "{m}");
    }

    #[test]
    fn too_large_messages_name_msgsize_max() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            NAME,
            &MqOptions::new(10).max_message(1 << 20),
            &unprivileged(),
        ));
        assert!(
            m.contains("max_message 1048576 exceeds /proc/sys/fs/mqueue/msgsize_max = 8192"),
            "{m}"
        );
    }

    #[test]
    fn beyond_the_hard_limits_even_root_is_refused() {
        let root = MqLimits {
            privileged: true,
            ..unprivileged()
        };
        let m = message(explain_open_error(
            Errno::EINVAL,
            NAME,
            &MqOptions::new(100_000).max_message(32 << 20),
            &root,
        ));
        assert!(m.contains("hard limit of 65536"), "{m}");
        assert!(m.contains("hard limit of 16777216 bytes"), "{m}");
    }

    #[test]
    fn zero_sizes_are_explained() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            NAME,
            &MqOptions::new(0),
            &unprivileged(),
        ));
        assert!(m.contains("must both be at least 1"), "{m}");
    }

    #[test]
    fn the_byte_limit_is_named_with_its_value() {
        let opts = MqOptions::new(10).max_message(1 << 20);
        let m = message(explain_open_error(
            Errno::EMFILE,
            NAME,
            &opts,
            &unprivileged(),
        ));
        assert!(m.contains("(EMFILE: "), "{m}");
        assert!(
            m.contains("RLIMIT_MSGQUEUE (`ulimit -q`) = 819200 bytes"),
            "{m}"
        );
        assert!(
            m.contains(&format!("takes {} bytes", opts.accounted_bytes())),
            "{m}"
        );
    }

    #[test]
    fn the_queue_count_limit_is_named() {
        let m = message(explain_open_error(
            Errno::ENOSPC,
            NAME,
            &MqOptions::default(),
            &unprivileged(),
        ));
        assert!(m.contains("/proc/sys/fs/mqueue/queues_max = 256"), "{m}");
    }

    #[test]
    fn limits_are_read() {
        let l = MqLimits::read();
        if std::path::Path::new(SYSCTL).exists() {
            assert!(l.msg_max.is_some() && l.msgsize_max.is_some() && l.queues_max.is_some());
        }
    }
}
