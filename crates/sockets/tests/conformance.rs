//! The conformance suite, run over TCP, Unix-file and abstract Unix stream sockets.
//!
//! Each pair is made the way two real programs meet: a listener, a client that connects,
//! and the stream the listener accepts. The listener is gone before the test starts (a Unix
//! socket file with it).

use std::time::Duration;

use ipckit_conformance::{Flavour, conformance};
use ipckit_sockets::{Address, Listener, Result, Stream};

/// How long making a pair may wait for the accept.
const ACCEPT: Duration = Duration::from_secs(10);

/// Listens at `addr`, connects to it and accepts: (the client, the accepted stream).
fn connected(addr: &Address) -> Result<(Stream, Stream)> {
    let listener = Listener::bind(addr)?;
    let client = Stream::connect(listener.address())?;
    let accepted = listener.accept_timeout(ACCEPT)?;
    Ok((client, accepted))
}

struct Tcp;
impl Flavour for Tcp {
    type Tx = Stream;
    type Rx = Stream;
    fn pair() -> Result<(Stream, Stream)> {
        connected(&"tcp://127.0.0.1:0".parse()?)
    }
}

struct Unix;
impl Flavour for Unix {
    type Tx = Stream;
    type Rx = Stream;
    fn pair() -> Result<(Stream, Stream)> {
        let path = ipckit_core::temp_path("sock");
        let pair = connected(&Address::Unix(path.clone()));
        // The listener is dropped: its file must be gone, whatever happened.
        assert!(!path.exists(), "{} was left behind", path.display());
        pair
    }
}

struct Abstract;
impl Flavour for Abstract {
    type Tx = Stream;
    type Rx = Stream;
    fn pair() -> Result<(Stream, Stream)> {
        connected(&Address::UnixAbstract(ipckit_core::unique_name("sock")))
    }
}

conformance!(tcp, Tcp, stream);
conformance!(unix, Unix, stream);
conformance!(unix_abstract, Abstract, stream);
