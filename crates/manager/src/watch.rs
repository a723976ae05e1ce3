//! [`Watch`]: every change of one object, pushed by the server as it happens.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use crate::{
    Error, Result, Value,
    client::Conn,
    protocol::{Answer, Call, Change, Op},
    store::lock,
};

/// How many events a watch holds in this process before it lags.
const LOCAL_BACKLOG: usize = 4096;

#[derive(Debug)]
enum Item {
    Change(u64, Change),
    /// Events were dropped: look at the lag counter.
    Lag,
}

/// What the thread reading the connection shares with a [`Watch`].
#[derive(Debug)]
pub(crate) struct WatchState {
    tx: Mutex<Option<SyncSender<Item>>>,
    lagged: AtomicU64,
}

impl WatchState {
    pub(crate) fn deliver(&self, seq: u64, change: Change) {
        if let Some(tx) = lock(&self.tx).as_ref()
            && let Err(TrySendError::Full(_)) = tx.try_send(Item::Change(seq, change))
        {
            self.lagged.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn lag(&self, missed: u64) {
        self.lagged.fetch_add(missed, Ordering::AcqRel);
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.try_send(Item::Lag);
        }
    }

    pub(crate) fn end(&self) {
        lock(&self.tx).take();
    }
}

/// One event of a [`Watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The object changed; `seq` numbers the object's changes (1, 2, 3, … with no gap
    /// while the watcher keeps up).
    Changed {
        /// The change's number.
        seq: u64,
        /// What changed.
        change: Change,
    },
    /// The watcher fell behind and `missed` changes were dropped (for it alone: the
    /// server and the other clients went on); `snapshot` is the whole object as of
    /// change `seq`, and the events that follow come after it.
    Lagged {
        /// How many changes were dropped.
        missed: u64,
        /// The number of the last change the snapshot includes.
        seq: u64,
        /// The object as it is now: a map for a dict, a list for a list, the value.
        snapshot: Value,
    },
}

/// Every change of one object (a dict, a list, a value, an event), pushed by the server as
/// it happens, in order: made by the proxies' `watch()`.
///
/// [`snapshot`](Watch::snapshot) is the object when the watch began (as of change
/// [`seq`](Watch::seq)); [`recv`](Watch::recv) gives the changes after it. A watcher
/// that does not keep up never slows the server or the other clients: its events are
/// dropped and it gets one [`Event::Lagged`] with a fresh snapshot. When the server is
/// gone, `recv` is [`Error::Disconnected`]. Dropping the watch ends it.
#[derive(Debug)]
pub struct Watch {
    conn: Arc<Conn>,
    obj: u32,
    id: u64,
    rx: Receiver<Item>,
    state: Arc<WatchState>,
    snapshot: Value,
    seq: u64,
}

impl Watch {
    pub(crate) fn start(conn: &Arc<Conn>, obj: u32) -> Result<Watch> {
        let (tx, rx) = mpsc::sync_channel(LOCAL_BACKLOG);
        let state = Arc::new(WatchState {
            tx: Mutex::new(Some(tx)),
            lagged: AtomicU64::new(0),
        });
        let id = conn.fresh_id();
        conn.add_watch(id, Arc::clone(&state))?;
        match conn.call_id(id, Op::Watch { obj }, None) {
            Ok(Answer::Snapshot { seq, value }) => Ok(Watch {
                conn: Arc::clone(conn),
                obj,
                id,
                rx,
                state,
                snapshot: value,
                seq,
            }),
            Ok(other) => {
                conn.remove_watch(id);
                Err(Error::Protocol(format!("unexpected answer {other:?}")))
            }
            Err(e) => {
                conn.remove_watch(id);
                Err(e)
            }
        }
    }

    /// The object when the watch began.
    pub fn snapshot(&self) -> &Value {
        &self.snapshot
    }

    /// The number of the last change seen (by the snapshot or an event).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next change, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the server is gone.
    pub fn recv(&mut self) -> Result<Event> {
        self.recv_deadline(None)
    }

    /// The next change, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came; [`Error::Disconnected`] when the server is gone.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event> {
        self.recv_deadline(Some(Instant::now() + timeout))
    }

    /// The next change if one is there.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none is; [`Error::Disconnected`] when the server is gone.
    pub fn try_recv(&mut self) -> Result<Event> {
        self.recv_deadline(Some(Instant::now()))
    }

    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<Event> {
        loop {
            let conn = Arc::clone(&self.conn);
            let (state, rx) = (&self.state, &self.rx);
            // Reads the connection while waiting, if no other thread does.
            let item = conn.wait_for(deadline, |_| {
                if state.lagged.load(Ordering::Acquire) > 0 {
                    return Some(Item::Lag);
                }
                rx.try_recv().ok()
            })?;
            let lagged = self.state.lagged.swap(0, Ordering::AcqRel);
            if lagged > 0 {
                return self.resync(lagged);
            }
            if let Item::Change(seq, change) = item
                && seq > self.seq
            {
                self.seq = seq;
                return Ok(Event::Changed { seq, change });
            }
        }
    }

    fn resync(&mut self, lagged: u64) -> Result<Event> {
        let mut missed = lagged;
        while let Ok(i) = self.rx.try_recv() {
            if matches!(i, Item::Change(..)) {
                missed += 1;
            }
        }
        let call = Call::Snapshot;
        match self.conn.call(
            Op::On {
                obj: self.obj,
                call,
            },
            None,
        )? {
            Answer::Snapshot { seq, value } => {
                self.seq = seq;
                self.snapshot = value.clone();
                Ok(Event::Lagged {
                    missed,
                    seq,
                    snapshot: value,
                })
            }
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.conn.remove_watch(self.id);
        let _ = self.conn.call(
            Op::Unwatch {
                obj: self.obj,
                watch: self.id,
            },
            Some(Instant::now() + Duration::from_secs(1)),
        );
    }
}
