//! The worker process: its loop, and what travels between it and the pool.
//!
//! The pool and a worker share one duplex connection (a socket pair):
//!
//! - worker → pool, first: an empty message, "ready" (the initializer has run);
//! - pool → worker: a chunk of arguments, the postcard encoding of `[A]`;
//! - worker → pool: the chunk's outcomes, the postcard encoding of `Vec<Outcome<R>>`, one
//!   per argument, in order;
//! - the pool closes the connection when the worker should go: it finishes nothing more
//!   and exits.
//!
//! The worker runs one chunk at a time, in the order they came, and counts the chunks it
//! begins in a shared-memory [`Progress`] (with the time it began the last one), so the
//! pool knows which chunk a dead worker was running, even when the worker held back the
//! replies of the chunks before it, and how long that chunk has run.

use std::{
    marker::PhantomData,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::atomic::{AtomicU64, Ordering},
};

use ipckit_core::{
    Codec, Connection, Ctx, Deadline, Error as CoreError, Postcard, RecvBytes, SendBytes,
};
use ipckit_shmem::Shared;
use nix::time::{ClockId, clock_getres, clock_gettime};
use serde::{
    Deserialize, Serialize,
    de::{self, DeserializeOwned},
};

/// The key of the task function passed to a worker.
pub(crate) const TASK: &str = "ipckit-pool-task";
/// The key of the initializer passed to a worker.
pub(crate) const INIT: &str = "ipckit-pool-init";
/// The key of the worker's connection to the pool.
pub(crate) const CONN: &str = "ipckit-pool-conn";
/// The key of the worker's [`Progress`].
pub(crate) const PROGRESS: &str = "ipckit-pool-progress";

/// What a worker has begun, in shared memory that the pool reads: the number of chunks it
/// has begun, and when it began the last one ([`monotonic_ns`], or 0 when tasks have no
/// timeout). Written with two stores per chunk: no system call, no wake-up.
pub(crate) struct Progress(Shared<(AtomicU64, AtomicU64)>);

impl Progress {
    /// A new counter, at zero, and its twin for the worker.
    pub(crate) fn create() -> ipckit_core::Result<(Progress, Progress)> {
        let ours: Shared<(AtomicU64, AtomicU64)> = Shared::create((0, 0))?;
        let theirs = ours.try_clone()?;
        Ok((Progress(ours), Progress(theirs)))
    }

    /// The worker begins its next chunk.
    fn begin(&self, count: u64, at: u64) {
        // The time first: a reader that sees the count sees this time or a later one.
        self.0.1.store(at, Ordering::Relaxed);
        self.0.0.store(count, Ordering::Release);
    }

    /// How many chunks the worker has begun, and when it began the last (or a later one,
    /// if it is moving on).
    pub(crate) fn read(&self) -> (u64, u64) {
        let count = self.0.0.load(Ordering::Acquire);
        (count, self.0.1.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (begun, at) = self.read();
        f.debug_struct("Progress")
            .field("begun", &begun)
            .field("at", &at)
            .finish()
    }
}

impl ipckit_core::Handle for Progress {
    fn into_handoff(self) -> ipckit_core::Handoff {
        self.0.into_handoff()
    }

    fn from_handoff(h: ipckit_core::Handoff) -> ipckit_core::Result<Self> {
        Ok(Progress(Shared::from_handoff(h)?))
    }
}

/// The system's monotonic clock in nanoseconds, the same in every process (an `Instant`
/// cannot cross one).
pub(crate) fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| nanos(&t))
}

fn nanos(t: &nix::sys::time::TimeSpec) -> u64 {
    (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64)
}

/// The coarse clock: [`monotonic_ns`] as of the last tick (a few nanoseconds to read, no
/// counter), at most its resolution behind.
fn coarse_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or_else(|_| monotonic_ns(), |t| nanos(&t))
}

/// What a worker is started with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    /// The initializer's argument, encoded, if there is an initializer.
    pub(crate) init: Option<Vec<u8>>,
    /// The largest message either way.
    pub(crate) max_message: usize,
    /// Whether replies may wait for the chunks already here. Not without retries: a
    /// worker that dies loses the replies it held, and the pool runs their chunks again.
    pub(crate) hold_replies: bool,
    /// Whether tasks have a timeout: the worker then notes when it begins each chunk.
    pub(crate) timed: bool,
}

/// What became of one task.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome<R> {
    /// It returned this.
    Ok(R),
    /// It panicked with this message.
    Panicked(String),
    /// It returned, but the result could not be sent back.
    Unsendable(String),
}

/// A worker: runs the initializer, says it is ready, then runs each chunk it is sent until
/// the pool closes the connection.
pub(crate) fn worker_main<A, R, I>(config: WorkerConfig, ctx: &mut Ctx) -> ipckit_core::RoleResult
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
    I: DeserializeOwned + 'static,
{
    let f: fn(A) -> R = ctx.function(TASK)?;
    let mut conn: Connection = ctx.handle(CONN)?;
    conn = conn.max_message(config.max_message);
    let progress: Progress = ctx.handle(PROGRESS)?;
    let mut begun = 0u64;
    // A tick of the coarse clock, its resolution.
    let coarse = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).map_or(0, |t| nanos(&t));
    if let Some(bytes) = config.init {
        let init: fn(I) = ctx.function(INIT)?;
        // A panic here ends the worker; the pool reports it as a failed start.
        init(Postcard.decode(&bytes)?);
    }
    let mut buf = Vec::new();
    let mut out = Vec::new();
    // Kept from chunk to chunk: a chunk allocates nothing of its own.
    let mut outcomes: Vec<Outcome<R>> = Vec::new();
    if let Err(e) = conn.send_bytes(&[]) {
        return gone(e);
    }
    // Replies wait while more chunks are already here, then go out in one write: small
    // tasks cost one wake-up and one system call per batch, not per task. A worker killed
    // with replies waiting loses them; the pool, which reads in `progress` which chunks
    // were begun, runs those chunks again.
    let mut replies = Vec::new();
    let mut deadline = Deadline::Never;
    loop {
        match conn.recv_bytes_into_deadline(&mut buf, deadline) {
            Ok(()) => {}
            Err(CoreError::Timeout) => {
                if let Err(e) = flush(&mut conn, &mut replies) {
                    return gone(e);
                }
                deadline = Deadline::Never;
                continue;
            }
            Err(e) => {
                let _ = flush(&mut conn, &mut replies);
                return gone(e);
            }
        }
        // Counted before anything can fail: a chunk that kills its worker is known.
        begun += 1;
        let began = coarse_ns();
        // The coarse clock is behind by less than a tick (it is brought up to date when a
        // processor wakes from idle); with two ticks added, the stamp is never earlier
        // than the real start: a timeout may fire a few milliseconds late, never early.
        progress.begin(
            begun,
            if config.timed {
                began.saturating_add(2 * coarse)
            } else {
                0
            },
        );
        outcomes.clear();
        decode_each(&buf, |a: A| {
            outcomes.push(match catch_unwind(AssertUnwindSafe(|| f(a))) {
                Ok(r) => Outcome::Ok(r),
                Err(payload) => Outcome::Panicked(panic_message(&*payload)),
            });
        })?;
        encode_reply(&outcomes, config.max_message, &mut out);
        if out.len() > BATCH_BYTES {
            // A large reply goes as it is, after those waiting.
            if let Err(e) = flush(&mut conn, &mut replies).and_then(|()| conn.send_bytes(&out)) {
                return gone(e);
            }
            deadline = Deadline::Never;
        } else {
            push_frame(&mut replies, &out);
            // Look for the next chunk without waiting; none there: the replies go. A chunk
            // that took more than a tick of the coarse clock replies at once: its reply
            // would otherwise wait for the next chunk, which may be as long.
            let short = coarse_ns().saturating_sub(began) <= coarse;
            deadline = if !config.hold_replies || !short || replies.len() > BATCH_BYTES {
                if let Err(e) = flush(&mut conn, &mut replies) {
                    return gone(e);
                }
                Deadline::Never
            } else {
                Deadline::Now
            };
        }
    }
}

/// Decodes the postcard encoding of a sequence of `T` (as `[T]` or `Vec<T>` encode),
/// giving each element to `each` as it comes, with no vector in between; returns the
/// number of elements.
pub(crate) fn decode_each<T: DeserializeOwned>(
    bytes: &[u8],
    each: impl FnMut(T),
) -> ipckit_core::Result<usize> {
    struct Each<F, T>(F, PhantomData<fn(T)>);

    impl<'de, F: FnMut(T), T: Deserialize<'de>> de::DeserializeSeed<'de> for Each<F, T> {
        type Value = usize;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de, F: FnMut(T), T: Deserialize<'de>> de::Visitor<'de> for Each<F, T> {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<S: de::SeqAccess<'de>>(mut self, mut seq: S) -> Result<usize, S::Error> {
            let mut n = 0;
            while let Some(x) = seq.next_element()? {
                (self.0)(x);
                n += 1;
            }
            Ok(n)
        }
    }

    let mut d = postcard::Deserializer::from_bytes(bytes);
    de::DeserializeSeed::deserialize(Each(each, PhantomData), &mut d)
        .map_err(|e| CoreError::Codec(e.to_string()))
}

/// Replies above this size are not held back.
const BATCH_BYTES: usize = 32 << 10;

/// Writes the replies waiting, as consecutive frames in one write.
fn flush(conn: &mut Connection, replies: &mut Vec<u8>) -> ipckit_core::Result<()> {
    if replies.is_empty() {
        return Ok(());
    }
    let r = write_frames(conn, replies);
    replies.clear();
    r
}

/// Appends `msg` to `frames` as one frame of the connection's framing, so that several
/// messages go out in one write ([`write_frames`]): the pool's chunks and a worker's
/// replies both travel so.
pub(crate) fn push_frame(frames: &mut Vec<u8>, msg: &[u8]) {
    let mut header = [0u8; ipckit_core::MAX_HEADER];
    let n = ipckit_core::encode_header(msg.len(), &mut header);
    frames.extend_from_slice(&header[..n]);
    frames.extend_from_slice(msg);
}

/// Writes frames made with [`push_frame`] in one write; a peer that is gone is
/// `Disconnected`, as a send would say.
pub(crate) fn write_frames(conn: &mut Connection, frames: &[u8]) -> ipckit_core::Result<()> {
    use std::io::Write as _;
    conn.write_all(frames).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            CoreError::Disconnected
        }
        _ => CoreError::Io(e),
    })
}

/// The pool closed the connection (the worker should go) or is gone: either way, the end.
fn gone(e: CoreError) -> ipckit_core::RoleResult {
    match e {
        CoreError::Disconnected => Ok(()),
        e => Err(e.into()),
    }
}

/// Encodes the outcomes into `out`; if they cannot travel, a reply saying so for each.
fn encode_reply<R: Serialize>(outcomes: &[Outcome<R>], max: usize, out: &mut Vec<u8>) {
    out.clear();
    let why = match Postcard.encode(outcomes, out) {
        Ok(()) if out.len() <= max => return,
        Ok(()) => format!(
            "{} bytes of results exceed the maximum message of {max} bytes",
            out.len()
        ),
        Err(e) => e.to_string(),
    };
    let failed: Vec<Outcome<()>> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Panicked(m) => Outcome::Panicked(m.clone()),
            _ => Outcome::Unsendable(why.clone()),
        })
        .collect();
    out.clear();
    // A list of short texts always encodes.
    let _ = Postcard.encode(&failed, out);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
