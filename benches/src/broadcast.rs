//! Fan-out over ipckit's socket `Server`, written once for the sockets bench and the
//! comparison: each message goes to every client with one `broadcast`, in windows that the
//! clients acknowledge.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use ipckit_core::{Child, Ctx, Deadline, Error, RecvBytes, RoleResult, SendBytes};
use ipckit_sockets::{
    Address, ConnectOptions, Event, Events, Listener, Raw, Server, ServerOptions,
};

use crate::{PATIENCE, Rig, SMALL, spawn};

/// The most broadcasts sent before every client has acknowledged them: well within the
/// server's outbox of each client (`ServerOptions::outbox`, 1024 by default, with room for
/// the window's announcement), since `Server::broadcast` never waits and drops a client
/// that falls further behind.
pub const BROADCAST_WINDOW: u64 = 256;
const _: () = assert!(BROADCAST_WINDOW < 1024, "an outbox smaller than a window");

/// Message `i` of a window: its number in the first 8 bytes.
fn stamp(msg: &mut [u8], i: u64) {
    msg[..8].copy_from_slice(&i.to_le_bytes());
}

/// A broadcast row: a `Server` on a fresh Unix socket file (removed on drop) and its client
/// processes, which run [`broadcast_client`].
pub struct Broadcast {
    server: Server<Vec<u8>, Raw>,
    /// Taken (dropped) when the row finishes, before its clients are joined.
    events: Option<Events<Vec<u8>, Raw>>,
    clients: Vec<Child>,
    msg: Vec<u8>,
    path: PathBuf,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl Broadcast {
    /// Starts the server and `clients` children of role `role` (whose function is
    /// [`broadcast_client`]), and waits until every one has joined.
    ///
    /// # Errors
    /// When the socket cannot be bound, a child cannot start, or one does not join.
    pub fn start(role: &'static str, clients: usize) -> anyhow::Result<Self> {
        let path = ipckit_core::temp_path("bench-bcast");
        let addr = Address::Unix(path.clone());
        let (server, events) =
            Server::start_raw_with(Listener::bind(&addr)?, &ServerOptions::new())?;
        let children = (0..clients)
            .map(|_| spawn(role, &addr.to_string(), []))
            .collect::<ipckit_core::Result<_>>()?;
        let b = Broadcast {
            server,
            events: Some(events),
            clients: children,
            msg: vec![0xa5; SMALL],
            path,
        };
        for _ in 0..clients {
            match b.next_event()? {
                Event::Joined { .. } => {}
                e => bail!("{e:?} before every client joined"),
            }
        }
        Ok(b)
    }

    fn next_event(&self) -> anyhow::Result<Event<Vec<u8>>> {
        self.events
            .as_ref()
            .context("the row has finished")?
            .recv_timeout(PATIENCE)
            .with_context(|| format!("no event in {PATIENCE:?}"))
    }

    /// Broadcasts a window of `k` numbered messages and waits for every client's
    /// acknowledgement.
    fn window(&mut self, k: u64) -> anyhow::Result<()> {
        let n = self.clients.len();
        let sent = self.server.broadcast(&k.to_le_bytes().to_vec())?;
        ensure!(sent == n, "{sent} clients left of {n}");
        for i in 0..k {
            stamp(&mut self.msg, i);
            let sent = self.server.broadcast(&self.msg)?;
            ensure!(sent == n, "{sent} clients left of {n}");
        }
        for _ in 0..n {
            match self.next_event()? {
                Event::Message { msg, .. } if msg == [1] => {}
                e => bail!("{e:?} instead of an acknowledgement"),
            }
        }
        Ok(())
    }
}

impl Rig for Broadcast {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let mut left = iters;
        while left > 0 {
            let k = left.min(BROADCAST_WINDOW);
            self.window(k)?;
            left -= k;
        }
        Ok(began.elapsed())
    }

    /// Shuts the server down: each client reads to the end of its stream and returns.
    fn finish(mut self) -> anyhow::Result<()> {
        self.server.shutdown();
        drop(self.events.take());
        for mut c in std::mem::take(&mut self.clients) {
            let status = c.join_timeout(PATIENCE)?;
            ensure!(status.success(), "a broadcast client ended with {status}");
        }
        Ok(())
    }
}

impl Drop for Broadcast {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A broadcast client's role (its argument: the server's address): takes each window,
/// checks that its numbered messages all came, acknowledges it with one byte, until the
/// server closes the connection.
///
/// # Errors
/// When it cannot connect, a message is missing or the connection fails.
pub fn broadcast_client(ctx: &mut Ctx) -> RoleResult {
    let addr: String = ctx.arg()?;
    let opts = ConnectOptions::new().timeout(PATIENCE).retry(true);
    let mut conn = ipckit_sockets::connect_with(&addr.parse()?, &opts)?;
    let mut buf = Vec::with_capacity(SMALL);
    loop {
        match conn.recv_bytes_into(&mut buf) {
            Ok(()) => {}
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let k = u64::from_le_bytes(buf.as_slice().try_into()?);
        let mut sum = 0u64;
        for _ in 0..k {
            conn.recv_bytes_into_deadline(&mut buf, Deadline::after(PATIENCE))?;
            if buf.len() != SMALL {
                return Err(format!("a message of {} bytes", buf.len()).into());
            }
            sum = sum.wrapping_add(u64::from_le_bytes(buf[..8].try_into()?));
        }
        if sum != k * k.saturating_sub(1) / 2 {
            return Err("broadcasts lost".into());
        }
        conn.send_bytes(&[1])?;
    }
}
