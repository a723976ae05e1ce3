//! The `scoreboard` scenario: the Python tutorial's `multiprocessing.Manager()` example.
//! Four player processes score points over five rounds in a shared `scores` dict and
//! register in a shared `players` list; a monitor process prints the board from the
//! manager's watch events (no polling); the parent prints the final ranking with medals
//! and checks that every point was counted once.
//!
//! By default each score is one server-side `incr`; `--style lock` plays it the
//! tutorial's way: under the manager's lock, read the score, then write it back plus the
//! points.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use ipckit_core::{Ctx, RoleResult};
use ipckit_manager::{Change, Event, Manager};
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
    Ok(Manager::connect(&addr.parse()?, None)?)
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

/// The `scoreboard` scenario.
pub(crate) fn scoreboard(style: Style, pace: Pace) -> anyhow::Result<()> {
    println!("🏟️ A manager process holds `scores` (a dict), `players` (a list) and a lock");
    match style {
        Style::Incr => println!("⚛️ Each score is one server-side incr: no lock needed"),
        Style::Lock => println!("🔒 Each score is lock, get, set: the tutorial's way"),
    }
    let m = Manager::start().context("starting the manager")?;
    let addr = m.address().to_string();
    let args = |id| Args {
        addr: addr.clone(),
        id,
        style,
        pace,
    };
    let mut monitor = vec![role("scoreboard-monitor").arg(&args(0))?.spawn()?];
    m.event("monitor-ready")?.with_timeout(PATIENCE).wait()?;
    // Every player registers, then they all start together.
    let mut joined = m.list::<String>("players")?.watch()?;
    let mut players = (1..=PLAYERS)
        .map(|id| Ok(role("scoreboard-player").arg(&args(id))?.spawn()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    let expected: BTreeMap<String, i64> = (1..=PLAYERS)
        .map(|id| (name(id), (0..ROUNDS).map(|r| points(id, r)).sum()))
        .collect();
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
