//! The `echo` scenario: the Python tutorial's socket example, an echo server and a client in two
//! processes. The client sends a few messages and checks that each comes back as it went,
//! a long one included, which the Python tutorial's single `recv(1024)` would have cut short: here
//! every message is one frame, delivered whole. The messages are text, typed (`String`) at
//! both ends.

use std::time::Duration;

use anyhow::bail;
use ipckit_core::{Ctx, RoleResult};
use ipckit_sockets::{Address, ConnectOptions, Listener, RecvBytes, SendBytes, connect_with};
use serde::{Deserialize, Serialize};

use crate::support::{Pace, join_all, role};

const PATIENCE: Duration = Duration::from_secs(60);

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

/// The `echo` scenario.
pub(crate) fn echo(addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
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
