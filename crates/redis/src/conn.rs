//! One connection to the broker: opened lazily, dropped on any I/O failure and opened
//! again by the next call, every wait bounded.

use std::{
    io,
    time::{Duration, Instant},
};

use ipckit_core::{Deadline, Error, Result};
use redis::{ConnectionLike, RedisError};

/// The shortest time a call gives the broker, even a `try_` call: one round trip on a
/// loaded machine. A broker that stalls can hold a call this long past its deadline.
const MIN_WAIT: Duration = Duration::from_millis(250);

pub(crate) struct Conn {
    client: redis::Client,
    /// The URL without its password, for error messages.
    shown: String,
    io_timeout: Duration,
    con: Option<redis::Connection>,
    read_timeout: Option<Duration>,
    /// When the current connection was made: after a broker restart, producers need a
    /// heartbeat period to register again before their absence means anything.
    since: Instant,
}

/// The URL as it may be shown: its password replaced.
pub(crate) fn shown_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Conn {
    pub(crate) fn new(url: &str, io_timeout: Duration) -> Result<Conn> {
        let client = redis::Client::open(url).map_err(|e| Error::InvalidAddress {
            address: shown_url(url),
            reason: e.to_string(),
        })?;
        Ok(Conn {
            client,
            shown: shown_url(url),
            io_timeout,
            con: None,
            read_timeout: None,
            since: Instant::now(),
        })
    }

    /// How long the current connection has been up (zero when there is none).
    pub(crate) fn age(&self) -> Duration {
        if self.con.is_some() {
            self.since.elapsed()
        } else {
            Duration::ZERO
        }
    }

    /// The time one exchange may take under `deadline`, beyond `extra` (a server-side block).
    fn budget(&self, deadline: Deadline, extra: Duration) -> Duration {
        let io = match deadline.remaining() {
            None => self.io_timeout,
            Some(r) => self.io_timeout.min(r.max(MIN_WAIT)),
        };
        io + extra
    }

    /// Runs `f` on the connection (opened first if needed), the socket's timeouts set for
    /// `deadline` plus `extra`; an I/O failure drops the connection.
    pub(crate) fn run<T>(
        &mut self,
        deadline: Deadline,
        extra: Duration,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let budget = self.budget(deadline, extra);
        if self.con.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(budget.min(self.io_timeout))
                .map_err(|e| self.unreachable(e))?;
            self.con = Some(con);
            self.read_timeout = None;
            self.since = Instant::now();
        }
        let Some(con) = self.con.as_mut() else {
            return Err(Error::Disconnected);
        };
        if self.read_timeout != Some(budget) {
            let set = con
                .set_read_timeout(Some(budget))
                .and_then(|()| con.set_write_timeout(Some(budget)));
            if let Err(e) = set {
                self.con = None;
                return Err(self.unreachable(e));
            }
            self.read_timeout = Some(budget);
        }
        match f(con) {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                self.con = None;
                Err(self.unreachable(e))
            }
            Err(e) => {
                if !con.is_open() {
                    self.con = None;
                }
                Err(Error::os(
                    "run a command on",
                    "Redis broker",
                    &self.shown,
                    io::Error::other(e),
                ))
            }
        }
    }

    fn unreachable(&self, e: RedisError) -> Error {
        Error::os("reach", "Redis broker", &self.shown, io::Error::other(e))
    }
}
