//! Round trips between the parent and an echoing worker, written once for every
//! round-trip row (the queue's, the sequence lock's, the raw floors').

use std::time::{Duration, Instant};

use anyhow::ensure;
use ipckit_core::{Ctx, RoleResult};

use crate::{PATIENCE, RawSpin, Rig, Worker, serve};

/// One side's ends of a ping-pong between the parent and its echoing worker.
pub trait PingPong {
    /// The parent's side of a round trip: sends `v`, waits for its echo until `deadline`.
    ///
    /// # Errors
    /// If no echo (or a wrong one) comes before `deadline`.
    fn round(&mut self, v: u64, deadline: Instant) -> anyhow::Result<()>;

    /// The worker's side: waits for the next value until `deadline`, echoes it.
    ///
    /// # Errors
    /// If no value comes before `deadline`.
    fn echo(&mut self, deadline: Instant) -> anyhow::Result<()>;
}

/// The raw spinning ping-pong over two words, the floor of the busy-wait rows.
impl PingPong for RawSpin {
    fn round(&mut self, v: u64, deadline: Instant) -> anyhow::Result<()> {
        RawSpin::round(self, v, deadline)
    }

    fn echo(&mut self, deadline: Instant) -> anyhow::Result<()> {
        RawSpin::echo(self, deadline)
    }
}

/// A worker's loop for a round-trip row: `n` echoes on each order of the parent.
///
/// # Errors
/// If the parent's orders stop making sense or an echo times out.
pub fn echoes(ctx: &mut Ctx, mut pair: impl PingPong) -> RoleResult {
    serve(ctx, |n| {
        let deadline = Instant::now() + PATIENCE;
        for _ in 0..n {
            pair.echo(deadline)?;
        }
        Ok(n)
    })
}

/// A round-trip row: the parent's ends of a [`PingPong`] and the worker that echoes (its
/// role runs [`echoes`]). Per batch the parent orders `iters + 1` echoes, makes one
/// untimed round trip (the worker is then waiting on the pair, not reading its order), and
/// times the others.
#[derive(Debug)]
pub struct EchoRig<P> {
    pair: P,
    worker: Worker,
    /// The last value sent.
    sent: u64,
}

impl<P: PingPong> EchoRig<P> {
    /// The row of `pair`'s parent ends and its started `worker`.
    pub fn new(pair: P, worker: Worker) -> Self {
        EchoRig {
            pair,
            worker,
            sent: 0,
        }
    }
}

impl<P: PingPong> Rig for EchoRig<P> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + PATIENCE;
        self.worker.order(iters + 1)?;
        self.sent += 1;
        self.pair.round(self.sent, deadline)?;
        let began = Instant::now();
        for _ in 0..iters {
            self.sent += 1;
            self.pair.round(self.sent, deadline)?;
        }
        let took = began.elapsed();
        ensure!(self.worker.report()? == iters + 1, "echoes missing");
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.worker.finish()
    }
}
