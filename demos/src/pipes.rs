//! The pipe scenarios: `pipe` (a duplex `multiprocessing.Pipe()` between a sender and a
//! receiver) and `parent-child` (an `os.pipe()` from a parent to its child).

use ipckit_core::{Ctx, RoleResult};
use ipckit_pipes::{Connection, Reader, RecvBytes, SendBytes};

use crate::support::{PATIENCE, Pace, expect_same, join_all, role};

const MESSAGES: [&str; 3] = ["Hello!", "How are you?", "Pizza time! 🍕"];
const STOP: &str = "STOP";

/// The `pipe` scenario.
pub(crate) fn pipe(pace: Pace) -> anyhow::Result<()> {
    println!("📞 Two processes and a pipe between them");
    let (sender_end, receiver_end) = ipckit_pipes::duplex()?;
    let mut children = vec![
        role("pipe-sender")
            .arg(&pace)?
            .handle("conn", sender_end)
            .spawn()?,
        role("pipe-receiver").handle("conn", receiver_end).spawn()?,
    ];
    join_all(&mut children)?;
    println!(
        "Communication complete! 🎉 (the receiver got all {} messages, in order)",
        MESSAGES.len()
    );
    Ok(())
}

pub(crate) fn sender(ctx: &mut Ctx) -> RoleResult {
    let pace: Pace = ctx.arg()?;
    let mut conn = ctx.handle::<Connection>("conn")?.into_sender::<String>();
    for msg in MESSAGES {
        println!("Sender: Sending '{msg}'");
        conn.send(&msg.to_string())?;
        pace.pause(1.0);
    }
    conn.send(&STOP.to_string())?;
    Ok(())
}

pub(crate) fn receiver(ctx: &mut Ctx) -> RoleResult {
    let mut conn = ctx.handle::<Connection>("conn")?.into_receiver::<String>();
    let mut got = Vec::new();
    for msg in conn.iter_timeout(PATIENCE) {
        let msg = msg?;
        println!("Receiver: Got '{msg}'");
        if msg == STOP {
            break;
        }
        got.push(msg);
    }
    expect_same("receiver", &got, &MESSAGES.map(String::from))?;
    Ok(())
}

const FROM_PARENT: [&str; 2] = ["Hello from the parent!", "Pipes carry bytes one way only."];

/// The `parent-child` scenario.
pub(crate) fn parent_child(pace: Pace) -> anyhow::Result<()> {
    let (r, w) = ipckit_pipes::pipe()?;
    let mut child = role("parent-child-child").handle("pipe", r).spawn()?;
    println!("Parent: started child {}, writing to it", child.pid());
    let mut w = w.into_sender::<String>();
    for line in FROM_PARENT {
        println!("Parent: Sending '{line}'");
        w.send(&line.to_string())?;
        pace.pause(0.5);
    }
    // Closing the write end is how the child learns there is no more.
    drop(w);
    join_all(std::slice::from_mut(&mut child))?;
    println!("Parent: child read everything and exited 🎉");
    Ok(())
}

pub(crate) fn child(ctx: &mut Ctx) -> RoleResult {
    let mut r = ctx.handle::<Reader>("pipe")?.into_receiver::<String>();
    let mut got = Vec::new();
    // The iteration ends when the parent closes its end (or dies).
    for msg in r.iter_timeout(PATIENCE) {
        let msg = msg?;
        println!("Child received: {msg}");
        got.push(msg);
    }
    println!("Child: the parent closed the pipe");
    expect_same("child", &got, &FROM_PARENT.map(String::from))?;
    Ok(())
}
