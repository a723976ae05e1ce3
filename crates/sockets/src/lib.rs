#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod address;
mod auth;
mod datagram;
mod server;
mod stream;

pub use {
    address::Address,
    datagram::{Datagram, MAX_DATAGRAM},
    ipckit_core::{Error, RecvBytes, RecvTimeoutError, Result, SendBytes},
    server::{ClientId, Event, Events, LeaveReason, Peer, Server, ServerOptions},
    stream::{ConnectOptions, Listener, PeerCredentials, Stream},
};
