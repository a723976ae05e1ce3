//! The scripted chat through a manager, as the Python tutorial's: the manager process holds
//! a registry dict of the clients (name → the name of the client's queue), one queue per
//! client, and the server's queue. A client registers itself and its queue, then writes to
//! the server's queue; the server routes what it reads to the queues of the registry. The
//! same script and checks as over sockets ([`converse`]).
//!
//! A manager queue does not know who reads or writes it, so a client says when it leaves
//! (as the tutorial's `LEAVE`): it takes itself out of the registry first, then tells the
//! server, which tells the others.

use std::collections::{BTreeMap, BTreeSet};

use ipckit_core::{Ctx, RoleResult};
use ipckit_manager::{Dict, Manager, Queue};
use serde::{Deserialize, Serialize};

use super::{
    protocol::{Down, Up},
    scenario::{LEAVERS, NAMES, converse},
};
use crate::support::{OwnManager, PATIENCE, Pace, join_all, role};

/// The registry: each client's name → the name of its queue.
const REGISTRY: &str = "chat:clients";
/// The server's queue: what the clients say.
const INBOX: &str = "chat:server";

/// On the server's queue.
#[derive(Debug, Serialize, Deserialize)]
enum ToServer {
    /// A client's message.
    From(String, Up),
    /// A client left: it is out of the registry.
    Leave(String),
}

#[derive(Serialize, Deserialize)]
struct Args {
    /// The manager's address.
    addr: String,
    index: usize,
    pace: Pace,
}

/// The `chat --mechanism manager` scenario: a manager process, a server process and four
/// client processes.
pub(super) fn scenario(pace: Pace) -> anyhow::Result<()> {
    let manager = OwnManager::start()?;
    let addr = manager.address().clone();
    println!(
        "💬 A chat server and {} clients, each a process of its own, through a manager \
         process at {addr} (a registry dict `{REGISTRY}` of the clients, one queue per \
         client, and the server's queue `{INBOX}`)",
        NAMES.len()
    );
    let args = |index| Args {
        addr: addr.to_string(),
        index,
        pace,
    };
    let mut children = vec![role("chat-manager-server").arg(&args(0))?.spawn()?];
    for index in 0..NAMES.len() {
        children.push(role("chat-manager-client").arg(&args(index))?.spawn()?);
        // The Python tutorial staggers the joins.
        pace.pause(0.5);
    }
    join_all(&mut children)?;
    manager.shut_down()?;
    println!("🧹 The manager process is shut down and its socket file removed");
    println!(
        "🎉 Chat system demo complete! Every client heard every line meant for it, \
         {} lines relayed",
        NAMES.len() * 2
    );
    Ok(())
}

/// The server's side: the registry, and the clients' queues it has opened.
struct Router {
    manager: Manager,
    registry: Dict<String, String>,
    queues: BTreeMap<String, Queue<Down>>,
}

impl Router {
    /// The queue of the client registered as `name`.
    fn queue(&mut self, name: &str) -> anyhow::Result<Queue<Down>> {
        if let Some(q) = self.queues.get(name) {
            return Ok(q.clone());
        }
        let Some(queue) = self.registry.get(name)? else {
            anyhow::bail!("{name} is not in the registry");
        };
        let q = self.manager.queue::<Down>(&queue)?;
        self.queues.insert(name.to_string(), q.clone());
        Ok(q)
    }

    fn send_to(&mut self, name: &str, down: &Down) -> anyhow::Result<()> {
        Ok(self.queue(name)?.put(down)?)
    }

    /// To every client of the registry but `except`.
    fn broadcast_except(&mut self, except: Option<&str>, down: &Down) -> anyhow::Result<()> {
        for name in self.registry.keys()? {
            if Some(name.as_str()) != except {
                self.send_to(&name, down)?;
            }
        }
        Ok(())
    }
}

/// The scripted server: welcomes, relays, starts the chat when everyone is here, says "all
/// done" when everyone is, shuts down once the leavers have gone, and waits for the others
/// to leave.
pub(crate) fn scripted_server(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, .. } = ctx.arg()?;
    let manager = Manager::connect(&addr.parse()?, None)?;
    let inbox = manager.queue::<ToServer>(INBOX)?;
    let mut router = Router {
        registry: manager.dict(REGISTRY)?,
        manager,
        queues: BTreeMap::new(),
    };
    println!("📡 Chat server started, reading `{INBOX}`!");
    // Members, in the order they came.
    let mut members: Vec<String> = Vec::new();
    let (mut started, mut done, mut left, mut relayed) = (false, BTreeSet::new(), 0, 0);
    while left < LEAVERS {
        match inbox.get_timeout(PATIENCE)? {
            ToServer::From(name, Up::Hello(_)) => {
                let queue = router.registry.get(&name)?.unwrap_or_default();
                println!("✅ Client {name} joined the chat! (its queue: {queue})");
                router.send_to(&name, &Down::Welcome(members.clone()))?;
                router.broadcast_except(Some(&name), &Down::Joined(name.clone()))?;
                members.push(name);
                if !started && members.len() == NAMES.len() {
                    started = true;
                    println!("📡 Everyone is here: let the chat begin!");
                    router.broadcast_except(None, &Down::Start(members.clone()))?;
                }
            }
            ToServer::From(name, Up::Say(text)) => {
                println!("📨 Broadcasting message from {name}: {text}");
                let said = Down::Said {
                    from: name.clone(),
                    text,
                };
                router.broadcast_except(Some(&name), &said)?;
                relayed += 1;
            }
            ToServer::From(name, Up::Done) => {
                done.insert(name);
                if done.len() == NAMES.len() {
                    println!("📡 Every line relayed: telling everyone it is all done");
                    router.broadcast_except(None, &Down::AllDone)?;
                }
            }
            ToServer::Leave(name) => {
                if done.len() < NAMES.len() {
                    return Err(format!("client {name} left before the chat was over").into());
                }
                members.retain(|m| *m != name);
                router.queues.remove(&name);
                println!("👋 Client {name} left the chat! (said so)");
                router.broadcast_except(None, &Down::Left(name))?;
                left += 1;
            }
        }
    }
    println!("🛑 Server shutting down...");
    router.broadcast_except(None, &Down::Shutdown)?;
    // Those who stayed leave now.
    while !members.is_empty() {
        match inbox.get_timeout(PATIENCE)? {
            ToServer::Leave(name) => {
                members.retain(|m| *m != name);
                println!("👋 Client {name} left the chat! (at shutdown)");
            }
            other => return Err(format!("{other:?} after the shutdown").into()),
        }
    }
    if relayed != NAMES.len() * 2 {
        return Err(format!("relayed {relayed} lines, not {}", NAMES.len() * 2).into());
    }
    println!("📡 Chat server closed: {relayed} lines relayed");
    Ok(())
}

/// A scripted client: registers itself and its queue, converses through the server's
/// queue and its own, then leaves the registry and says so.
pub(crate) fn scripted_client(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, index, pace } = ctx.arg()?;
    let me = NAMES[index].to_string();
    let manager = Manager::connect(&addr.parse()?, None)?;
    let queue = format!("chat:client:{index}");
    let mine = manager.queue::<Down>(&queue)?;
    let registry = manager.dict::<String, String>(REGISTRY)?;
    let inbox = manager.queue::<ToServer>(INBOX)?;
    registry.insert(&me, &queue)?;
    converse(
        index,
        pace,
        || Ok(mine.get_timeout(PATIENCE)?),
        |up| Ok(inbox.put(&ToServer::From(me.clone(), up))?),
    )?;
    registry.remove(&me)?;
    inbox.put(&ToServer::Leave(me))?;
    Ok(())
}
