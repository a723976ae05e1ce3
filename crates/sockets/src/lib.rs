#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod address;
mod auth;
mod datagram;
mod server;
mod stream;

ipckit_core::reexport_core!();

pub use {
    address::Address,
    datagram::{Datagram, MAX_DATAGRAM},
    server::{ClientId, Event, Events, LeaveReason, Peer, Server, ServerOptions},
    stream::{ConnectOptions, Listener, PeerCredentials, Stream},
};
