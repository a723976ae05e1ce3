//! Child processes that serve a row: each takes orders (a count) over a control connection,
//! works, and reports a number back, until the parent closes the connection.

use std::{
    hint::spin_loop,
    sync::atomic::{Ordering, fence},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use ipckit_core::{Child, Ctx, Deadline, Handle, Handoff, RoleResult};
use ipckit_pipes::{Connection, RecvBytes, SendBytes};
use serde::Serialize;

use crate::spawn;

/// How long any wait of a bench, in the parent or a child, may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a spinning wait checks its deadline.
pub const SPINS: u32 = 1024;

/// Spins until `ready` gives a value, checking `deadline` every [`SPINS`] spins.
///
/// # Errors
/// If the deadline passes first.
pub fn spin_until<T>(deadline: Instant, mut ready: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let mut spins = 0u32;
    loop {
        if let Some(v) = ready() {
            return Ok(v);
        }
        spin_loop();
        spins = spins.wrapping_add(1);
        if spins % SPINS == 0 {
            ensure!(Instant::now() < deadline, "no word from the other side");
        }
    }
}

/// A child's loop: runs `work(n)` for each order `n` from the parent and reports what it
/// returns, until the parent closes the control connection (handle `ctl`).
///
/// # Errors
/// What `work` or the control connection fails with.
pub fn serve(ctx: &mut Ctx, mut work: impl FnMut(u64) -> anyhow::Result<u64>) -> RoleResult {
    let mut ctl: Connection = ctx.handle("ctl")?;
    let mut buf = Vec::new();
    loop {
        match ctl.recv_bytes_into(&mut buf) {
            Ok(()) => {}
            Err(ipckit_pipes::Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Pairs with the Release fence of `Worker::order`.
        fence(Ordering::Acquire);
        let report = work(u64::from_le_bytes(buf.as_slice().try_into()?))?;
        // Pairs with the Acquire fence of `Worker::report`.
        fence(Ordering::Release);
        ctl.send_bytes(&report.to_le_bytes())?;
    }
}

/// A child of a row, and the parent's end of the control connection to it.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    ctl: Connection,
    buf: Vec<u8>,
}

impl Worker {
    /// Starts role `role` with argument `arg`, the row's `handles` and a control connection.
    ///
    /// # Errors
    /// If the child cannot be started.
    pub fn launch<A: Serialize + ?Sized>(
        role: &'static str,
        arg: &A,
        handles: impl IntoIterator<Item = (&'static str, Handoff)>,
    ) -> anyhow::Result<Self> {
        let (ctl, theirs) = ipckit_pipes::duplex()?;
        let handles = std::iter::once(("ctl", theirs.into_handoff())).chain(handles);
        Ok(Worker {
            child: spawn(role, arg, handles)?,
            ctl,
            buf: Vec::new(),
        })
    }

    /// Pins the child (its main thread, where a role runs) to CPU `cpu`: the other side
    /// of a busy-wait row.
    ///
    /// # Errors
    /// When the system refuses it.
    pub fn pin(&self, cpu: usize) -> anyhow::Result<()> {
        crate::pin_process(self.child.pid(), cpu)
    }

    /// As [`launch`](Worker::launch), then [`ready`](Worker::ready).
    ///
    /// # Errors
    /// If the child cannot be started or does not report.
    pub fn start<A: Serialize + ?Sized>(
        role: &'static str,
        arg: &A,
        handles: impl IntoIterator<Item = (&'static str, Handoff)>,
    ) -> anyhow::Result<Self> {
        Self::launch(role, arg, handles)?.ready()
    }

    /// Orders no work and waits for the report: the child has then made its ends and
    /// serves orders, so the batches time the workload, not the child's start.
    ///
    /// # Errors
    /// If the child does not report in time.
    pub fn ready(mut self) -> anyhow::Result<Self> {
        self.order(0)?;
        self.report()?;
        Ok(self)
    }

    /// Orders the child's work with `n`.
    ///
    /// # Errors
    /// If the child is gone.
    pub fn order(&mut self, n: u64) -> anyhow::Result<()> {
        // Pairs with the Acquire fence of `serve`: the child sees what this process wrote
        // to shared memory before the order.
        fence(Ordering::Release);
        Ok(self.ctl.send_bytes(&n.to_le_bytes())?)
    }

    /// Waits (at most [`PATIENCE`]) for the child's report on its order.
    ///
    /// # Errors
    /// If no report of 8 bytes comes in time.
    pub fn report(&mut self) -> anyhow::Result<u64> {
        self.ctl
            .recv_bytes_into_deadline(&mut self.buf, Deadline::after(PATIENCE))
            .with_context(|| format!("no report from {}", self.child.role()))?;
        // Pairs with the Release fence of `serve`.
        fence(Ordering::Acquire);
        Ok(u64::from_le_bytes(
            self.buf
                .as_slice()
                .try_into()
                .context("a report of 8 bytes")?,
        ))
    }

    /// Closes the control connection and checks that the child then ended cleanly.
    ///
    /// # Errors
    /// If the child does not end in time, or ends with a failure.
    pub fn finish(self) -> anyhow::Result<()> {
        let Worker { ctl, mut child, .. } = self;
        drop(ctl);
        let status = child.join_timeout(PATIENCE)?;
        ensure!(
            status.success(),
            "child {} ended with {status}",
            child.role()
        );
        Ok(())
    }
}
