//! One client of a server: its reader and writer threads and its bounded outbox.
//!
//! A client costs three descriptors (its connection split into a reading and a writing
//! half, and one more kept to `shutdown(2)` it whatever its threads are doing) and two
//! threads. The writer takes messages from the outbox and ends when the client is taken
//! out of the server and its outbox is empty; the reader ends at the client's end of
//! stream, a protocol error, or when its socket is shut down.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, SyncSender},
    },
};

use ipckit_core::{Connection, Error, Reader, RecvBytes, Result, SendBytes, Writer};
use nix::sys::socket::{Shutdown, shutdown};

use super::{
    ClientId, LeaveReason, Peer,
    hub::{Hub, State},
    lock,
};
use crate::Address;

/// A client in the server's table, and the sending side of its outbox.
pub(super) struct Entry {
    pub(super) client: Arc<Client>,
    pub(super) outbox: SyncSender<Arc<[u8]>>,
}

pub(super) struct Client {
    pub(super) id: ClientId,
    pub(super) peer: Peer,
    /// A descriptor of the socket, kept to `shutdown(2)` it whatever its threads do.
    ctl: OwnedFd,
    reason: Mutex<Option<LeaveReason>>,
    /// The server sent it away: what it sends from now on is dropped.
    pub(super) discard: AtomicBool,
    /// Its threads still running.
    pub(super) threads: AtomicUsize,
}

/// How a client is sent away.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Leave {
    /// What is queued for it goes out first, then end-of-stream; it gets `linger` to close.
    Gracefully { discard: bool },
    /// Its connection is shut down at once.
    Now,
}

impl Client {
    pub(super) fn shut(&self, how: Shutdown) {
        // Fails only if the socket is already disconnected, which is the goal.
        let _ = shutdown(self.ctl.as_raw_fd(), how);
    }

    /// Records why it left; the first reason stays. Whether this was the first.
    pub(super) fn set_reason(&self, reason: LeaveReason) -> bool {
        let mut r = lock(&self.reason);
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        true
    }

    fn reason(&self) -> LeaveReason {
        lock(&self.reason).clone().unwrap_or(LeaveReason::Closed)
    }
}

/// Counts a client thread as ended, however it ends.
struct Running(Arc<Client>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    /// Takes in an accepted connection: its entry, its `Joined`, its two threads.
    pub(super) fn admit(self: &Arc<Self>, conn: Connection) -> Result<()> {
        let conn = conn
            .framing(self.opts.framing)
            .max_message(self.opts.max_message)
            .stall_limit(self.opts.stall_limit);
        let peer = Peer {
            address: conn.peer().to_string(),
            credentials: match self.addr {
                Address::Unix(_) | Address::UnixAbstract(_) => conn.peer_credentials().ok(),
                _ => None,
            },
        };
        let ctl = conn.as_fd().try_clone_to_owned()?;
        let (reader, writer) = conn.split()?;
        let id = ClientId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let client = Arc::new(Client {
            id,
            peer: peer.clone(),
            ctl,
            reason: Mutex::new(None),
            discard: AtomicBool::new(false),
            threads: AtomicUsize::new(2),
        });
        let (outbox, queued) = mpsc::sync_channel::<Arc<[u8]>>(self.opts.outbox);
        // Under the lock, so that `Joined` comes before anything its threads report.
        let mut st = lock(&self.state);
        st.clients.insert(
            id,
            Entry {
                client: Arc::clone(&client),
                outbox,
            },
        );
        self.inbox.joined(id, peer.clone());
        tracing::debug!(client = %id, %peer, "client joined");
        let writer = {
            let (hub, running) = (Arc::clone(self), Running(Arc::clone(&client)));
            std::thread::Builder::new()
                .name(format!("ipckit-client-{}-w", id.0))
                .spawn(move || hub.write_loop(running, writer, queued))
        };
        let writer = match writer {
            Ok(h) => h,
            Err(e) => {
                // Neither thread runs (the writer's `Running` went with its closure, the
                // reader's was never made): say it left here.
                client.threads.store(0, Ordering::Release);
                return Err(self.failed_to_start(&mut st, &client, e));
            }
        };
        st.threads.push(writer);
        let reader = {
            let (hub, running) = (Arc::clone(self), Running(Arc::clone(&client)));
            std::thread::Builder::new()
                .name(format!("ipckit-client-{}-r", id.0))
                .spawn(move || hub.read_loop(running, reader))
        };
        match reader {
            Ok(h) => st.threads.push(h),
            Err(e) => {
                // The reader's `Running` went with its closure: only the writer runs.
                return Err(self.failed_to_start(&mut st, &client, e));
            }
        }
        Ok(())
    }

    /// A client whose threads could not all start: takes it out at once, tells the
    /// application it left, and gives the error back.
    fn failed_to_start(&self, st: &mut State, client: &Arc<Client>, e: std::io::Error) -> Error {
        self.leave_locked(st, client, LeaveReason::Failed(e.to_string()), Leave::Now);
        self.inbox.left(client.id, client.reason());
        e.into()
    }

    /// The reader thread: what the client sends, decoded, into the events; then its
    /// `Left`, always last.
    fn read_loop(&self, running: Running, mut reader: Reader) {
        let client = &running.0;
        loop {
            let mut buf = Vec::new();
            match reader.recv_bytes_into(&mut buf) {
                Ok(()) => {
                    if let Err(e) = self.inbox.message(client, buf) {
                        self.leave(client, LeaveReason::Undecodable(e.to_string()), Leave::Now);
                        break;
                    }
                }
                Err(Error::Disconnected) => {
                    self.leave(
                        client,
                        LeaveReason::Closed,
                        Leave::Gracefully { discard: false },
                    );
                    break;
                }
                Err(e @ (Error::TooLarge { .. } | Error::Malformed(_))) => {
                    self.leave(client, LeaveReason::Protocol(e.to_string()), Leave::Now);
                    break;
                }
                // A blocking receive times out only past the stall limit, mid-message.
                Err(Error::Timeout) => {
                    self.leave(client, LeaveReason::Stalled, Leave::Now);
                    break;
                }
                Err(e) => {
                    self.leave(client, LeaveReason::Failed(e.to_string()), Leave::Now);
                    break;
                }
            }
        }
        drop(reader);
        let reason = client.reason();
        tracing::debug!(client = %client.id, %reason, "client left");
        self.inbox.left(client.id, reason);
    }

    /// The writer thread: the outbox, in order, onto the socket.
    fn write_loop(&self, running: Running, mut writer: Writer, queued: mpsc::Receiver<Arc<[u8]>>) {
        let client = &running.0;
        // Ends when the client is taken out of the server and its outbox is empty.
        for msg in queued {
            if let Err(e) = writer.send_bytes(&msg) {
                let (reason, how) = match e {
                    // It closed; its reader takes in what it sent before.
                    Error::Disconnected => {
                        (LeaveReason::Closed, Leave::Gracefully { discard: false })
                    }
                    e => (LeaveReason::Failed(e.to_string()), Leave::Now),
                };
                self.leave(client, reason, how);
                return;
            }
        }
        // All sent: end-of-stream tells the client.
        client.shut(Shutdown::Write);
    }
}
