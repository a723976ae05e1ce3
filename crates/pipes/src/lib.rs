#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod anon;
mod fifo;

pub use {
    anon::{duplex, pipe},
    fifo::{Fifo, open_read, open_read_timeout, open_write, open_write_timeout},
    ipckit_core::{
        Deadline, Error, Framing, RecvBytes, Result, SendBytes, StreamConnection as Connection,
        StreamReader as PipeReader, StreamWriter as PipeWriter,
    },
};
