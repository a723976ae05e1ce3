//! The `fifo` scenario: a writer and a reader process that share nothing but the path of a
//! named pipe, as the Python tutorial's `os.mkfifo` example. Lines, so a shell could join in.

use std::path::PathBuf;

use ipckit_core::{Ctx, RoleResult};
use ipckit_pipes::{Fifo, Framing, RecvBytes, SendBytes};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, Pace, expect_same, join_all, role};

const MESSAGES: [&str; 3] = [
    "🌟 First message through named pipe!",
    "📊 Data update: Temperature = 22°C",
    "🎯 Task completed successfully!",
];
const STOP: &str = "STOP";

#[derive(Serialize, Deserialize)]
struct Args {
    path: PathBuf,
    pace: Pace,
}

/// The `fifo` scenario.
pub(crate) fn fifo(pace: Pace) -> anyhow::Result<()> {
    let fifo = Fifo::create()?;
    println!("🔧 Created named pipe {}", fifo.path().display());
    let args = Args {
        path: fifo.path().to_owned(),
        pace,
    };
    // Start the reader first: it waits for a writer, as the OS makes it.
    let reader = role("fifo-reader").arg(&args)?.spawn()?;
    pace.pause(0.5);
    let writer = role("fifo-writer").arg(&args)?.spawn()?;
    join_all(&mut [writer, reader])?;
    drop(fifo);
    println!(
        "🧹 Removed {}; every message arrived, in order 🎉",
        args.path.display()
    );
    Ok(())
}

pub(crate) fn writer(ctx: &mut Ctx) -> RoleResult {
    let Args { path, pace } = ctx.arg()?;
    println!("Writer: Opening pipe '{}' for writing...", path.display());
    let mut pipe = ipckit_pipes::open_write_timeout(&path, PATIENCE)?.framing(Framing::Lines);
    for msg in MESSAGES.into_iter().chain([STOP]) {
        println!("Writer: Sending '{msg}'");
        pipe.send_bytes(msg.as_bytes())?;
        pace.pause(1.0);
    }
    Ok(())
}

pub(crate) fn reader(ctx: &mut Ctx) -> RoleResult {
    let Args { path, .. } = ctx.arg()?;
    println!("Reader: Opening pipe '{}' for reading...", path.display());
    let mut pipe = ipckit_pipes::open_read_timeout(&path, PATIENCE)?.framing(Framing::Lines);
    let mut got = Vec::new();
    loop {
        let msg = String::from_utf8(pipe.recv_bytes_timeout(PATIENCE)?)?;
        println!("Reader: Received '{msg}'");
        if msg == STOP {
            break;
        }
        got.push(msg);
    }
    expect_same("reader", &got, &MESSAGES.map(String::from))?;
    Ok(())
}
