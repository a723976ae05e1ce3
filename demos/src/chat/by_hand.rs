//! `chat serve` and `chat join NAME`: the same server and client, by hand.

use std::{io::BufRead, sync::Arc, time::Duration};

use anyhow::Context;
use ipckit_sockets::{
    Address, ConnectOptions, Events, Listener, RecvBytes, SendBytes, Server, connect_with,
};
use nix::sys::signal::{SigSet, Signal};

use super::protocol::{Down, Room, Up};

/// `chat serve`: a chat server until Ctrl-C (or SIGTERM), then a clean shutdown: the
/// clients are told, and the socket file is removed.
pub(super) fn serve(addr: &Address) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread inherits the mask: the signals wait
    // for `wait` below instead of killing the process, which would leave the socket file.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    let listener = Listener::bind(addr).with_context(|| format!("listen at {addr}"))?;
    let (server, events): (Server<Down>, Events<Up>) = Server::start(listener)?;
    let server = Arc::new(server);
    println!(
        "📡 Chat server listening at {}; Ctrl-C stops it",
        server.address()
    );
    let relay = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || relay(&server, events))
    };
    let signal = signals.wait()?;
    println!("🛑 {signal}: server shutting down...");
    server.broadcast(&Down::Shutdown)?;
    server.shutdown();
    relay
        .join()
        .map_err(|_| anyhow::anyhow!("the relay panicked"))??;
    println!("📡 Chat server closed");
    Ok(())
}

/// Every event until the server has shut down, through the room.
fn relay(server: &Server<Down>, events: Events<Up>) -> anyhow::Result<()> {
    let mut room = Room::default();
    for event in events {
        room.handle(server, event?)?;
    }
    Ok(())
}

/// `chat join`: two threads, as the Python tutorial's client: this one prints what the
/// others say, another sends the lines read from stdin. The connection is split, one half
/// for each.
pub(super) fn join(name: &str, addr: &Address) -> anyhow::Result<()> {
    let conn = connect_with(
        addr,
        &ConnectOptions::new()
            .timeout(Duration::from_secs(10))
            .retry(true),
    )?;
    let (reader, writer) = conn.split()?;
    let mut out = writer.into_sender::<Up>();
    out.send(&Up::Hello(name.to_string()))?;
    println!("💬 {name} connected to chat at {addr}! Type a line to send it; Ctrl-D leaves.");
    let me = name.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            out.send(&Up::Say(line.clone()))?;
            println!("📤 {me} sent: {line}");
        }
        // End of input: leave. Dropping the writing half ends the stream; the server sees
        // it and closes.
        println!("👋 {me} disconnected from chat!");
        drop(out);
        Ok(())
    });
    for down in reader.into_receiver::<Down>() {
        match down? {
            Down::Welcome(here) if here.is_empty() => println!("👀 Nobody else here yet"),
            Down::Welcome(here) => println!("👀 Here already: {}", here.join(", ")),
            Down::Joined(who) => println!("📥 [Server] 🎉 {who} has joined the chat!"),
            Down::Said { from, text } => println!("📥 [{from}] {text}"),
            Down::Left(who) => println!("📥 [Server] 👋 {who} has left the chat!"),
            Down::Shutdown => println!("🛑 The server is shutting down"),
            Down::Start(_) | Down::AllDone => {}
        }
    }
    println!("🔌 Connection closed");
    Ok(())
}
