//! How long a blocking call may wait.

use std::time::{Duration, Instant};

/// How long a call may wait: for ever, not at all, or until an instant.
///
/// Every mechanism implements its blocking, `try_` and `_timeout` forms through one
/// function that takes a `Deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Wait as long as it takes.
    Never,
    /// Do not wait: succeed at once or report that the call would block.
    Now,
    /// Wait until this instant.
    At(Instant),
}

impl Deadline {
    /// A deadline `timeout` from now (saturating far in the future).
    pub fn after(timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(t) => Deadline::At(t),
            None => Deadline::Never,
        }
    }

    /// Time left: `None` for [`Deadline::Never`], zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        match self {
            Deadline::Never => None,
            Deadline::Now => Some(Duration::ZERO),
            Deadline::At(t) => Some(t.saturating_duration_since(Instant::now())),
        }
    }

    /// Whether the call may block at all.
    pub fn is_blocking(&self) -> bool {
        !matches!(self, Deadline::Now)
    }

    /// Whether the deadline has passed (never true for [`Deadline::Never`]).
    pub fn has_passed(&self) -> bool {
        self.remaining().is_some_and(|d| d.is_zero())
    }
}
