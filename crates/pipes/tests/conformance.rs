//! The conformance suite, run for every flavour of pipe.

use std::time::Duration;

use ipckit_conformance::{Flavour, conformance};
use ipckit_pipes::{Connection, Fifo, Reader, Result, Writer};

struct Pipe;
impl Flavour for Pipe {
    type Tx = Writer;
    type Rx = Reader;
    fn pair() -> Result<(Writer, Reader)> {
        let (r, w) = ipckit_pipes::pipe()?;
        Ok((w, r))
    }
}

struct Duplex;
impl Flavour for Duplex {
    type Tx = Connection;
    type Rx = Connection;
    fn pair() -> Result<(Connection, Connection)> {
        ipckit_pipes::duplex()
    }
}

struct NamedPipe;
impl Flavour for NamedPipe {
    type Tx = Writer;
    type Rx = Reader;
    fn pair() -> Result<(Writer, Reader)> {
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
}

conformance!(pipe, Pipe, stream);
conformance!(duplex, Duplex, stream);
conformance!(fifo, NamedPipe, stream);
