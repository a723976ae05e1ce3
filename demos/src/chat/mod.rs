//! The `chat` scenario: the Python tutorial's hands-on exercise, a chat server process and client
//! processes that join, talk, hear each other through the server's broadcasts, and leave.
//!
//! Over sockets by default, and checked. The server is a typed `ipckit_sockets::Server`: it
//! sends `Down` messages and its events deliver `Up` messages; a client splits its
//! connection and types each half. `--mechanism manager` plays it as the Python tutorial
//! does, through a manager's registry dict and queues.
//!
//! - `protocol`: the messages both ways, and the server's room.
//! - `scenario`: the scripted run with no subcommand, four clients, checked.
//! - `managed`: the same script through a manager.
//! - `by_hand`: `chat serve` and `chat join NAME`, the same server and client, by hand.

mod by_hand;
mod managed;
mod protocol;
mod scenario;

use clap::{Subcommand, ValueEnum};
use ipckit_sockets::Address;

pub(crate) use self::{
    managed::{scripted_client as manager_client, scripted_server as manager_server},
    scenario::{scripted_client, scripted_server},
};
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

/// What carries the scripted chat (`chat --mechanism`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChatMechanism {
    /// A server listening on a socket, one connection per client; the server sees a
    /// client leave when its connection closes.
    #[default]
    Socket,
    /// As the Python tutorial: a manager process holds a registry dict of the clients and
    /// one queue per client, and the server's queue; clients say when they leave.
    Manager,
}

/// The `chat` scenario, or `chat serve` / `chat join`.
pub(crate) fn chat(
    mode: Option<Mode>,
    addr: Option<Address>,
    mechanism: ChatMechanism,
    pace: Pace,
) -> anyhow::Result<()> {
    match (mode, mechanism) {
        (None, ChatMechanism::Socket) => scenario::scenario(addr, pace),
        (None, ChatMechanism::Manager) => {
            if addr.is_some() {
                anyhow::bail!(
                    "--addr is where a socket server listens: not with --mechanism manager"
                );
            }
            managed::scenario(pace)
        }
        (Some(_), ChatMechanism::Manager) => {
            anyhow::bail!("`chat serve` and `chat join` are over sockets: no --mechanism manager")
        }
        (Some(Mode::Serve { addr, framing }), _) => by_hand::serve(&addr, framing),
        (Some(Mode::Join { name, addr }), _) => by_hand::join(&name, &addr),
    }
}
