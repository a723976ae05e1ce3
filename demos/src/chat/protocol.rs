//! What the chat's server and clients say to each other, and the server's room: who is
//! who, and relaying what they say.

use std::collections::BTreeMap;

use ipckit_sockets::{ClientId, Event, LeaveReason, Peer, Server};
use serde::{Deserialize, Serialize};

/// From a client to the server.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Up {
    /// The first thing a client says: its name.
    Hello(String),
    /// A line for everyone else.
    Say(String),
    /// It has said all it had to say.
    Done,
}

/// From the server to a client.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Down {
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

/// The server's side of a chat: who is who, and relaying what they say.
#[derive(Default)]
pub(super) struct Room {
    peers: BTreeMap<ClientId, Peer>,
    /// Members (they said hello), in the order they came.
    pub(super) names: BTreeMap<ClientId, String>,
    pub(super) relayed: usize,
}

/// What a client did, as the room saw it.
pub(super) enum Step {
    Nothing,
    Joined,
    Said,
    Done(String),
    Left,
}

impl Room {
    pub(super) fn roster(&self) -> Vec<String> {
        self.names.values().cloned().collect()
    }

    /// Takes one event of the server: answers, relays, and says what happened.
    pub(super) fn handle(
        &mut self,
        server: &Server<Down>,
        event: Event<Up>,
    ) -> anyhow::Result<Step> {
        Ok(match event {
            Event::Joined { client, peer } => {
                self.peers.insert(client, peer);
                Step::Nothing
            }
            Event::Message { from, msg } => match (msg, self.names.get(&from)) {
                (Up::Hello(name), None) => {
                    let peer = self
                        .peers
                        .get(&from)
                        .map_or(String::new(), |p| p.to_string());
                    println!("✅ Client {name} joined the chat! ({peer})");
                    // It may have gone already: then its leave is on the way.
                    let _ = server.send_to(from, &Down::Welcome(self.roster()));
                    server.broadcast_except(from, &Down::Joined(name.clone()))?;
                    self.names.insert(from, name);
                    Step::Joined
                }
                (Up::Say(text), Some(name)) => {
                    println!("📨 Broadcasting message from {name}: {text}");
                    let said = Down::Said {
                        from: name.clone(),
                        text,
                    };
                    server.broadcast_except(from, &said)?;
                    self.relayed += 1;
                    Step::Said
                }
                (Up::Done, Some(name)) => Step::Done(name.clone()),
                (what, _) => {
                    println!("⚠️ Client {from} said {what:?} out of turn; sending it away");
                    server.disconnect(from, "not following the chat protocol");
                    Step::Nothing
                }
            },
            Event::Left { client, reason } => {
                self.peers.remove(&client);
                match self.names.remove(&client) {
                    Some(name) => {
                        println!("👋 Client {name} left the chat! ({reason})");
                        server.broadcast(&Down::Left(name.clone()))?;
                        Step::Left
                    }
                    None => {
                        // A message that is not chat gets its sender dropped by the server.
                        if matches!(
                            reason,
                            LeaveReason::Undecodable(_) | LeaveReason::Protocol(_)
                        ) {
                            println!("⚠️ Client {client} is not speaking chat: {reason}");
                        }
                        Step::Nothing
                    }
                }
            }
        })
    }
}
