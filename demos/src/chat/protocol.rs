//! What the chat's server and clients say to each other, and the server's room: who is
//! who, and relaying what they say. [`Text`] is the same conversation as lines of text, for
//! people with `nc`.

use std::{collections::BTreeMap, fmt};

use ipckit_sockets::{ClientId, Error, Event, Format, LeaveReason, Peer, Server};
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
    /// What is your name? (Asked of a person at a terminal, whose first line is it.)
    AskName,
}

/// What a person reads: the line `chat join` prints, and what a line client receives.
impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Down::Welcome(here) if here.is_empty() => f.write_str("👀 Nobody else here yet"),
            Down::Welcome(here) => write!(f, "👀 Here already: {}", here.join(", ")),
            Down::Joined(who) => write!(f, "📥 [Server] 🎉 {who} has joined the chat!"),
            Down::Start(everyone) => write!(f, "📡 Everyone is here: {}", everyone.join(", ")),
            Down::Said { from, text } => write!(f, "📥 [{from}] {text}"),
            Down::AllDone => f.write_str("📡 All done"),
            Down::Left(who) => write!(f, "📥 [Server] 👋 {who} has left the chat!"),
            Down::Shutdown => f.write_str("🛑 The server is shutting down"),
            Down::AskName => f.write_str("👋 Welcome to the chat! What is your name?"),
        }
    }
}

/// The chat as lines of text, for a line-framed server (`chat serve --framing lines`): a
/// line a person types is a [`Up::Say`] (the first one names them), and every notice is
/// the line `chat join` would print.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Text;

impl Format<Up> for Text {
    fn encode(&self, msg: &Up, out: &mut Vec<u8>) -> ipckit_sockets::Result<()> {
        let line = match msg {
            Up::Hello(text) | Up::Say(text) => text.as_str(),
            Up::Done => "",
        };
        out.extend_from_slice(line.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: Vec<u8>) -> ipckit_sockets::Result<Up> {
        let line = String::from_utf8(bytes).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Up::Say(line))
    }
}

impl Format<Down> for Text {
    fn encode(&self, msg: &Down, out: &mut Vec<u8>) -> ipckit_sockets::Result<()> {
        out.extend_from_slice(msg.to_string().as_bytes());
        Ok(())
    }

    fn decode(&self, _: Vec<u8>) -> ipckit_sockets::Result<Down> {
        Err(Error::Codec(
            "a server's notices are read by people, not decoded".into(),
        ))
    }
}

/// The server's side of a chat: who is who, and relaying what they say.
#[derive(Default)]
pub(super) struct Room {
    /// People at a terminal: asked their name when they join, and their first line is it.
    by_text: bool,
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
    /// A client left: its name and why.
    Left(String, String),
}

impl Room {
    /// A room of people at a terminal (a line-framed server).
    pub(super) fn by_text() -> Self {
        Room {
            by_text: true,
            ..Room::default()
        }
    }

    pub(super) fn roster(&self) -> Vec<String> {
        self.names.values().cloned().collect()
    }

    /// Takes one event of the server: answers, relays, and says what happened.
    pub(super) fn handle<C: Format<Down> + Clone>(
        &mut self,
        server: &Server<Down, C>,
        event: Event<Up>,
    ) -> anyhow::Result<Step> {
        Ok(match event {
            Event::Joined { client, peer } => {
                self.peers.insert(client, peer);
                if self.by_text {
                    // It may have gone already: then its leave is on the way.
                    let _ = server.send_to(client, &Down::AskName);
                }
                Step::Nothing
            }
            Event::Message { from, msg } => match (msg, self.names.get(&from)) {
                // A blank line says nothing.
                (Up::Say(text), _) if self.by_text && text.trim().is_empty() => Step::Nothing,
                (Up::Say(name), None) if self.by_text => {
                    self.welcome(server, from, name.trim().to_string())?
                }
                (Up::Hello(name), None) => self.welcome(server, from, name)?,
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
                        Step::Left(name, reason.to_string())
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

    /// A client said its name: welcome it, and tell the others.
    fn welcome<C: Format<Down> + Clone>(
        &mut self,
        server: &Server<Down, C>,
        client: ClientId,
        name: String,
    ) -> anyhow::Result<Step> {
        let peer = self
            .peers
            .get(&client)
            .map_or(String::new(), |p| p.to_string());
        println!("✅ Client {name} joined the chat! ({peer})");
        // It may have gone already: then its leave is on the way.
        let _ = server.send_to(client, &Down::Welcome(self.roster()));
        server.broadcast_except(client, &Down::Joined(name.clone()))?;
        self.names.insert(client, name);
        Ok(Step::Joined)
    }
}
