#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod address;
mod auth;
mod connect;
mod datagram;
mod listener;
mod poll;
mod server;
mod unix;

ipckit_core::reexport_core!();

pub use {
    address::Address,
    connect::{ConnectOptions, connect, connect_with},
    datagram::{Datagram, MAX_DATAGRAM},
    ipckit_core::{Connection, Framing, PeerCredentials, Reader, Writer},
    listener::Listener,
    server::{
        ClientId, Event, Events, EventsIntoIter, EventsIter, Format, LeaveReason, Peer, Raw,
        Server, ServerOptions,
    },
};
