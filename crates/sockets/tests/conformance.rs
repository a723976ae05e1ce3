//! The conformance suite, run over TCP, Unix-file and abstract Unix stream sockets.
//!
//! Each pair is made the way two real programs meet: a listener, a client that connects,
//! and the connection the listener accepts. The listener is gone before the test starts (a Unix
//! socket file with it).

use ipckit_conformance::{Flavour, conformance};
use ipckit_sockets::{Address, Connection, Listener, Result, connect};

/// Listens at `addr`, connects to it and accepts: (the client, the accepted connection).
fn connected(addr: &Address) -> Result<(Connection, Connection)> {
    let listener = Listener::bind(addr)?;
    let client = connect(listener.address())?;
    let accepted = listener.accept_timeout(ipckit_testkit::PATIENCE)?;
    Ok((client, accepted))
}

struct Tcp;
impl Flavour for Tcp {
    type Tx = Connection;
    type Rx = Connection;
    fn pair() -> Result<(Connection, Connection)> {
        connected(&"tcp://127.0.0.1:0".parse()?)
    }
}

struct Unix;
impl Flavour for Unix {
    type Tx = Connection;
    type Rx = Connection;
    fn pair() -> Result<(Connection, Connection)> {
        let path = ipckit_core::temp_path("sock");
        let pair = connected(&Address::Unix(path.clone()));
        // The listener is dropped: its file must be gone, whatever happened.
        assert!(!path.exists(), "{} was left behind", path.display());
        pair
    }
}

struct Abstract;
impl Flavour for Abstract {
    type Tx = Connection;
    type Rx = Connection;
    fn pair() -> Result<(Connection, Connection)> {
        connected(&Address::UnixAbstract(ipckit_core::unique_name("sock")))
    }
}

conformance!(tcp, Tcp, stream);
conformance!(unix, Unix, stream);
conformance!(unix_abstract, Abstract, stream);
