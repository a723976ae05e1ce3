//! The example of the README's "A taste" section, compiled and run by the tests so it stays true.

use ipckit_core::{Command, Ctx, Role, RoleResult, enter};
use ipckit_pipes::{Connection, RecvBytes, SendBytes, duplex};

fn child(ctx: &mut Ctx) -> RoleResult {
    let mut conn = ctx.handle::<Connection>("conn")?.into_sender::<String>();
    conn.send(&"Pizza time! 🍕".to_string())?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    enter(&[Role::new("child", child)]); // a child process runs its role here
    let (mine, theirs) = duplex()?;
    let mut proc = Command::new("child").handle("conn", theirs).spawn()?;
    let mut rx = mine.into_receiver::<String>();
    println!("got {}", rx.recv()?);
    proc.join()?;
    Ok(())
}
