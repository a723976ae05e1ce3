//! `demo`: the classic inter-process communication scenarios, played by real processes.
//!
//! Each subcommand narrates its scenario, checks its outcome and exits non-zero if the check
//! fails. `--fast` drops the narration's pauses; `-v` shows ipckit's own events.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipckit_core::Role;
use ipckit_sockets::Address;

mod chat;
mod counter;
mod echo;
mod fifo;
mod pipes;
mod producer_consumer;
mod restaurant;
mod rpc;
mod scoreboard;
mod sensor;
mod support;
mod sync;
mod workers;

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
    /// Three worker processes add 5 each to one counter in shared memory; it must end at 15.
    Counter {
        /// Increment a lock-free atomic (`Shared<AtomicU64>`) instead of a locked `Value`.
        #[arg(long, conflicts_with = "unsafe")]
        atomic: bool,
        /// Increment without the lock, to watch updates get lost (the run still succeeds).
        #[arg(long = "unsafe", id = "unsafe")]
        unlocked: bool,
    },
    /// The synchronisation primitives across processes: a lock, a re-entrant lock (and its
    /// holder killed), a semaphore letting 2 of 5 in, an event, a barrier, a condition.
    Sync,
    /// A sensor process publishes 20 temperatures into a ring in shared memory; a monitor
    /// process prints them with a moving average, until the sensor closes the ring.
    Sensor,
    /// An order taker, a kitchen and a server process: four orders flow from one to the
    /// next, and each is served exactly once. `restaurant take-orders`, `serve-kitchen`
    /// and `serve-tables` are the three stations as three programs, meeting on a Redis
    /// broker (three terminals, or three hosts).
    #[command(args_conflicts_with_subcommands = true)]
    Restaurant {
        #[command(subcommand)]
        station: Option<restaurant::Station>,
        /// What carries the orders between the stations.
        #[arg(long, value_enum, default_value_t)]
        mechanism: restaurant::Mechanism,
        /// With `--mechanism redis`: the broker, `redis://[:password@]host[:port][/db]`
        /// (without it, the demo starts a private redis-server and stops it after).
        #[arg(long)]
        redis_url: Option<String>,
        /// With `--mechanism redis`: the kitchen is SIGKILLed after sending order #2 to the
        /// server and before acknowledging it; a new kitchen claims the order, cooks it
        /// again, and the server serves it once (it de-duplicates on the order id). With
        /// `--mechanism manager`: the kitchen is SIGKILLed while cooking order #2, which
        /// it took from the queue (gone from it) and noted in a dict of the manager; a new
        /// kitchen takes the order over from the dict and the server serves it once (a
        /// kitchen killed between taking an order and noting it would still lose it: the
        /// manager has no call that takes from a queue and writes a dict at once).
        #[arg(long)]
        kill_kitchen: bool,
    },
    /// Three producer processes make 5 items each into a small bounded queue; one consumer
    /// process takes them all, until every producer is gone.
    ProducerConsumer,
    /// A pool of three worker processes squares 10 numbers; a worker that dies (SIGKILL
    /// from another terminal, or `--kill-one`) is replaced and its task runs again.
    Workers {
        /// SIGKILL the worker running task 5, in the middle of it, and watch the pool
        /// re-run it.
        #[arg(long)]
        kill_one: bool,
    },
    /// An echo server and a client process over a socket: each message comes back whole.
    /// `echo serve` and `echo connect` are each program on its own.
    Echo {
        #[command(subcommand)]
        mode: Option<echo::Mode>,
        /// Where the server listens (default: a fresh socket file in the temporary
        /// directory); `tcp://127.0.0.1:0` picks a free port.
        #[arg(long)]
        addr: Option<Address>,
    },
    /// Python's Manager example: four player processes score five rounds each in a dict
    /// held by a manager process, a monitor process prints the board from watch events,
    /// and the final ranking is checked point for point.
    Scoreboard {
        /// How players add their points: one server-side incr, or the tutorial's lock,
        /// get and set.
        #[arg(long, value_enum, default_value_t)]
        style: scoreboard::Style,
        /// Players 3 and 4 are Python processes running the tutorial's own player code
        /// against the same manager (needs Python 3.12 or newer).
        #[arg(long)]
        python: bool,
    },
    /// A chat server and four client processes: they join, talk through the server's
    /// broadcasts, leave, and the server shuts down; each must hear every line meant for
    /// it. `chat serve` and `chat join` play it by hand; `--mechanism manager` plays it
    /// through a manager's registry dict and queues, as the Python tutorial does.
    Chat {
        #[command(subcommand)]
        mode: Option<chat::Mode>,
        /// What carries the scripted chat.
        #[arg(long, value_enum, default_value_t)]
        mechanism: chat::ChatMechanism,
        /// Where the server listens (default: a fresh socket file in the temporary
        /// directory); `tcp://127.0.0.1:0` picks a free port.
        #[arg(long)]
        addr: Option<Address>,
    },
    /// The tutorial's xmlrpc: a server process registers `add`, a client process calls
    /// `add(5, 3)` and prints `Result: 8`, then a burst of concurrent calls, a timeout and a
    /// remote error. `rpc serve` serves Python's `xmlrpc.client` over HTTP; `rpc call add 5
    /// 3` calls any XML-RPC server.
    Rpc {
        #[command(subcommand)]
        mode: Option<rpc::Mode>,
        /// Where the server listens (default: a fresh socket file in the temporary
        /// directory); `tcp://127.0.0.1:0` picks a free port.
        #[arg(long)]
        addr: Option<Address>,
    },
}

const ROLES: &[Role] = &[
    Role::new("pipe-sender", pipes::sender),
    Role::new("pipe-receiver", pipes::receiver),
    Role::new("parent-child-child", pipes::child),
    Role::new("fifo-writer", fifo::writer),
    Role::new("fifo-reader", fifo::reader),
    Role::new("counter-worker", counter::worker),
    Role::new("sync-lock", sync::lock_worker),
    Role::new("sync-rlock", sync::rlock_worker),
    Role::new("sync-rlock-die", sync::rlock_die),
    Role::new("sync-semaphore", sync::semaphore_worker),
    Role::new("sync-event", sync::event_worker),
    Role::new("sync-barrier", sync::barrier_worker),
    Role::new("sync-condition", sync::condition_worker),
    Role::new("sensor-writer", sensor::writer),
    Role::new("sensor-monitor", sensor::monitor),
    Role::new("restaurant-order-taker", restaurant::order_taker),
    Role::new("restaurant-kitchen", restaurant::kitchen),
    Role::new("restaurant-server", restaurant::server),
    Role::new("pc-producer", producer_consumer::producer),
    Role::new("pc-consumer", producer_consumer::consumer),
    Role::new("echo-server", echo::server),
    Role::new("echo-client", echo::client),
    Role::new("chat-server", chat::scripted_server),
    Role::new("scoreboard-player", scoreboard::player),
    Role::new("scoreboard-monitor", scoreboard::monitor),
    Role::new("chat-client", chat::scripted_client),
    Role::new("chat-manager-server", chat::manager_server),
    Role::new("chat-manager-client", chat::manager_client),
    Role::new("rpc-server", rpc::server),
    Role::new("rpc-client", rpc::client),
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
        Scenario::Counter { atomic, unlocked } => {
            let variant = if atomic {
                counter::Variant::Atomic
            } else if unlocked {
                counter::Variant::Unlocked
            } else {
                counter::Variant::Locked
            };
            counter::counter(variant, pace)
        }
        Scenario::Sync => sync::sync(pace),
        Scenario::Sensor => sensor::sensor(pace),
        Scenario::Restaurant {
            station: Some(station),
            ..
        } => restaurant::station(station, pace),
        Scenario::Restaurant {
            station: None,
            mechanism,
            redis_url,
            kill_kitchen,
        } => restaurant::restaurant(mechanism, redis_url, kill_kitchen, pace),
        Scenario::ProducerConsumer => producer_consumer::producer_consumer(pace),
        Scenario::Workers { kill_one } => workers::workers(cli.fast, kill_one),
        Scenario::Echo { mode, addr } => echo::echo(mode, addr, pace),
        Scenario::Chat {
            mode,
            addr,
            mechanism,
        } => chat::chat(mode, addr, mechanism, pace),
        Scenario::Rpc { mode, addr } => rpc::rpc(mode, addr, pace),
        Scenario::Scoreboard { style, python } => scoreboard::scoreboard(style, python, pace),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("❌ scenario failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
