#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod anon;
mod fifo;

ipckit_core::reexport_core!();

pub use {
    anon::{duplex, pipe},
    fifo::{Fifo, open_read, open_read_timeout, open_write, open_write_timeout},
    ipckit_core::{Connection, Framing, PeerCredentials, Reader, Writer},
};
