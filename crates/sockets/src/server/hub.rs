//! The server's shared state: the client table, the accept thread, sending to clients,
//! sending them away, and shutting down.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::TrySendError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipckit_core::{Error, Framing, Result};
use nix::sys::socket::Shutdown;

use super::{
    ClientId, LeaveReason, Peer, ServerOptions,
    client::{Client, Entry, Leave},
    events::Inbox,
    lock,
};
use crate::{Address, Listener};

/// How often the accept thread looks at the shutdown flag and tidies up.
const TICK: Duration = Duration::from_millis(50);

/// What the server's handle, its accept thread and its client threads share.
pub(super) struct Hub {
    pub(super) opts: ServerOptions,
    pub(super) addr: Address,
    stopping: AtomicBool,
    pub(super) next_id: AtomicU64,
    pub(super) state: Mutex<State>,
    pub(super) inbox: Arc<dyn Inbox>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) clients: HashMap<ClientId, Entry>,
    /// Clients on their way out, closed for them when their time is up.
    closing: Vec<Closing>,
    /// Every client thread not yet joined.
    pub(super) threads: Vec<JoinHandle<()>>,
}

struct Closing {
    client: Arc<Client>,
    deadline: Instant,
    forced: bool,
}

impl Hub {
    pub(super) fn new(opts: ServerOptions, addr: Address, inbox: Arc<dyn Inbox>) -> Self {
        Hub {
            opts,
            addr,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            inbox,
        }
    }

    pub(super) fn clients(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = lock(&self.state).clients.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub(super) fn peer(&self, id: ClientId) -> Option<Peer> {
        lock(&self.state)
            .clients
            .get(&id)
            .map(|e| e.client.peer.clone())
    }

    /// Makes one shared message of `bytes`, checking its size.
    pub(super) fn message(&self, bytes: Vec<u8>) -> Result<Arc<[u8]>> {
        if bytes.len() > self.opts.max_message {
            return Err(Error::TooLarge {
                len: bytes.len() as u64,
                max: self.opts.max_message,
            });
        }
        if self.opts.framing == Framing::Lines && bytes.contains(&b'\n') {
            return Err(Error::Malformed(
                "a line-framed message cannot contain a newline".into(),
            ));
        }
        Ok(Arc::from(bytes))
    }

    pub(super) fn send_to(&self, id: ClientId, msg: Arc<[u8]>) -> Result<()> {
        let mut st = lock(&self.state);
        let entry = st.clients.get(&id).ok_or(Error::Disconnected)?;
        match entry.outbox.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let client = Arc::clone(&entry.client);
                self.leave_locked(&mut st, &client, LeaveReason::OutboxOverflow, Leave::Now);
                Err(Error::Disconnected)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Disconnected),
        }
    }

    pub(super) fn broadcast(&self, msg: Arc<[u8]>, except: Option<ClientId>) -> usize {
        let mut st = lock(&self.state);
        let mut queued = 0;
        let mut overflowed = Vec::new();
        for (id, entry) in &st.clients {
            if Some(*id) == except {
                continue;
            }
            match entry.outbox.try_send(Arc::clone(&msg)) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => overflowed.push(Arc::clone(&entry.client)),
                // Its writer failed and is taking it out.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        for client in overflowed {
            self.leave_locked(&mut st, &client, LeaveReason::OutboxOverflow, Leave::Now);
        }
        queued
    }

    pub(super) fn disconnect(&self, id: ClientId, reason: &str) -> bool {
        let mut st = lock(&self.state);
        let Some(client) = st.clients.get(&id).map(|e| Arc::clone(&e.client)) else {
            return false;
        };
        self.leave_locked(
            &mut st,
            &client,
            LeaveReason::Disconnected(reason.to_string()),
            Leave::Gracefully { discard: true },
        );
        true
    }

    pub(super) fn leave(&self, client: &Arc<Client>, reason: LeaveReason, how: Leave) {
        let mut st = lock(&self.state);
        self.leave_locked(&mut st, client, reason, how);
    }

    /// Takes `client` out of the server (if still in) and closes it as `how` says.
    pub(super) fn leave_locked(
        &self,
        st: &mut State,
        client: &Arc<Client>,
        reason: LeaveReason,
        how: Leave,
    ) {
        // Dropping the entry drops the outbox's sender: the writer sends what is queued,
        // then ends.
        let was_in = st.clients.remove(&client.id).is_some();
        let first = client.set_reason(reason.clone());
        match how {
            Leave::Now => {
                client.discard.store(true, Ordering::Release);
                client.shut(Shutdown::Both);
            }
            Leave::Gracefully { discard } => {
                if discard {
                    client.discard.store(true, Ordering::Release);
                }
                if was_in {
                    st.closing.push(Closing {
                        client: Arc::clone(client),
                        deadline: Instant::now() + self.opts.linger,
                        forced: false,
                    });
                }
            }
        }
        if first {
            match reason {
                LeaveReason::OutboxOverflow
                | LeaveReason::Protocol(_)
                | LeaveReason::Undecodable(_)
                | LeaveReason::Stalled => {
                    tracing::warn!(client = %client.id, peer = %client.peer, %reason, "client dropped");
                }
                _ => {
                    tracing::debug!(client = %client.id, peer = %client.peer, %reason, "client leaving")
                }
            }
        }
        // Its reader may be waiting for room in the events; it waits no more.
        self.inbox.wake_waiters();
    }

    /// Closes lingering clients whose time is up and joins the threads that ended.
    fn tidy(&self) {
        let now = Instant::now();
        let ended: Vec<JoinHandle<()>> = {
            let mut st = lock(&self.state);
            st.closing.retain_mut(|c| {
                if c.client.threads.load(Ordering::Acquire) == 0 {
                    return false;
                }
                if !c.forced && now >= c.deadline {
                    tracing::debug!(client = %c.client.id, "linger over: closing the connection");
                    c.client.shut(Shutdown::Both);
                    c.forced = true;
                }
                true
            });
            let (ended, running) = std::mem::take(&mut st.threads)
                .into_iter()
                .partition(JoinHandle::is_finished);
            st.threads = running;
            ended
        };
        for handle in ended {
            if handle.join().is_err() {
                tracing::warn!(addr = %self.addr, "a client thread panicked");
            }
        }
    }

    /// The accept thread: admits clients until the server stops, tidying up meanwhile.
    pub(super) fn accept_loop(self: Arc<Self>, listener: Listener) {
        while !self.stopping.load(Ordering::Acquire) {
            self.tidy();
            match listener.accept_timeout(TICK) {
                Ok(conn) => {
                    if let Err(e) = self.admit(conn) {
                        tracing::warn!(addr = %self.addr, error = %e, "could not serve a client");
                    }
                }
                Err(Error::Timeout) => {}
                // Refused by the handshake: logged by the listener.
                Err(Error::Auth(_)) => {}
                Err(e) if e.io_error().is_some() => {
                    // Out of descriptors, say: the client stays queued; do not spin on it.
                    tracing::warn!(addr = %self.addr, error = %e, "accept failed");
                    std::thread::sleep(TICK);
                }
                Err(e) => {
                    tracing::debug!(addr = %self.addr, error = %e, "a client went before it was served")
                }
            }
        }
        // Dropping the listener removes its socket file.
        drop(listener);
    }

    /// Stops the accept thread `acceptor`, sends every client away and joins every thread.
    pub(super) fn shutdown(&self, acceptor: JoinHandle<()>) {
        self.stopping.store(true, Ordering::Release);
        if acceptor.join().is_err() {
            tracing::warn!(addr = %self.addr, "the accept thread panicked");
        }
        {
            let mut st = lock(&self.state);
            let clients: Vec<Arc<Client>> =
                st.clients.values().map(|e| Arc::clone(&e.client)).collect();
            for client in clients {
                self.leave_locked(
                    &mut st,
                    &client,
                    LeaveReason::Shutdown,
                    Leave::Gracefully { discard: true },
                );
            }
        }
        // No blocking call is left without a way out: the linger forces every socket shut.
        loop {
            self.tidy();
            let st = lock(&self.state);
            if st.threads.is_empty() && st.closing.is_empty() {
                break;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(2));
        }
        self.inbox.close();
        tracing::debug!(addr = %self.addr, "server shut down");
    }
}
