//! `demo`: the classic inter-process communication scenarios, played by real processes.
//!
//! Each subcommand narrates its scenario, checks its outcome and exits non-zero if the check
//! fails. `--fast` drops the narration's pauses; `-v` shows ipckit's own events.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipckit_core::Role;

mod fifo;
mod pipes;
mod support;

/// Classic IPC scenarios with ipckit: real processes, checked outcomes.
#[derive(Debug, Parser)]
#[command(name = "demo", version)]
struct Cli {
    /// Play without pauses (for tests).
    #[arg(long, global = true)]
    fast: bool,
    /// Show ipckit's events (connect, disconnect, errors); twice for more.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A sender and a receiver process over a duplex pipe: "Hello!", "How are you?",
    /// "Pizza time!", then STOP.
    Pipe,
    /// A parent writes to a child over an anonymous one-way pipe.
    ParentChild,
    /// A writer and a reader process, unrelated but for a named pipe (FIFO) in /tmp.
    Fifo,
}

const ROLES: &[Role] = &[
    Role::new("pipe-sender", pipes::sender),
    Role::new("pipe-receiver", pipes::receiver),
    Role::new("parent-child-child", pipes::child),
    Role::new("fifo-writer", fifo::writer),
    Role::new("fifo-reader", fifo::reader),
];

fn main() -> ExitCode {
    support::init_tracing_from_env();
    ipckit_core::enter(ROLES);
    let cli = Cli::parse();
    support::init_tracing(cli.verbose);
    let pace = support::Pace::new(cli.fast);
    let result = match cli.scenario {
        Scenario::Pipe => pipes::pipe(pace),
        Scenario::ParentChild => pipes::parent_child(pace),
        Scenario::Fifo => fifo::fifo(pace),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("❌ scenario failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
