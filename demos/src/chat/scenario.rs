//! The scripted chat: four clients join; once the server says everyone is here, each sends
//! its lines; when every client has said it is done, the server announces "all done"
//! (after every relayed line, in each client's order), so each client knows it has heard
//! everything meant for it, and checks it did. Alice and Bob then leave; Charlie and Diana
//! hear them go, and stay until the server shuts down.

use std::collections::{BTreeMap, BTreeSet};

use ipckit_core::{Ctx, RoleResult};
use ipckit_sockets::{
    Address, ConnectOptions, Events, Listener, RecvBytes, SendBytes, Server, connect_with,
};
use serde::{Deserialize, Serialize};

use super::protocol::{Down, Room, Step, Up};
use crate::{
    echo::{check_removed, server_address},
    support::{PATIENCE, Pace, join_all, role},
};

/// The Python tutorial's four clients.
pub(super) const NAMES: [&str; 4] = ["Alice 👩", "Bob 👨", "Charlie 🧑", "Diana 👩‍💻"];
/// How many of them (the first ones) leave by themselves; the others stay until shutdown.
pub(super) const LEAVERS: usize = 2;

/// The Python tutorial's lines, but Rust.
const LINES: [&str; 3] = [
    "How's everyone doing today? 😊",
    "Anyone up for some Rust coding? 🦀",
    "I love IPC! It's so cool! 🚀",
];

/// What client `i` says, in order.
pub(super) fn lines_of(i: usize) -> [String; 2] {
    [
        format!("Hello everyone! I'm {} 👋", NAMES[i]),
        LINES[i % LINES.len()].to_string(),
    ]
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

/// The `chat` scenario: a server process and four client processes.
pub(super) fn scenario(addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
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
    let (server, events): (Server<Down>, Events<Up>) =
        Server::start(Listener::bind(&addr.parse()?)?)?;
    println!("📡 Chat server started at {}!", server.address());
    let mut room = Room::default();
    let (mut started, mut done, mut left) = (false, BTreeSet::new(), 0);
    loop {
        let event = events.recv_timeout(PATIENCE)?;
        match room.handle(&server, event)? {
            Step::Joined if !started && room.names.len() == NAMES.len() => {
                started = true;
                println!("📡 Everyone is here: let the chat begin!");
                server.broadcast(&Down::Start(room.roster()))?;
            }
            Step::Done(name) => {
                done.insert(name);
                if done.len() == NAMES.len() {
                    println!("📡 Every line relayed: telling everyone it is all done");
                    server.broadcast(&Down::AllDone)?;
                }
            }
            Step::Left(name, reason) if done.len() < NAMES.len() => {
                return Err(format!(
                    "client {name} left before the chat was over ({reason}): its process is gone"
                )
                .into());
            }
            Step::Left(..) => {
                left += 1;
                if left == LEAVERS {
                    break;
                }
            }
            Step::Nothing | Step::Joined | Step::Said => {}
        }
    }
    println!("🛑 Server shutting down...");
    server.broadcast(&Down::Shutdown)?;
    server.shutdown();
    // Those who stayed leave now; the events end after the last of them.
    for event in &events {
        room.handle(&server, event?)?;
    }
    if room.relayed != NAMES.len() * 2 {
        return Err(format!("relayed {} lines, not {}", room.relayed, NAMES.len() * 2).into());
    }
    println!("📡 Chat server closed: {} lines relayed", room.relayed);
    Ok(())
}

/// A scripted client: joins, waits for everyone, says its lines, checks it heard all the
/// others' lines (and joins and leaves), then leaves or stays until shutdown.
pub(crate) fn scripted_client(ctx: &mut Ctx) -> RoleResult {
    let ClientArgs { addr, index, pace } = ctx.arg()?;
    let conn = connect_with(
        &addr.parse()?,
        &ConnectOptions::new().timeout(PATIENCE).retry(true),
    )?;
    let (reader, writer) = conn.split()?;
    let (mut hear, mut say) = (reader.into_receiver::<Down>(), writer.into_sender::<Up>());
    converse(
        index,
        pace,
        || Ok(hear.recv_timeout(PATIENCE)?),
        |up| Ok(say.send(&up)?),
    )
}

/// What scripted client `index` says and hears, however it reaches the server: `hear`
/// waits for the server's next message, `say` sends one. Ends when the client leaves
/// (after "all done", if it is one of the leavers) or the server shuts down.
pub(super) fn converse(
    index: usize,
    pace: Pace,
    mut hear: impl FnMut() -> anyhow::Result<Down>,
    mut say: impl FnMut(Up) -> anyhow::Result<()>,
) -> RoleResult {
    let me = NAMES[index];
    say(Up::Hello(me.to_string()))?;
    println!("💬 {me} connected to chat!");
    let mut met = BTreeSet::from([me.to_string()]);
    let mut heard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut gone = Vec::new();
    let mut roster = Vec::new();
    loop {
        match hear()? {
            Down::Welcome(here) => met.extend(here),
            // Asked of line clients only.
            Down::AskName => {}
            Down::Joined(name) => {
                println!("📥 {me} received: [Server] 🎉 {name} has joined the chat!");
                met.insert(name);
            }
            Down::Start(everyone) => {
                roster = everyone;
                for line in lines_of(index) {
                    pace.pause(0.3 * (index + 1) as f64);
                    say(Up::Say(line.clone()))?;
                    println!("📤 {me} sent: {line}");
                }
                say(Up::Done)?;
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
