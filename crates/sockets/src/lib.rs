#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod address;
mod auth;
mod datagram;
mod stream;

pub use {
    address::Address,
    datagram::{Datagram, MAX_DATAGRAM},
    ipckit_core::{Error, RecvBytes, RecvTimeoutError, Result, SendBytes},
    stream::{ConnectOptions, Listener, PeerCredentials, Stream},
};
