//! `chat serve` and `chat join NAME`: the same server and client, by hand.

use std::{io::BufRead, sync::Arc, time::Duration};

use anyhow::Context;
use ipckit_sockets::{
    Address, ConnectOptions, Events, Format, Framing, Listener, RecvBytes, SendBytes, Server,
    ServerOptions, connect_with,
};
use nix::sys::signal::{SigSet, Signal};

use super::{
    ChatFraming,
    protocol::{Down, Room, Text, Up},
};

/// `chat serve`: a chat server until Ctrl-C (or SIGTERM), then a clean shutdown: the
/// clients are told, and the socket file is removed. With `--framing lines` its clients
/// are people with `nc` (or any program that writes lines), instead of `chat join`.
pub(super) fn serve(addr: &Address, framing: ChatFraming) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread inherits the mask: the signals wait
    // for `wait` below instead of killing the process, which would leave the socket file.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    let listener = Listener::bind(addr).with_context(|| format!("listen at {addr}"))?;
    match framing {
        ChatFraming::Length => {
            let (server, events) = Server::start(listener)?;
            println!(
                "📡 Chat server listening at {}; Ctrl-C stops it",
                server.address()
            );
            run(server, events, Room::default(), &signals)
        }
        ChatFraming::Lines => {
            let opts = ServerOptions::new().framing(Framing::Lines);
            let (server, events) = Server::start_with_format(listener, &opts, Text)?;
            let hint = match server.address() {
                Address::Tcp(at) => format!(" (join with `nc {} {}`)", at.ip(), at.port()),
                _ => String::new(),
            };
            println!(
                "📡 Chat server listening at {}, one line a message{hint}; Ctrl-C stops it",
                server.address()
            );
            run(server, events, Room::by_text(), &signals)
        }
    }
}

/// Serves until a signal in `signals` comes, then shuts down.
fn run<C: Format<Down> + Format<Up> + Clone>(
    server: Server<Down, C>,
    events: Events<Up, C>,
    room: Room,
    signals: &SigSet,
) -> anyhow::Result<()> {
    let server = Arc::new(server);
    let relay = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || relay(&server, events, room))
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
fn relay<C: Format<Down> + Format<Up> + Clone>(
    server: &Server<Down, C>,
    events: Events<Up, C>,
    mut room: Room,
) -> anyhow::Result<()> {
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
            // For the scripted chat, and for people at a terminal.
            Down::Start(_) | Down::AllDone | Down::AskName => {}
            down => println!("{down}"),
        }
    }
    println!("🔌 Connection closed");
    Ok(())
}
