//! The `chat` scenario: the Python tutorial's hands-on exercise, a chat server process and client
//! processes that join, talk, hear each other through the server's broadcasts, and leave.
//!
//! Over sockets rather than the Python tutorial's manager queues, and checked: with no subcommand,
//! four clients join; once the server says everyone is here, each sends its lines; when
//! every client has said it is done, the server announces "all done" (after every relayed
//! line, in each client's order), so each client knows it has heard everything meant for
//! it, and checks it did. Alice and Bob then leave; Charlie and Diana hear them go, and
//! stay until the server shuts down.
//!
//! `chat serve` and `chat join NAME` are the same server and client, by hand.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead,
    os::fd::{AsFd, AsRawFd},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Subcommand;
use ipckit_core::{Codec, Ctx, Postcard, RoleResult, Writer};
use ipckit_sockets::{
    Address, ClientId, ConnectOptions, Event, Events, Listener, Peer, RecvBytes, SendBytes, Server,
    Stream,
};
use nix::sys::{
    signal::{SigSet, Signal},
    socket::{Shutdown, shutdown},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    echo::{check_removed, server_address},
    support::{Pace, join_all, role},
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The Python tutorial's four clients.
const NAMES: [&str; 4] = ["Alice 👩", "Bob 👨", "Charlie 🧑", "Diana 👩‍💻"];
/// How many of them (the first ones) leave by themselves; the others stay until shutdown.
const LEAVERS: usize = 2;

/// The Python tutorial's lines, but Rust.
const LINES: [&str; 3] = [
    "How's everyone doing today? 😊",
    "Anyone up for some Rust coding? 🦀",
    "I love IPC! It's so cool! 🚀",
];

/// What client `i` says, in order.
fn lines_of(i: usize) -> [String; 2] {
    [
        format!("Hello everyone! I'm {} 👋", NAMES[i]),
        LINES[i % LINES.len()].to_string(),
    ]
}

/// From a client to the server.
#[derive(Debug, Serialize, Deserialize)]
enum Up {
    /// The first thing a client says: its name.
    Hello(String),
    /// A line for everyone else.
    Say(String),
    /// It has said all it had to say.
    Done,
}

/// From the server to a client.
#[derive(Debug, Serialize, Deserialize)]
enum Down {
    /// Who was here before you.
    Welcome(Vec<String>),
    /// Someone joined.
    Joined(String),
    /// Everyone expected is here: talk.
    Start(Vec<String>),
    /// Someone said something.
    Said { from: String, text: String },
    /// Everyone is done: every line said has reached you.
    AllDone,
    /// Someone left.
    Left(String),
    /// The server is shutting down.
    Shutdown,
}

fn encode<T: Serialize>(value: &T) -> ipckit_core::Result<Vec<u8>> {
    let mut buf = Vec::new();
    Postcard.encode(value, &mut buf)?;
    Ok(buf)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> ipckit_core::Result<T> {
    Postcard.decode(bytes)
}

/// `chat serve` and `chat join`: the chat by hand.
#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Runs a chat server until Ctrl-C, printing who joins, says what, and leaves.
    Serve {
        /// Where to listen: `unix:///path`, `unix-abstract://name`, `tcp://host:port`.
        #[arg(long)]
        addr: Address,
    },
    /// Joins a chat server as NAME: sends each line typed, prints what the others say;
    /// Ctrl-D leaves.
    Join {
        /// Your name in the chat.
        name: String,
        /// The server's address.
        #[arg(long)]
        addr: Address,
    },
}

/// The server's side of a chat: who is who, and relaying what they say.
#[derive(Default)]
struct Room {
    peers: BTreeMap<ClientId, Peer>,
    /// Members (they said hello), in the order they came.
    names: BTreeMap<ClientId, String>,
    relayed: usize,
}

/// What a client did, as the room saw it.
enum Step {
    Nothing,
    Joined,
    Said,
    Done(String),
    Left,
}

impl Room {
    fn roster(&self) -> Vec<String> {
        self.names.values().cloned().collect()
    }

    fn handle(&mut self, server: &Server, event: Event) -> anyhow::Result<Step> {
        Ok(match event {
            Event::Joined(id, peer) => {
                self.peers.insert(id, peer);
                Step::Nothing
            }
            Event::Message(id, bytes) => match (decode::<Up>(&bytes), self.names.get(&id)) {
                (Ok(Up::Hello(name)), None) => {
                    let peer = self.peers.get(&id).map_or(String::new(), |p| p.to_string());
                    println!("✅ Client {name} joined the chat! ({peer})");
                    // It may have gone already: then its leave is on the way.
                    let _ = server.send_to(id, &encode(&Down::Welcome(self.roster()))?);
                    server.broadcast_except(id, &encode(&Down::Joined(name.clone()))?)?;
                    self.names.insert(id, name);
                    Step::Joined
                }
                (Ok(Up::Say(text)), Some(name)) => {
                    println!("📨 Broadcasting message from {name}: {text}");
                    let said = Down::Said {
                        from: name.clone(),
                        text,
                    };
                    server.broadcast_except(id, &encode(&said)?)?;
                    self.relayed += 1;
                    Step::Said
                }
                (Ok(Up::Done), Some(name)) => Step::Done(name.clone()),
                (what, _) => {
                    println!("⚠️ Client {id} is not speaking chat ({what:?}); sending it away");
                    server.disconnect(id, "not speaking chat");
                    Step::Nothing
                }
            },
            Event::Left(id, reason) => {
                self.peers.remove(&id);
                match self.names.remove(&id) {
                    Some(name) => {
                        println!("👋 Client {name} left the chat! ({reason})");
                        server.broadcast(&encode(&Down::Left(name.clone()))?)?;
                        Step::Left
                    }
                    None => Step::Nothing,
                }
            }
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ServerArgs {
    addr: String,
}

#[derive(Serialize, Deserialize)]
struct ClientArgs {
    addr: String,
    index: usize,
    pace: Pace,
}

/// The `chat` scenario, or `chat serve` / `chat join`.
pub(crate) fn chat(mode: Option<Mode>, addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    match mode {
        None => scenario(addr, pace),
        Some(Mode::Serve { addr }) => serve(&addr),
        Some(Mode::Join { name, addr }) => join(&name, &addr),
    }
}

fn scenario(addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    let addr = server_address(addr)?;
    println!(
        "💬 A chat server and {} clients, each a process of its own, over {addr}",
        NAMES.len()
    );
    let mut children = vec![
        role("chat-server")
            .arg(&ServerArgs {
                addr: addr.to_string(),
            })?
            .spawn()?,
    ];
    for index in 0..NAMES.len() {
        let args = ClientArgs {
            addr: addr.to_string(),
            index,
            pace,
        };
        children.push(role("chat-client").arg(&args)?.spawn()?);
        // The Python tutorial staggers the joins.
        pace.pause(0.5);
    }
    let outcome = join_all(&mut children);
    let removed = check_removed(&addr);
    outcome?;
    removed?;
    println!(
        "🎉 Chat system demo complete! Every client heard every line meant for it, \
         {} lines relayed",
        NAMES.len() * 2
    );
    Ok(())
}

/// The scripted server: starts the chat when everyone is here, says "all done" when
/// everyone is, and shuts down once the leavers have gone.
pub(crate) fn scripted_server(ctx: &mut Ctx) -> RoleResult {
    let ServerArgs { addr } = ctx.arg()?;
    let (server, events) = Server::start(Listener::bind(&addr.parse()?)?)?;
    println!("📡 Chat server started at {}!", server.address());
    let mut room = Room::default();
    let (mut started, mut done, mut left) = (false, BTreeSet::new(), 0);
    loop {
        let event = events.recv_timeout(PATIENCE)?;
        match room.handle(&server, event)? {
            Step::Joined if !started && room.names.len() == NAMES.len() => {
                started = true;
                println!("📡 Everyone is here: let the chat begin!");
                server.broadcast(&encode(&Down::Start(room.roster()))?)?;
            }
            Step::Done(name) => {
                done.insert(name);
                if done.len() == NAMES.len() {
                    println!("📡 Every line relayed: telling everyone it is all done");
                    server.broadcast(&encode(&Down::AllDone)?)?;
                }
            }
            Step::Left if done.len() < NAMES.len() => {
                return Err("a client left before the chat was over".into());
            }
            Step::Left => {
                left += 1;
                if left == LEAVERS {
                    break;
                }
            }
            Step::Nothing | Step::Joined | Step::Said => {}
        }
    }
    println!("🛑 Server shutting down...");
    server.broadcast(&encode(&Down::Shutdown)?)?;
    server.shutdown();
    // Those who stayed leave now.
    for event in events {
        room.handle(&server, event)?;
    }
    if room.relayed != NAMES.len() * 2 {
        return Err(format!("relayed {} lines, not {}", room.relayed, NAMES.len() * 2).into());
    }
    println!("📡 Chat server closed: {} lines relayed", room.relayed);
    Ok(())
}

fn send(conn: &mut Stream, msg: &Up) -> ipckit_core::Result<()> {
    conn.send_bytes(&encode(msg)?)
}

/// A scripted client: joins, waits for everyone, says its lines, checks it heard all the
/// others' lines (and joins and leaves), then leaves or stays until shutdown.
pub(crate) fn scripted_client(ctx: &mut Ctx) -> RoleResult {
    let ClientArgs { addr, index, pace } = ctx.arg()?;
    let me = NAMES[index];
    let mut conn = Stream::connect_with(
        &addr.parse()?,
        &ConnectOptions {
            timeout: Some(PATIENCE),
            retry: true,
            authkey: None,
        },
    )?;
    send(&mut conn, &Up::Hello(me.to_string()))?;
    println!("💬 {me} connected to chat!");
    let mut met = BTreeSet::from([me.to_string()]);
    let mut heard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut gone = Vec::new();
    let mut roster = Vec::new();
    loop {
        match decode::<Down>(&conn.recv_bytes_timeout(PATIENCE)?)? {
            Down::Welcome(here) => met.extend(here),
            Down::Joined(name) => {
                println!("📥 {me} received: [Server] 🎉 {name} has joined the chat!");
                met.insert(name);
            }
            Down::Start(everyone) => {
                roster = everyone;
                for line in lines_of(index) {
                    pace.pause(0.3 * (index + 1) as f64);
                    send(&mut conn, &Up::Say(line.clone()))?;
                    println!("📤 {me} sent: {line}");
                }
                send(&mut conn, &Up::Done)?;
            }
            Down::Said { from, text } => {
                println!("📥 {me} received: [{from}] {text}");
                heard.entry(from).or_default().push(text);
            }
            Down::AllDone => {
                check_heard(me, &roster, &met, &heard)?;
                println!(
                    "✅ {me}: heard all {} lines of the other {}, in order",
                    (roster.len() - 1) * 2,
                    roster.len() - 1
                );
                if index < LEAVERS {
                    println!("👋 {me} disconnected from chat!");
                    return Ok(());
                }
            }
            Down::Left(name) => {
                println!("📥 {me} received: [Server] 👋 {name} has left the chat!");
                gone.push(name);
            }
            Down::Shutdown => {
                println!("🛑 {me} received shutdown signal");
                gone.sort();
                let mut leavers: Vec<String> =
                    NAMES[..LEAVERS].iter().map(|n| n.to_string()).collect();
                leavers.sort();
                if gone != leavers {
                    return Err(format!("{me} saw {gone:?} leave, not {leavers:?}").into());
                }
                return Ok(());
            }
        }
    }
}

/// Whether `me` heard every other member's lines, in order, and met everyone.
fn check_heard(
    me: &str,
    roster: &[String],
    met: &BTreeSet<String>,
    heard: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let everyone: BTreeSet<String> = NAMES.iter().map(|n| n.to_string()).collect();
    if roster.iter().cloned().collect::<BTreeSet<_>>() != everyone || *met != everyone {
        return Err(format!(
            "{me}: the roster is {roster:?} and I met {met:?}, not {everyone:?}"
        ));
    }
    for (i, name) in NAMES.iter().enumerate() {
        let want: Vec<String> = if *name == me {
            Vec::new()
        } else {
            lines_of(i).to_vec()
        };
        let got = heard.get(*name).cloned().unwrap_or_default();
        if got != want {
            return Err(format!("{me} heard {got:?} from {name}, not {want:?}"));
        }
    }
    Ok(())
}

/// `chat serve`: a chat server until Ctrl-C (or SIGTERM), then a clean shutdown: the
/// clients are told, and the socket file is removed.
fn serve(addr: &Address) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread inherits the mask: the signals wait
    // for `wait` below instead of killing the process, which would leave the socket file.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    let listener = Listener::bind(addr).with_context(|| format!("listen at {addr}"))?;
    let (server, events) = Server::start(listener)?;
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
    server.broadcast(&encode(&Down::Shutdown)?)?;
    server.shutdown();
    relay
        .join()
        .map_err(|_| anyhow::anyhow!("the relay panicked"))??;
    println!("📡 Chat server closed");
    Ok(())
}

fn relay(server: &Server, events: Events) -> anyhow::Result<()> {
    let mut room = Room::default();
    for event in events {
        room.handle(server, event)?;
    }
    Ok(())
}

/// `chat join`: two threads, as the Python tutorial's client: this one prints what the others say,
/// another sends the lines read from stdin.
fn join(name: &str, addr: &Address) -> anyhow::Result<()> {
    let conn = Stream::connect_with(
        addr,
        &ConnectOptions {
            timeout: Some(Duration::from_secs(10)),
            retry: true,
            authkey: None,
        },
    )?;
    // The sending thread writes to a second descriptor of the same socket.
    let mut out = Writer::from_fd(conn.as_fd().try_clone_to_owned()?)?.into_sender::<Up>();
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
        // End of input: leave. The server sees the end of the stream and closes.
        println!("👋 {me} disconnected from chat!");
        shutdown(out.get_mut().as_fd().as_raw_fd(), Shutdown::Write)?;
        Ok(())
    });
    let mut conn = conn.into_receiver::<Down>();
    loop {
        let down = match conn.recv() {
            Ok(down) => down,
            Err(ipckit_core::Error::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        match down {
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
