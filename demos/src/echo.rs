//! The `echo` scenario: the Python tutorial's socket example, an echo server and a client in two
//! processes. The client sends a few messages and checks that each comes back as it went,
//! a long one included, which the Python tutorial's single `recv(1024)` would have cut short: here
//! every message is one frame, delivered whole. The messages are text, typed (`String`) at
//! both ends.
//!
//! `echo serve` and `echo connect` are the two programs on their own, and speak the wire
//! format asked for: `--framing raw` is plain bytes, so `echo serve` serves the Python
//! tutorial's client and `echo connect` talks to the Python tutorial's server, unchanged.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use ipckit_core::{Ctx, RoleResult};
use ipckit_sockets::{
    Address, ConnectOptions, Error, Framing, Listener, RecvBytes, SendBytes, connect_with,
};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, Pace, join_all, role};

/// What the client sends: the Python tutorial's greeting, and more.
fn messages() -> Vec<String> {
    vec![
        "Hello, world".to_string(),
        "How are you? 🌐".to_string(),
        // Larger than a socket buffer, and than the Python tutorial's recv(1024).
        "Echo… echo… echo… ".repeat(5000),
        "Bye!".to_string(),
    ]
}

/// `echo serve` and `echo connect`: each program on its own.
#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Serves one client, as the Python tutorial's server: echoes what it sends until it
    /// closes.
    Serve {
        /// Where to listen: `tcp://host:port`, `unix:///path`, `unix-abstract://name`.
        #[arg(long)]
        addr: Address,
        /// How messages are delimited on the wire.
        #[arg(long, value_enum, default_value_t)]
        framing: WireFraming,
    },
    /// Connects to an echo server, sends the messages and checks each comes back.
    Connect {
        /// The server's address.
        #[arg(long)]
        addr: Address,
        /// How messages are delimited on the wire.
        #[arg(long, value_enum, default_value_t)]
        framing: WireFraming,
    },
}

/// How messages are delimited on the wire (`--framing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum WireFraming {
    /// Length-prefixed frames, as Python's `multiprocessing.connection`.
    #[default]
    Length,
    /// One message per line, as a person types them (`nc`).
    Lines,
    /// Plain bytes, as `socket.sendall` and `socket.recv` move them.
    Raw,
}

impl From<WireFraming> for Framing {
    fn from(f: WireFraming) -> Framing {
        match f {
            WireFraming::Length => Framing::Length,
            WireFraming::Lines => Framing::Lines,
            WireFraming::Raw => Framing::Raw,
        }
    }
}

/// A message as the narration shows it.
fn show(m: &str) -> String {
    if m.len() > 60 {
        format!("<{} bytes>", m.len())
    } else {
        format!("{m:?}")
    }
}

#[derive(Serialize, Deserialize)]
struct Args {
    addr: String,
    pace: Pace,
}

/// Where a server that is another process should listen: the address given, or a fresh
/// socket file in the temporary directory. For `tcp://…:0` a free port is picked here (and
/// let go at once), since the server must say its address before it exists.
pub(crate) fn server_address(given: Option<Address>) -> anyhow::Result<Address> {
    Ok(match given {
        None => Address::Unix(ipckit_core::temp_path("sock")),
        Some(Address::Tcp(a)) if a.port() == 0 => {
            Listener::bind(&Address::Tcp(a))?.address().clone()
        }
        Some(a) => a,
    })
}

/// After the run: a socket file must be gone (its listener removes it). Removes one left by
/// a server that was killed, and says so.
pub(crate) fn check_removed(addr: &Address) -> anyhow::Result<()> {
    if let Address::Unix(path) = addr {
        if path.exists() {
            let _ = std::fs::remove_file(path);
            bail!("{} was left behind", path.display());
        }
    }
    Ok(())
}

/// The `echo` scenario, or `echo serve` / `echo connect`.
pub(crate) fn echo(mode: Option<Mode>, addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    match mode {
        None => scripted(addr, pace),
        Some(Mode::Serve { addr, framing }) => serve(&addr, framing.into()),
        Some(Mode::Connect { addr, framing }) => connect(&addr, framing.into()),
    }
}

/// `echo serve`: one client, every message echoed until it closes.
fn serve(addr: &Address, framing: Framing) -> anyhow::Result<()> {
    let listener = Listener::bind(addr)?;
    println!(
        "🖥️ Server: listening at {} ({framing:?} framing)",
        listener.address()
    );
    let mut conn = listener.accept()?.framing(framing);
    println!("🖥️ Server: Connected by {}", conn.peer());
    let (mut echoed, mut bytes) = (0, 0);
    loop {
        match conn.recv_bytes() {
            Ok(data) => {
                println!(
                    "🖥️ Server: echoing {}",
                    show(&String::from_utf8_lossy(&data))
                );
                conn.send_bytes(&data)?;
                echoed += 1;
                bytes += data.len();
            }
            Err(Error::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "🖥️ Server: the client closed the connection after {echoed} receives, {bytes} bytes; \
         closing"
    );
    Ok(())
}

/// `echo connect`: sends each message and checks that it comes back whole.
fn connect(addr: &Address, framing: Framing) -> anyhow::Result<()> {
    // The server may not be listening yet.
    let opts = ConnectOptions::new().timeout(PATIENCE).retry(true);
    let mut conn = connect_with(addr, &opts)?.framing(framing);
    println!("💻 Client: connected to {addr} ({framing:?} framing)");
    for msg in messages() {
        println!("💻 Client: Sending {}", show(&msg));
        conn.send_bytes(msg.as_bytes())?;
        // Plain bytes keep no boundaries: what comes back may come in parts.
        let mut back = conn.recv_bytes_timeout(PATIENCE)?;
        while framing == Framing::Raw && back.len() < msg.len() {
            back.extend(conn.recv_bytes_timeout(PATIENCE)?);
        }
        if back != msg.as_bytes() {
            let back = String::from_utf8_lossy(&back);
            bail!("sent {}, got {} back", show(&msg), show(&back));
        }
        println!("💻 Client: Received {} ✅", show(&msg));
    }
    conn.shutdown()?;
    println!("💻 Client: every echo matched; closing the connection");
    Ok(())
}

/// The scripted `echo`: a server process and a client process.
fn scripted(addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    let addr = server_address(addr)?;
    println!("🌐 An echo server and a client, two processes, over {addr}");
    let args = Args {
        addr: addr.to_string(),
        pace,
    };
    let mut children = vec![
        role("echo-server").arg(&args)?.spawn()?,
        role("echo-client").arg(&args)?.spawn()?,
    ];
    let outcome = join_all(&mut children);
    let removed = check_removed(&addr);
    outcome?;
    removed?;
    println!(
        "🎉 Echo complete: all {} messages came back as they were sent",
        messages().len()
    );
    Ok(())
}

pub(crate) fn server(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, .. } = ctx.arg()?;
    let addr: Address = addr.parse()?;
    let listener = Listener::bind(&addr)?;
    println!("🖥️ Server: listening at {}", listener.address());
    let conn = listener.accept_timeout(PATIENCE)?;
    // Over a Unix socket the kernel names the client's process; over TCP, its address.
    let who = match (&addr, conn.peer_credentials()) {
        (Address::Unix(_) | Address::UnixAbstract(_), Ok(c)) => format!("process {}", c.pid),
        _ => conn.peer().to_string(),
    };
    println!("🖥️ Server: Connected by {who}");
    // Every message until the client closes (the iteration ends there): the connection
    // split in a reading half, typed and iterated, and a writing half to answer on.
    let (reader, writer) = conn.split()?;
    let mut answer = writer.into_sender::<String>();
    let mut echoed = 0;
    for text in reader.into_receiver::<String>() {
        let text = text?;
        println!("🖥️ Server: echoing {}", show(&text));
        answer.send(&text)?;
        echoed += 1;
    }
    println!("🖥️ Server: the client closed the connection after {echoed} messages; closing");
    // Dropping the listener removes its socket file.
    Ok(())
}

pub(crate) fn client(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, pace } = ctx.arg()?;
    let addr: Address = addr.parse()?;
    // The server is another process: it may not be listening yet.
    let conn = connect_with(&addr, &ConnectOptions::new().timeout(PATIENCE).retry(true))?;
    println!("💻 Client: connected to {addr}");
    let (reader, writer) = conn.split()?;
    let (mut send, mut recv) = (
        writer.into_sender::<String>(),
        reader.into_receiver::<String>(),
    );
    for msg in messages() {
        println!("💻 Client: Sending {}", show(&msg));
        send.send(&msg)?;
        let back = recv.recv_timeout(PATIENCE)?;
        if back != msg {
            return Err(format!("sent {}, got {} back", show(&msg), show(&back)).into());
        }
        println!("💻 Client: Received {} ✅", show(&back));
        pace.pause(0.5);
    }
    println!("💻 Client: every echo matched; closing the connection");
    Ok(())
}
