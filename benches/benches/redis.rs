//! `redis_queue_1p1c_64B`: one producer and one consumer pass 64-byte messages through a
//! queue on a Redis broker (a private `redis-server`, started by `ipckit_redis::RedisServer`
//! on a free port and stopped at the end), in messages per second.
//!
//! - `ipckit`: `RedisSender` and `RedisReceiver` at the byte level (no codec): one `EVAL`
//!   of the put script per message; one pipeline per get (`XACK` + `XDEL` of the previous
//!   message, `XREADGROUP COUNT 1`).
//! - `raw_client`: the same `redis` client driven by hand, pipelined the same way: one
//!   `XADD` per message; per get one pipeline of `XACK` + `XDEL` of the previous message and
//!   `XREADGROUP COUNT 1 BLOCK 100`. No capacity, no producer registration, no end
//!   detection: the floor of at-least-once delivery through this client.
//! - `shm_queue`: ipckit-queues' shared-memory `Queue`, the same two threads, for scale.
//!
//! The producer is a thread and the consumer the bench's thread (the broker is the other
//! process); the consumer checks every message's stamp, so a lost or doubled one fails.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench redis -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use criterion::{Criterion, Throughput};
use ipckit_core::{RecvBytes, SendBytes};
use ipckit_queues::{Queue, QueueOptions};
use ipckit_redis::{RedisQueue, RedisServer};
use redis::Value;

/// The message size.
const SMALL: usize = 64;
/// How long one message may take before the row fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn message(i: u64) -> Vec<u8> {
    let mut m = vec![0u8; SMALL];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

fn stamp(m: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(
        m.get(..8).context("short message")?.try_into()?,
    ))
}

/// Times `iters` messages from a producer thread running `put` to `get` on this thread.
fn batch<S: Send + 'static>(
    iters: u64,
    tx: &mut Option<S>,
    put: fn(&mut S, &[u8]) -> anyhow::Result<()>,
    mut get: impl FnMut() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Duration> {
    let mut sender = tx.take().context("the producer was lost")?;
    let start = Instant::now();
    let producer = thread::spawn(move || -> anyhow::Result<S> {
        for i in 0..iters {
            put(&mut sender, &message(i))?;
        }
        Ok(sender)
    });
    for i in 0..iters {
        let m = get()?;
        ensure!(stamp(&m)? == i, "message {i} out of order or lost");
    }
    let elapsed = start.elapsed();
    *tx = Some(
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??,
    );
    Ok(elapsed)
}

fn run(c: &mut Criterion, name: &str, mut f: impl FnMut(u64) -> anyhow::Result<Duration>) {
    let mut group = c.benchmark_group("redis_queue_1p1c_64B");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| f(iters).unwrap_or_else(|e| panic!("{name}: {e:#}")))
    });
    group.finish();
}

fn ipckit_row(c: &mut Criterion, url: &str) -> anyhow::Result<()> {
    let q: RedisQueue<Vec<u8>> = RedisQueue::create(url, 1024)?;
    let mut tx = Some(q.byte_sender()?);
    let mut rx = q.byte_receiver()?;
    run(c, "ipckit", |iters| {
        batch(
            iters,
            &mut tx,
            |tx, m| Ok(tx.send_bytes(m)?),
            || Ok(rx.recv_bytes_timeout(PATIENCE)?),
        )
    });
    q.destroy()?;
    Ok(())
}

/// A consumer on the raw client: acknowledges the previous entry and reads the next in one
/// pipeline.
struct RawConsumer {
    con: redis::Connection,
    last: Option<Vec<u8>>,
}

const STREAM: &str = "bench:raw";

impl RawConsumer {
    fn get(&mut self) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut p = redis::pipe();
            if let Some(id) = self.last.take() {
                p.cmd("XACK").arg(STREAM).arg("g").arg(&id).ignore();
                p.cmd("XDEL").arg(STREAM).arg(&id).ignore();
            }
            p.cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(">");
            let (reply,): (Value,) = p.query(&mut self.con)?;
            if let Some((id, payload)) = first_entry(&reply) {
                self.last = Some(id);
                return Ok(payload);
            }
            ensure!(Instant::now() < deadline, "no message within {PATIENCE:?}");
        }
    }
}

fn first_entry(reply: &Value) -> Option<(Vec<u8>, Vec<u8>)> {
    let Value::Array(streams) = reply else {
        return None;
    };
    let Value::Array(parts) = streams.first()? else {
        return None;
    };
    let Value::Array(entries) = parts.get(1)? else {
        return None;
    };
    let Value::Array(entry) = entries.first()? else {
        return None;
    };
    let (Value::BulkString(id), Value::Array(fields)) = (entry.first()?, entry.get(1)?) else {
        return None;
    };
    match fields.get(1)? {
        Value::BulkString(payload) => Some((id.clone(), payload.clone())),
        _ => None,
    }
}

fn raw_row(c: &mut Criterion, url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut admin = client.get_connection()?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .exec(&mut admin)?;
    let mut tx = Some(client.get_connection()?);
    let mut rx = RawConsumer {
        con: client.get_connection()?,
        last: None,
    };
    run(c, "raw_client", |iters| {
        batch(
            iters,
            &mut tx,
            |con, m| {
                redis::cmd("XADD")
                    .arg(STREAM)
                    .arg("*")
                    .arg("d")
                    .arg(m)
                    .exec(con)?;
                Ok(())
            },
            || rx.get(),
        )
    });
    redis::cmd("DEL").arg(STREAM).exec(&mut admin)?;
    Ok(())
}

fn shm_row(c: &mut Criterion) -> anyhow::Result<()> {
    let q: Queue<Vec<u8>> = Queue::create(QueueOptions::new(1024).max_message(SMALL))?;
    let mut tx = Some(q.byte_sender()?);
    let mut rx = q.byte_receiver()?;
    run(c, "shm_queue", |iters| {
        batch(
            iters,
            &mut tx,
            |tx, m| Ok(tx.send_bytes(m)?),
            || Ok(rx.recv_bytes_timeout(PATIENCE)?),
        )
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let mut c = Criterion::default().configure_from_args();
    ipckit_row(&mut c, &server.url())?;
    raw_row(&mut c, &server.url())?;
    shm_row(&mut c)?;
    c.final_summary();
    Ok(())
}
