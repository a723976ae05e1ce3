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

use clap::{Subcommand, ValueEnum};
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
        /// Who joins: `chat join` (length, the default), or people with `nc` (lines).
        #[arg(long, value_enum, default_value_t)]
        framing: ChatFraming,
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

/// How the chat server frames its messages (`chat serve --framing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChatFraming {
    /// Length-prefixed, postcard-encoded messages: clients are `chat join`.
    #[default]
    Length,
    /// Lines of text: clients are people with `nc host port`, typing their name first.
    Lines,
}

/// The `chat` scenario, or `chat serve` / `chat join`.
pub(crate) fn chat(mode: Option<Mode>, addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    match mode {
        None => scenario::scenario(addr, pace),
        Some(Mode::Serve { addr, framing }) => by_hand::serve(&addr, framing),
        Some(Mode::Join { name, addr }) => by_hand::join(&name, &addr),
    }
}
