//! The conformance suite, run for every flavour of pipe.

use std::{io::Write, os::fd::AsFd, time::Duration};

use ipckit_conformance::{Flavour, conformance};
use ipckit_pipes::{Connection, Fifo, PipeReader, PipeWriter, Result};

fn write_raw(fd: impl AsFd, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::File::from(fd.as_fd().try_clone_to_owned()?).write_all(bytes)
}

struct Pipe;
impl Flavour for Pipe {
    type Tx = PipeWriter;
    type Rx = PipeReader;
    fn pair() -> Result<(PipeWriter, PipeReader)> {
        let (r, w) = ipckit_pipes::pipe()?;
        Ok((w, r))
    }
    fn send_raw(tx: &mut PipeWriter, bytes: &[u8]) -> Option<std::io::Result<()>> {
        Some(write_raw(&*tx, bytes))
    }
}

struct Duplex;
impl Flavour for Duplex {
    type Tx = Connection;
    type Rx = Connection;
    fn pair() -> Result<(Connection, Connection)> {
        ipckit_pipes::duplex()
    }
    fn send_raw(tx: &mut Connection, bytes: &[u8]) -> Option<std::io::Result<()>> {
        Some(write_raw(&*tx, bytes))
    }
}

struct NamedPipe;
impl Flavour for NamedPipe {
    type Tx = PipeWriter;
    type Rx = PipeReader;
    fn pair() -> Result<(PipeWriter, PipeReader)> {
        let fifo = Fifo::create()?;
        let path = fifo.path().to_owned();
        let writer = std::thread::spawn(move || {
            ipckit_pipes::open_write_timeout(path, Duration::from_secs(10))
        });
        let reader = ipckit_pipes::open_read_timeout(fifo.path(), Duration::from_secs(10))?;
        let writer = writer.join().expect("opener thread")?;
        // Both ends are open: the name can go.
        drop(fifo);
        Ok((writer, reader))
    }
    fn send_raw(tx: &mut PipeWriter, bytes: &[u8]) -> Option<std::io::Result<()>> {
        Some(write_raw(&*tx, bytes))
    }
}

conformance!(pipe, Pipe);
conformance!(duplex, Duplex);
conformance!(fifo, NamedPipe);
