//! The queue on a Redis broker (a private `redis-server`, started by
//! `ipckit_redis::RedisServer` on a free port and stopped at the end) beside the same
//! client driven by hand, the shared-memory queue and Python's `multiprocessing.Queue`, all
//! in the same run. 64-byte messages.
//!
//! - `redis_queue_1p1c_64B`, `redis_queue_4p1c_64B`: messages per second from one (four)
//!   producer threads, each on a connection of its own, to one consumer on the bench's
//!   thread, which checks every producer's sequence (a lost, doubled or reordered message
//!   fails the row).
//!   - `ipckit`: `RedisSender` / `RedisReceiver` at the byte level: one `EVAL` of the put
//!     script per message; per get one pipeline (`XACK` + `XDEL` of the previous message,
//!     `XREADGROUP COUNT 1`).
//!   - `raw_client`, its floor: the same `redis` client by hand, pipelined the same way:
//!     `XADD` per message; `XACK` + `XDEL` + `XREADGROUP COUNT 1` per get. No capacity,
//!     no producer registration, no end detection.
//!   - `ipckit_batched` / `raw_batched` (1p1c): 32 messages per put round trip
//!     (`RedisSender::send_all_deadline`; 32 `XADD`s in one pipeline) and 32 per read
//!     (`RedisOptions::prefetch(32)`; `COUNT 32`).
//!   - `shm_queue`: ipckit-queues' shared-memory `Queue`, same threads, for scale.
//!   - `python_mp_queue`: `multiprocessing.Queue`, producers and consumer in processes
//!     (`benches/python/compare.py`), when a Python is found.
//! - `redis_queue_rtt_64B`: a request and its reply over two queues, answered by an echo
//!   thread: `ipckit`; `raw_client` (`XADD` + `XREADGROUP BLOCK` both ways, acknowledged
//!   as above); `raw_ping`, one `PING` (the broker's own round trip); `shm_queue`;
//!   `python_mp_queue` (the echo in a process).
//!
//! ```text
//! cargo bench -p ipckit-benches --bench redis -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use criterion::Criterion;
use ipckit_benches::{Figure, Group, Rig};
use ipckit_core::{Deadline, RecvBytes, SendBytes};
use ipckit_queues::{Queue, QueueOptions, QueueReceiver, QueueSender};
use ipckit_redis::{RedisOptions, RedisQueue, RedisReceiver, RedisSender, RedisServer};
use redis::Value;

/// The message size.
const SMALL: usize = 64;
/// Messages per round trip in the batched rows.
const BATCH: usize = 32;
/// The queues' capacity.
const CAPACITY: usize = 1024;
/// How long one message may take before the row fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Message `seq` of producer `producer`.
fn message(producer: u8, seq: u64) -> Vec<u8> {
    let mut m = vec![0u8; SMALL];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m[8] = producer;
    m
}

/// Who sent `m` and its sequence number.
fn stamp(m: &[u8]) -> anyhow::Result<(usize, u64)> {
    ensure!(m.len() == SMALL, "a message of {} bytes", m.len());
    Ok((usize::from(m[8]), u64::from_le_bytes(m[..8].try_into()?)))
}

/// A producer's end: puts a batch of messages.
trait Put: Send + 'static {
    fn put(&mut self, msgs: &[Vec<u8>]) -> anyhow::Result<()>;
}

/// A consumer's end: gets one message.
trait Get {
    fn get(&mut self) -> anyhow::Result<Vec<u8>>;
}

impl Put for RedisSender {
    fn put(&mut self, msgs: &[Vec<u8>]) -> anyhow::Result<()> {
        Ok(self.send_all_deadline(msgs, Deadline::after(PATIENCE))?)
    }
}

impl Get for RedisReceiver {
    fn get(&mut self) -> anyhow::Result<Vec<u8>> {
        Ok(self.recv_bytes_timeout(PATIENCE)?)
    }
}

impl Put for QueueSender {
    fn put(&mut self, msgs: &[Vec<u8>]) -> anyhow::Result<()> {
        for m in msgs {
            self.send_bytes_timeout(m, PATIENCE)?;
        }
        Ok(())
    }
}

impl Get for QueueReceiver {
    fn get(&mut self) -> anyhow::Result<Vec<u8>> {
        Ok(self.recv_bytes_timeout(PATIENCE)?)
    }
}

/// The raw client's producer: `XADD`s, one pipeline per batch.
struct RawPut {
    con: redis::Connection,
    stream: String,
}

impl Put for RawPut {
    fn put(&mut self, msgs: &[Vec<u8>]) -> anyhow::Result<()> {
        let mut p = redis::pipe();
        for m in msgs {
            p.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("d")
                .arg(m.as_slice())
                .ignore();
        }
        p.exec(&mut self.con)?;
        Ok(())
    }
}

/// The raw client's consumer: acknowledges what it returned and reads up to `count` more
/// in one pipeline when it has none left.
struct RawGet {
    con: redis::Connection,
    stream: String,
    count: usize,
    returned: Vec<Vec<u8>>,
    got: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl RawGet {
    fn new(client: &redis::Client, stream: &str, count: usize) -> anyhow::Result<Self> {
        let mut con = client.get_connection()?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .exec(&mut con)?;
        Ok(RawGet {
            con,
            stream: stream.into(),
            count,
            returned: Vec::new(),
            got: VecDeque::new(),
        })
    }
}

impl Get for RawGet {
    fn get(&mut self) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        while self.got.is_empty() {
            let mut p = redis::pipe();
            if !self.returned.is_empty() {
                p.cmd("XACK")
                    .arg(&self.stream)
                    .arg("g")
                    .arg(&self.returned)
                    .ignore();
                p.cmd("XDEL").arg(&self.stream).arg(&self.returned).ignore();
            }
            p.cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(self.count)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">");
            let (reply,): (Value,) = p.query(&mut self.con)?;
            self.returned.clear();
            self.got.extend(entries(&reply));
            ensure!(Instant::now() < deadline, "no message within {PATIENCE:?}");
        }
        let (id, payload) = self.got.pop_front().context("no entry")?;
        self.returned.push(id);
        Ok(payload)
    }
}

/// The entries (id, payload) of an `XREADGROUP` reply on one stream.
fn entries(reply: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let Some(Value::Array(parts)) = streams.first() else {
        return Vec::new();
    };
    let Some(Value::Array(list)) = parts.get(1) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let Value::Array(entry) = e else { return None };
            let (Value::BulkString(id), Value::Array(fields)) = (entry.first()?, entry.get(1)?)
            else {
                return None;
            };
            match fields.get(1)? {
                Value::BulkString(payload) => Some((id.clone(), payload.clone())),
                _ => None,
            }
        })
        .collect()
}

/// A flow row: producers on threads of their own, the consumer on the bench's thread.
struct Flow<P, G> {
    producers: Vec<P>,
    batch: usize,
    consumer: G,
}

impl<P: Put, G: Get> Rig for Flow<P, G> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let n = self.producers.len() as u64;
        let each = iters.div_ceil(n);
        let batch = self.batch;
        let start = Instant::now();
        let threads: Vec<_> = self
            .producers
            .drain(..)
            .enumerate()
            .map(|(p, mut tx)| {
                thread::spawn(move || -> anyhow::Result<P> {
                    let mut seq = 0;
                    while seq < each {
                        let k = (each - seq).min(batch as u64);
                        let msgs: Vec<_> = (seq..seq + k).map(|i| message(p as u8, i)).collect();
                        tx.put(&msgs)?;
                        seq += k;
                    }
                    Ok(tx)
                })
            })
            .collect();
        let mut next = vec![0u64; n as usize];
        for _ in 0..each * n {
            let (p, seq) = stamp(&self.consumer.get()?)?;
            let expected = next.get_mut(p).context("a message from no producer")?;
            ensure!(
                seq == *expected,
                "producer {p}: got {seq}, expected {expected}"
            );
            *expected += 1;
        }
        let elapsed = start.elapsed();
        for t in threads {
            match t.join() {
                Ok(tx) => self.producers.push(tx?),
                Err(_) => bail!("a producer panicked"),
            }
        }
        // What the row reports is per message: count the messages this batch moved.
        Ok(elapsed.mul_f64(iters as f64 / (each * n) as f64))
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A round-trip row: the bench's thread puts a request and gets its reply; an echo thread
/// answers until the request side closes.
struct Echo<P, G> {
    requests: P,
    replies: G,
    echo: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl<P: Put, G: Get> Echo<P, G> {
    fn start<Q: Put, H: Get + Send + 'static>(
        requests: P,
        replies: G,
        mut answer: Q,
        mut take: H,
        stop: fn(&[u8]) -> bool,
    ) -> Self {
        let echo = thread::spawn(move || -> anyhow::Result<()> {
            loop {
                let m = take.get()?;
                if stop(&m) {
                    return Ok(());
                }
                answer.put(&[m])?;
            }
        });
        Echo {
            requests,
            replies,
            echo: Some(echo),
        }
    }
}

/// The request that stops an echo thread (no [`message`] has a byte 9).
fn last_request(m: &[u8]) -> bool {
    m.get(9) == Some(&0xff)
}

impl<P: Put, G: Get> Rig for Echo<P, G> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for i in 0..iters {
            self.requests.put(&[message(0, i)])?;
            let (_, seq) = stamp(&self.replies.get()?)?;
            ensure!(seq == i, "reply {seq} to request {i}");
        }
        Ok(start.elapsed())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.requests.put(&[vec![0xff; SMALL]])?;
        match self.echo.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => bail!("the echo thread panicked"),
        }
    }
}

/// A `PING` per iteration.
struct Ping(redis::Connection);

impl Rig for Ping {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..iters {
            let pong: String = redis::cmd("PING").query(&mut self.0)?;
            ensure!(pong == "PONG", "PING answered {pong}");
        }
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn ipckit_flow(
    url: &str,
    producers: usize,
    batch: usize,
) -> anyhow::Result<Flow<RedisSender, RedisReceiver>> {
    let q: RedisQueue<Vec<u8>> = RedisQueue::create(
        url,
        RedisOptions::new(CAPACITY)
            .max_message(SMALL)
            .prefetch(batch),
    )?;
    Ok(Flow {
        producers: (0..producers)
            .map(|_| q.byte_sender())
            .collect::<Result<_, _>>()?,
        batch,
        consumer: q.byte_receiver()?,
    })
}

/// `stream` with a suffix of its own: a row started again (for the paired rounds) starts
/// on a stream and group of its own.
fn fresh(stream: &str) -> String {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    format!("{stream}:{}", STARTED.fetch_add(1, Ordering::Relaxed))
}

fn raw_flow(
    url: &str,
    stream: &str,
    producers: usize,
    batch: usize,
) -> anyhow::Result<Flow<RawPut, RawGet>> {
    let client = redis::Client::open(url)?;
    let stream = fresh(stream);
    let stream = stream.as_str();
    Ok(Flow {
        consumer: RawGet::new(&client, stream, batch)?,
        producers: (0..producers)
            .map(|_| {
                Ok(RawPut {
                    con: client.get_connection()?,
                    stream: stream.into(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        batch,
    })
}

fn shm_flow(producers: usize) -> anyhow::Result<Flow<QueueSender, QueueReceiver>> {
    let q: Queue<Vec<u8>> = Queue::create(QueueOptions::new(CAPACITY).max_message(SMALL))?;
    Ok(Flow {
        producers: (0..producers)
            .map(|_| q.byte_sender())
            .collect::<Result<_, _>>()?,
        batch: 1,
        consumer: q.byte_receiver()?,
    })
}

fn main() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let mut c = Criterion::default().configure_from_args();
    let peers: &[&str] = &["shm_queue", "python_mp_queue"];

    let name = "redis_queue_1p1c_64B";
    let mut g = Group::new(&mut c, name, Figure::Rate);
    g.row("ipckit", || ipckit_flow(&url, 1, 1))?;
    g.row("raw_client", || raw_flow(&url, "bench:1p1c", 1, 1))?;
    g.row("ipckit_batched", || ipckit_flow(&url, 1, BATCH))?;
    g.row("raw_batched", || {
        raw_flow(&url, "bench:1p1c:batched", 1, BATCH)
    })?;
    g.row("shm_queue", || shm_flow(1))?;
    g.python_row("python_mp_queue", "1to1", "queue")?;
    g.finish(
        &[
            ("ipckit", &["raw_client"]),
            ("ipckit_batched", &["raw_batched"]),
        ],
        peers,
    );

    let name = "redis_queue_4p1c_64B";
    let mut g = Group::new(&mut c, name, Figure::Rate);
    g.row("ipckit", || ipckit_flow(&url, 4, 1))?;
    g.row("raw_client", || raw_flow(&url, "bench:4p1c", 4, 1))?;
    g.row("shm_queue", || shm_flow(4))?;
    g.python_row("python_mp_queue", "4to1", "queue")?;
    g.finish(&[("ipckit", &["raw_client"])], peers);

    let name = "redis_queue_rtt_64B";
    let mut g = Group::new(&mut c, name, Figure::RoundTrip);
    g.row("ipckit", || {
        let opts = RedisOptions::new(CAPACITY).max_message(SMALL);
        let req: RedisQueue<Vec<u8>> = RedisQueue::create(&url, opts.clone())?;
        let rep: RedisQueue<Vec<u8>> = RedisQueue::create(&url, opts)?;
        Ok(Echo::start(
            req.byte_sender()?,
            rep.byte_receiver()?,
            rep.byte_sender()?,
            req.byte_receiver()?,
            last_request,
        ))
    })?;
    g.row("raw_client", || {
        let client = redis::Client::open(url.as_str())?;
        let (req, rep) = (fresh("bench:req"), fresh("bench:rep"));
        let put = |stream: &str| -> anyhow::Result<RawPut> {
            Ok(RawPut {
                con: client.get_connection()?,
                stream: stream.into(),
            })
        };
        Ok(Echo::start(
            put(&req)?,
            RawGet::new(&client, &rep, 1)?,
            put(&rep)?,
            RawGet::new(&client, &req, 1)?,
            last_request,
        ))
    })?;
    g.row("raw_ping", || {
        Ok(Ping(redis::Client::open(url.as_str())?.get_connection()?))
    })?;
    g.row("shm_queue", || {
        let opts = QueueOptions::new(CAPACITY).max_message(SMALL);
        let req: Queue<Vec<u8>> = Queue::create(opts)?;
        let rep: Queue<Vec<u8>> = Queue::create(opts)?;
        Ok(Echo::start(
            req.byte_sender()?,
            rep.byte_receiver()?,
            rep.byte_sender()?,
            req.byte_receiver()?,
            last_request,
        ))
    })?;
    g.python_row("python_mp_queue", "rtt", "queue")?;
    g.finish(&[("ipckit", &["raw_client", "raw_ping"])], peers);

    c.final_summary();
    Ok(())
}
