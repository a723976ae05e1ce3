//! The `scoreboard` scenario: the Python tutorial's `multiprocessing.Manager()` example.
//! Four player processes score points over five rounds in a shared `scores` dict and
//! register in a shared `players` list; a monitor process prints the board from the
//! manager's watch events (no polling); the parent prints the final ranking with medals
//! and checks that every point was counted once.
//!
//! By default each score is one server-side `incr`; `--style lock` plays it the
//! tutorial's way: under the manager's lock, read the score, then write it back plus the
//! points. `--python` makes players 3 and 4 Python processes running the tutorial's own
//! `game_player` (demos/python/scoreboard_player.py), connected to the same manager with
//! `BaseManager`; their random points are summed from what they print.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use ipckit_core::{Ctx, RoleResult};
use ipckit_manager::{Change, Event, Manager, ServeOptions};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, Pace, join_all, role};

const PLAYERS: u32 = 4;
const ROUNDS: u32 = 5;

/// How the players add their points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum Style {
    /// `scores.incr(player, points)`: one atomic call on the server.
    #[default]
    Incr,
    /// `with lock: scores[player] = scores[player] + points`, as the tutorial does.
    Lock,
}

#[derive(Serialize, Deserialize)]
struct Args {
    addr: String,
    id: u32,
    style: Style,
    pace: Pace,
}

fn name(id: u32) -> String {
    format!("Player_{id}")
}

/// The points player `id` scores in `round`: 10 to 100, fixed, so the parent knows each
/// total in advance.
fn points(id: u32, round: u32) -> i64 {
    let x = (id * 7919 + round * 104_729 + 13).wrapping_mul(2_654_435_761);
    10 + i64::from((x >> 7) % 91)
}

/// A pause of 0.1 to 0.3 s, as the tutorial's `random.uniform(0.1, 0.3)`.
fn pause(pace: Pace, id: u32, round: u32) {
    pace.pause(0.1 + f64::from((id * 31 + round * 17) % 21) / 100.0);
}

fn connect(addr: &str) -> anyhow::Result<Manager> {
    Ok(Manager::connect(&addr.parse()?, Some(AUTHKEY))?)
}

/// A player process: registers, then plays five rounds.
pub(crate) fn player(ctx: &mut Ctx) -> RoleResult {
    let args: Args = ctx.arg()?;
    let m = connect(&args.addr)?;
    let scores = m.dict::<String, i64>("scores")?;
    let players = m.list::<String>("players")?;
    let lock = m.lock("lock")?;
    let me = name(args.id);
    match args.style {
        // Both at once, atomically: nobody sees a player without a score.
        Style::Incr => {
            m.transaction([players.tx_push(&me)?, scores.tx_insert(&me, &0)?])?;
        }
        Style::Lock => {
            let _held = lock.acquire()?;
            players.push(&me)?;
            scores.insert(&me, &0)?;
        }
    }
    m.event("start")?.with_timeout(PATIENCE).wait()?;
    for round in 0..ROUNDS {
        let p = points(args.id, round);
        let total = match args.style {
            Style::Incr => scores.incr(&me, p)?,
            Style::Lock => {
                let _held = lock.acquire()?;
                let total = scores.get(&me)?.unwrap_or(0) + p;
                scores.insert(&me, &total)?;
                total
            }
        };
        println!("🎮 Player {} scored {p} points! Total: {total}", args.id);
        pause(args.pace, args.id, round);
    }
    Ok(())
}

fn ranking(board: &BTreeMap<String, i64>) -> Vec<(&String, i64)> {
    let mut r: Vec<(&String, i64)> = board.iter().map(|(k, v)| (k, *v)).collect();
    r.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    r
}

/// The monitor process: prints the board at every change, from watch events.
pub(crate) fn monitor(ctx: &mut Ctx) -> RoleResult {
    let args: Args = ctx.arg()?;
    let m = connect(&args.addr)?;
    let scores = m.dict::<String, i64>("scores")?;
    let over = m.event("game-over")?;
    let mut watch = scores.watch()?;
    let mut board: BTreeMap<String, i64> = watch.snapshot().to_typed()?;
    m.event("monitor-ready")?.set()?;
    let mut changes = 0u64;
    loop {
        match watch.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Changed { change, .. }) => {
                changes += 1;
                if let Change::Set { key, value } = change {
                    board.insert(key.to_typed()?, value.to_typed()?);
                }
                let line: Vec<String> = ranking(&board)
                    .iter()
                    .enumerate()
                    .map(|(i, (p, s))| format!("{}. {p}: {s}", i + 1))
                    .collect();
                println!("📊 Current Scoreboard: {}", line.join(" · "));
            }
            Ok(Event::Lagged { snapshot, .. }) => {
                println!("📊 (the monitor fell behind; fresh board from the server)");
                board = snapshot.to_typed()?;
            }
            Err(ipckit_manager::Error::Timeout) => {
                if over.is_set()? {
                    break;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let server: BTreeMap<String, i64> = scores.items()?.into_iter().collect();
    if board != server {
        return Err(
            format!("the monitor's board {board:?} differs from the server's {server:?}").into(),
        );
    }
    println!("📺 The monitor saw {changes} changes; its board matches the server's");
    Ok(())
}

/// The tutorial's Python player, run by a Python 3.12 or newer.
const PYTHON_PLAYER: &str = include_str!("../python/scoreboard_player.py");

/// The key the manager asks of every client (Python always authenticates).
const AUTHKEY: &[u8] = b"scoreboard";

/// A Python 3.12 or newer on the `PATH` or under pyenv.
fn find_python() -> anyhow::Result<std::path::PathBuf> {
    let mut candidates: Vec<std::path::PathBuf> = ["python3.13", "python3.12", "python3"]
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    if let Some(root) = std::env::var_os("PYENV_ROOT").or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pyenv").into())
    }) {
        for v in ["3.13", "3.12"] {
            if let Ok(dir) = std::fs::read_dir(std::path::Path::new(&root).join("versions")) {
                candidates.extend(
                    dir.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(v))
                        .map(|e| e.path().join("bin/python3")),
                );
            }
        }
    }
    let check = "import sys; sys.exit(sys.version_info < (3, 12))";
    candidates
        .into_iter()
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", check])
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("--python needs Python 3.12 or newer (python3.12, python3.13 or pyenv)")
}

/// The Python players: their processes, started with the tutorial's player code.
struct PythonPlayers {
    children: Vec<(u32, std::process::Child)>,
}

impl PythonPlayers {
    fn start(ids: &[u32], socket: &str) -> anyhow::Result<Self> {
        let py = find_python()?;
        let mut children = Vec::new();
        for &id in ids {
            let child = std::process::Command::new(&py)
                .args(["-c", PYTHON_PLAYER, socket])
                .arg(std::str::from_utf8(AUTHKEY)?)
                .arg(id.to_string())
                .env("PYTHONIOENCODING", "utf-8")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting Python player {id}"))?;
            children.push((id, child));
        }
        Ok(PythonPlayers { children })
    }

    /// Waits for each Python player, echoes what it printed, and sums its points.
    fn finish(mut self) -> anyhow::Result<BTreeMap<String, i64>> {
        let mut totals = BTreeMap::new();
        for (id, child) in std::mem::take(&mut self.children) {
            let deadline = std::time::Instant::now() + PATIENCE;
            let mut child = child;
            while child.try_wait()?.is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("Python player {id} did not finish within {PATIENCE:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{text}");
            if !out.status.success() {
                bail!("Python player {id} failed ({})", out.status);
            }
            let scored: i64 = text
                .lines()
                .filter_map(|l| {
                    l.split(" scored ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<i64>()
                        .ok()
                })
                .sum();
            totals.insert(name(id), scored);
        }
        Ok(totals)
    }
}

impl Drop for PythonPlayers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `scoreboard` scenario.
pub(crate) fn scoreboard(style: Style, python: bool, pace: Pace) -> anyhow::Result<()> {
    println!("🏟️ A manager process holds `scores` (a dict), `players` (a list) and a lock");
    match style {
        Style::Incr => println!("⚛️ Each score is one server-side incr: no lock needed"),
        Style::Lock => println!("🔒 Each score is lock, get, set: the tutorial's way"),
    }
    let m = Manager::start_with(ServeOptions::new().authkey(AUTHKEY))
        .context("starting the manager")?;
    let addr = m.address().to_string();
    let args = |id| Args {
        addr: addr.clone(),
        id,
        style,
        pace,
    };
    let mut monitor = vec![role("scoreboard-monitor").arg(&args(0))?.spawn()?];
    m.event("monitor-ready")?.with_timeout(PATIENCE).wait()?;
    // The objects exist before any Python player asks for them by name.
    let _ = (m.dict::<String, i64>("scores")?, m.lock("lock")?);
    // Every player registers, then the Rust ones start together (Python's play at once).
    let mut joined = m.list::<String>("players")?.watch()?;
    let python_ids: &[u32] = if python { &[3, 4] } else { &[] };
    let rust_ids: Vec<u32> = (1..=PLAYERS)
        .filter(|id| !python_ids.contains(id))
        .collect();
    let mut players = rust_ids
        .iter()
        .map(|&id| Ok(role("scoreboard-player").arg(&args(id))?.spawn()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let socket = addr.strip_prefix("unix://").unwrap_or(&addr).to_string();
    let pythons = if python {
        println!("🐍 Players 3 and 4 are Python processes: the tutorial's game_player, unchanged");
        Some(PythonPlayers::start(python_ids, &socket)?)
    } else {
        None
    };
    let mut registered = joined.seq();
    while registered < u64::from(PLAYERS) {
        joined
            .recv_timeout(PATIENCE)
            .context("waiting for the players")?;
        registered = joined.seq();
    }
    drop(joined);
    println!("👥 {PLAYERS} players registered; play!");
    m.event("start")?.set()?;
    join_all(&mut players)?;
    let python_totals = match pythons {
        Some(p) => p.finish()?,
        None => BTreeMap::new(),
    };
    m.event("game-over")?.set()?;
    join_all(&mut monitor)?;

    let scores = m.dict::<String, i64>("scores")?;
    let board: BTreeMap<String, i64> = scores.items()?.into_iter().collect();
    println!();
    println!("🏆 Final Game Results:");
    for (rank, (player, score)) in ranking(&board).into_iter().enumerate() {
        let medal = ["🥇", "🥈", "🥉"].get(rank).copied().unwrap_or("🏅");
        println!("{medal} {}. {player}: {score} points", rank + 1);
    }
    let mut registered = m.list::<String>("players")?.snapshot()?;
    registered.sort();
    let mut expected: BTreeMap<String, i64> = rust_ids
        .iter()
        .map(|&id| (name(id), (0..ROUNDS).map(|r| points(id, r)).sum()))
        .collect();
    expected.extend(python_totals);
    if registered != expected.keys().cloned().collect::<Vec<_>>() {
        bail!("players registered: {registered:?}");
    }
    if board != expected {
        bail!("points lost or doubled: expected {expected:?}, got {board:?}");
    }
    let total: i64 = expected.values().sum();
    println!(
        "✅ Every point counted once: {total} points in all, {PLAYERS} players × {ROUNDS} rounds"
    );
    Ok(())
}
