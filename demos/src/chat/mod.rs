//! The `chat` scenario: the Python tutorial's hands-on exercise, a chat server process and client
//! processes that join, talk, hear each other through the server's broadcasts, and leave.
//!
//! Over sockets rather than the Python tutorial's manager queues, and checked. The server
//! is a typed `ipckit_sockets::Server`: it sends `Down` messages and its events deliver
//! `Up` messages; a client splits its connection and types each half.
//!
//! - `protocol`: the messages both ways, and the server's room.
//! - `scenario`: the scripted run with no subcommand, four clients, checked.
//! - `by_hand`: `chat serve` and `chat join NAME`, the same server and client, by hand.

mod by_hand;
mod protocol;
mod scenario;

use clap::Subcommand;
use ipckit_sockets::Address;

pub(crate) use self::scenario::{scripted_client, scripted_server};
use crate::support::Pace;

/// `chat serve` and `chat join`: the chat by hand.
#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Runs a chat server until Ctrl-C, printing who joins, says what, and leaves.
    Serve {
        /// Where to listen: `unix:///path`, `unix-abstract://name`, `tcp://host:port`.
        #[arg(long)]
        addr: Address,
    },
    /// Joins a chat server as NAME: sends each line typed, prints what the others say;
    /// Ctrl-D leaves.
    Join {
        /// Your name in the chat.
        name: String,
        /// The server's address.
        #[arg(long)]
        addr: Address,
    },
}

/// The `chat` scenario, or `chat serve` / `chat join`.
pub(crate) fn chat(mode: Option<Mode>, addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    match mode {
        None => scenario::scenario(addr, pace),
        Some(Mode::Serve { addr }) => by_hand::serve(&addr),
        Some(Mode::Join { name, addr }) => by_hand::join(&name, &addr),
    }
}
