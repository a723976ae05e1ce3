//! The `restaurant` scenario: an order taker, a kitchen and a server process, each order
//! passed from one station to the next, as the Python tutorial's `multiprocessing.Queue` example.
//!
//! Without its `None` sentinels: a station learns there is no more when the one before it
//! goes home (its sending end is gone; over a manager's queues, which do not know their
//! senders, the sending end puts an end mark as it goes, see `over_manager`). And written once, against ipckit's byte traits: the
//! stations only ever see a typed `Sender<Order, _>` / `Receiver<Order, _>`, whichever
//! mechanism `--mechanism` picks to carry the orders.
//!
//! `restaurant serve-kitchen` / `take-orders` / `serve-tables` ([`hosts`]) are the three
//! stations as three programs, meeting on a Redis broker.

mod hosts;
mod over_manager;

use std::{any::Any, time::Duration};

use clap::ValueEnum;
use ipckit_core::{Ctx, Handle, Handoff, RecvBytes, RoleResult, SendBytes};
use ipckit_manager::Manager;
use ipckit_pipes::{Connection, Reader, Writer};
use ipckit_queues::{
    MessageQueue, MqOptions, MqReceiver, MqSender, Queue, QueueOptions, QueueReceiver, QueueSender,
};
use ipckit_redis::{RedisOptions, RedisQueue, RedisReceiver, RedisSender, RedisServer};
use ipckit_sockets::{Address, Listener};
use serde::{Deserialize, Serialize};

pub(crate) use self::hosts::{Station, station};
use self::over_manager::ManagerEnd;
use crate::support::{OwnManager, Pace, expect_same, join_all, role};

/// What carries the orders from one station to the next.
///
/// Adding a mechanism: a variant here, and an arm in [`Mechanism::link`],
/// [`Mechanism::sender`] and [`Mechanism::receiver`]. The stations do not change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum Mechanism {
    /// A queue in shared memory (ipckit-queues); the end comes when the last sender is gone.
    #[default]
    Queue,
    /// An anonymous one-way pipe; the end comes when its write end is closed.
    Pipe,
    /// A duplex pipe (a socket pair), used one way; the end comes when the peer closes.
    Duplex,
    /// A POSIX message queue (`mq_open`); the end comes when the last sender is gone.
    Mqueue,
    /// A Unix socket, connected through a listener on a socket file in /tmp; the end comes
    /// when the peer closes.
    Socket,
    /// A queue on a Redis broker (a stream and a consumer group, ipckit-redis): the one
    /// of `--redis-url`, or a private redis-server the demo starts; the end comes when the
    /// last sender is gone.
    Redis,
    /// Queues held by a manager process (ipckit-manager, Python's `manager.Queue()`),
    /// which the stations connect to; a manager queue does not know its senders, so a
    /// sending end puts an end mark on the queue when it is dropped.
    Manager,
}

/// One end of a link, on its way to a child: the handle the mechanism made, already turned
/// into what travels, so that every mechanism's ends have one type here.
struct End(Handoff);

impl End {
    fn new(h: impl Handle) -> Self {
        End(h.into_handoff())
    }
}

impl Handle for End {
    fn into_handoff(self) -> Handoff {
        self.0
    }

    fn from_handoff(h: Handoff) -> ipckit_core::Result<Self> {
        Ok(End(h))
    }
}

/// What a link's creator keeps alive until the stations are done (a named object's owner).
type Owner = Box<dyn Any>;

/// A station's sending end, whatever the mechanism.
type Out = Box<dyn SendBytes>;
/// A station's receiving end, whatever the mechanism.
type In = Box<dyn RecvBytes>;

impl Mechanism {
    fn describe(self) -> &'static str {
        match self {
            Mechanism::Queue => "queues in shared memory",
            Mechanism::Pipe => "one-way pipes",
            Mechanism::Duplex => "duplex pipes (socket pairs), used one way",
            Mechanism::Mqueue => "POSIX message queues",
            Mechanism::Socket => "Unix sockets, one listener and connection per link",
            Mechanism::Redis => "Redis streams, one consumer group per link",
            Mechanism::Manager => "queues held by a manager process, one per link",
        }
    }

    /// A new link: its sending end and its receiving end, for two children, and what must
    /// stay alive in the parent meanwhile (a named object's owner, which removes its name).
    /// `brokers` has the Redis broker and the manager of those mechanisms.
    fn link(self, brokers: &Brokers) -> anyhow::Result<(End, End, Option<Owner>)> {
        Ok(match self {
            Mechanism::Queue => {
                let queue: Queue<Order> = Queue::create(QueueOptions::new(8).max_message(1 << 10))?;
                (
                    End::new(queue.byte_sender()?),
                    End::new(queue.byte_receiver()?),
                    None,
                )
            }
            Mechanism::Pipe => {
                let (r, w) = ipckit_pipes::pipe()?;
                (End::new(w), End::new(r), None)
            }
            Mechanism::Duplex => {
                let (a, b) = ipckit_pipes::duplex()?;
                (End::new(a), End::new(b), None)
            }
            Mechanism::Mqueue => {
                let mq: MessageQueue<Order> =
                    MessageQueue::create(MqOptions::new(8).max_message(1 << 10))?;
                (
                    End::new(mq.byte_sender()?),
                    End::new(mq.byte_receiver()?),
                    Some(Box::new(mq)),
                )
            }
            Mechanism::Socket => {
                let (client, accepted) = socket_link()?;
                (End::new(client), End::new(accepted), None)
            }
            Mechanism::Redis => {
                let queue: RedisQueue<Order> = RedisQueue::create(
                    &brokers.redis_url,
                    RedisOptions::new(8).max_message(1 << 10),
                )?;
                (
                    End::new(queue.byte_sender()?),
                    End::new(queue.byte_receiver()?),
                    Some(Box::new(RedisLink(Some(queue)))),
                )
            }
            Mechanism::Manager => {
                let Some(manager) = &brokers.manager else {
                    anyhow::bail!("no manager was started");
                };
                let end = ManagerEnd::create(manager)?;
                (End::new(end.clone()), End::new(end), None)
            }
        })
    }

    /// In a child: the sending end the parent handed over as `key`.
    fn sender(self, ctx: &mut Ctx, key: &str) -> ipckit_core::Result<Out> {
        Ok(match self {
            Mechanism::Queue => Box::new(ctx.handle::<QueueSender>(key)?),
            Mechanism::Pipe => Box::new(ctx.handle::<Writer>(key)?),
            Mechanism::Duplex => Box::new(ctx.handle::<Connection>(key)?),
            Mechanism::Mqueue => Box::new(ctx.handle::<MqSender>(key)?),
            Mechanism::Socket => Box::new(ctx.handle::<Connection>(key)?),
            Mechanism::Redis => Box::new(ctx.handle::<RedisSender>(key)?),
            Mechanism::Manager => Box::new(ctx.handle::<ManagerEnd>(key)?.sender()?),
        })
    }

    /// In a child: the receiving end the parent handed over as `key`.
    fn receiver(self, ctx: &mut Ctx, key: &str) -> ipckit_core::Result<In> {
        Ok(match self {
            Mechanism::Queue => Box::new(ctx.handle::<QueueReceiver>(key)?),
            Mechanism::Pipe => Box::new(ctx.handle::<Reader>(key)?),
            Mechanism::Duplex => Box::new(ctx.handle::<Connection>(key)?),
            Mechanism::Mqueue => Box::new(ctx.handle::<MqReceiver>(key)?),
            Mechanism::Socket => Box::new(ctx.handle::<Connection>(key)?),
            Mechanism::Redis => Box::new(ctx.handle::<RedisReceiver>(key)?),
            Mechanism::Manager => Box::new(ctx.handle::<ManagerEnd>(key)?.receiver()?),
        })
    }
}

/// Where the links of the broker mechanisms live: the Redis broker's URL
/// (`Mechanism::Redis`) and the manager the demo started (`Mechanism::Manager`).
struct Brokers {
    redis_url: String,
    manager: Option<OwnManager>,
}

impl Brokers {
    /// Shuts the manager down, if there is one, checking it left nothing behind.
    fn shut_down(self) -> anyhow::Result<()> {
        match self.manager {
            Some(manager) => manager.shut_down(),
            None => Ok(()),
        }
    }
}

/// A Redis queue's keys, removed from the broker once the stations are done with them.
struct RedisLink(Option<RedisQueue<Order>>);

impl Drop for RedisLink {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take()
            && let Err(e) = queue.destroy()
        {
            eprintln!("could not remove the queue's keys from the broker: {e}");
        }
    }
}

/// Two connected Unix stream sockets, met the way a client meets a server: a listener on a
/// fresh socket file, a client that connects, the connection it accepts. The listener is
/// dropped once they have met, and its file with it; the two connections go to the stations as
/// inherited descriptors.
fn socket_link() -> anyhow::Result<(Connection, Connection)> {
    let listener = Listener::bind(&Address::Unix(ipckit_core::temp_path("sock")))?;
    let client = ipckit_sockets::connect(listener.address())?;
    let accepted = listener.accept_timeout(Duration::from_secs(10))?;
    Ok((client, accepted))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    table: u32,
    /// Set by the kitchen: the Python tutorial's `order['status'] = 'ready'`.
    ready: bool,
    /// How many orders the day has (the ids are 1 to this), so that the last station
    /// knows when it is done.
    of: u32,
}

/// The Python tutorial's four orders, with how long each takes to cook (seconds, without `--fast`).
const MENU: [(u32, &str, u32, f64); 4] = [
    (1, "Margherita Pizza 🍕", 5, 2.0),
    (2, "Caesar Salad 🥗", 3, 1.0),
    (3, "Pasta Carbonara 🍝", 7, 1.5),
    (4, "Tiramisu 🍰", 5, 0.5),
];

fn cooking_time(id: u32) -> f64 {
    MENU.iter().find(|m| m.0 == id).map_or(1.0, |m| m.3)
}

/// Where the kitchen SIGKILLs itself (`--kill-kitchen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Crash {
    /// After sending this order to the server, before acknowledging it (Redis).
    AfterSending(u32),
    /// While cooking this order, taken from the queue and not sent on (manager).
    WhileCooking(u32),
}

/// The dict in the manager where a kitchen notes the order in its hands, by kitchen, so
/// that a new kitchen can take over what a dead one held (`--mechanism manager
/// --kill-kitchen`). A manager queue hands an item out once and keeps no record of it, so
/// without the note the order dies with its kitchen. The note follows the `get`: a kitchen
/// killed between the two still loses its order (the manager has no call that takes from a
/// queue and writes a dict in one step); one killed after sending the order on and before
/// removing its note has it cooked twice, and the server, de-duplicating by order id,
/// serves it once.
const IN_HAND: &str = "restaurant:in-the-kitchen";

#[derive(Serialize, Deserialize)]
struct Args {
    mechanism: Mechanism,
    pace: Pace,
    /// Where the kitchen SIGKILLs itself (`--kill-kitchen`).
    crash: Option<Crash>,
    /// The manager's address, where a kitchen notes the order in its hands ([`IN_HAND`])
    /// and first cooks what a dead kitchen noted there.
    notes: Option<String>,
}

/// The `restaurant` scenario.
pub(crate) fn restaurant(
    mechanism: Mechanism,
    redis_url: Option<String>,
    kill_kitchen: bool,
    pace: Pace,
) -> anyhow::Result<()> {
    if kill_kitchen && !matches!(mechanism, Mechanism::Redis | Mechanism::Manager) {
        anyhow::bail!(
            "--kill-kitchen needs --mechanism redis (a queue that redelivers) or manager \
             (where the kitchen notes the order it holds)"
        );
    }
    println!(
        "🍕 Restaurant: an order taker, a kitchen and a server, three processes; \
         orders pass between them over {}",
        mechanism.describe()
    );
    // A private broker when none is given; stopped (its files removed) when dropped, after
    // the links below.
    let private = match (&redis_url, mechanism) {
        (None, Mechanism::Redis) => Some(RedisServer::start()?),
        _ => None,
    };
    let redis_url = redis_url
        .or_else(|| private.as_ref().map(RedisServer::url))
        .unwrap_or_default();
    // The manager process, shut down (its socket file removed) when dropped, after the
    // stations are done.
    let manager = match mechanism {
        Mechanism::Manager => {
            let manager = OwnManager::start()?;
            println!("🗄️ Restaurant: a manager process at {}", manager.address());
            Some(manager)
        }
        _ => None,
    };
    let brokers = Brokers { redis_url, manager };
    if kill_kitchen {
        kitchen_crash(mechanism, &brokers, pace)?;
        return brokers.shut_down();
    }
    // The owners stay alive until every station has finished.
    let (to_kitchen, kitchen_orders, _kitchen_link) = mechanism.link(&brokers)?;
    let (to_server, server_orders, _server_link) = mechanism.link(&brokers)?;
    let args = Args {
        mechanism,
        pace,
        crash: None,
        notes: None,
    };
    let mut children = vec![
        role("restaurant-order-taker")
            .arg(&args)?
            .handle("orders", to_kitchen)
            .spawn()?,
        role("restaurant-kitchen")
            .arg(&args)?
            .handle("orders", kitchen_orders)
            .handle("ready", to_server)
            .spawn()?,
        role("restaurant-server")
            .arg(&args)?
            .handle("ready", server_orders)
            .spawn()?,
    ];
    join_all(&mut children)?;
    brokers.shut_down()?;
    println!();
    println!(
        "🎉 Restaurant service complete! All customers happy! 😊 \
         (all {} orders served, each exactly once)",
        MENU.len()
    );
    Ok(())
}

/// The ends of `--kill-kitchen`'s two links: the usual four, and a spare pair for the
/// kitchen that replaces the killed one, made up front (so the server never sees the
/// kitchen gone), and what keeps the links alive.
struct CrashLinks {
    to_kitchen: End,
    kitchen_orders: End,
    to_server: End,
    server_orders: End,
    spare_orders: End,
    spare_to_server: End,
    _owners: Vec<Owner>,
}

impl CrashLinks {
    fn new(mechanism: Mechanism, brokers: &Brokers) -> anyhow::Result<CrashLinks> {
        match (mechanism, &brokers.manager) {
            (Mechanism::Manager, Some(manager)) => {
                let (orders, ready) = (ManagerEnd::create(manager)?, ManagerEnd::create(manager)?);
                Ok(CrashLinks {
                    to_kitchen: End::new(orders.clone()),
                    kitchen_orders: End::new(orders.clone()),
                    to_server: End::new(ready.clone()),
                    server_orders: End::new(ready.clone()),
                    spare_orders: End::new(orders),
                    spare_to_server: End::new(ready),
                    _owners: Vec::new(),
                })
            }
            (Mechanism::Redis, _) => {
                let opts = RedisOptions::new(8)
                    .max_message(1 << 10)
                    .claim_idle(Duration::from_secs(1));
                let orders = RedisQueue::<Order>::create(&brokers.redis_url, opts.clone())?;
                let ready = RedisQueue::<Order>::create(&brokers.redis_url, opts)?;
                Ok(CrashLinks {
                    to_kitchen: End::new(orders.byte_sender()?),
                    kitchen_orders: End::new(orders.byte_receiver()?),
                    to_server: End::new(ready.byte_sender()?),
                    server_orders: End::new(ready.byte_receiver()?),
                    spare_orders: End::new(orders.byte_receiver()?),
                    spare_to_server: End::new(ready.byte_sender()?),
                    _owners: vec![
                        Box::new(RedisLink(Some(orders))),
                        Box::new(RedisLink(Some(ready))),
                    ],
                })
            }
            _ => anyhow::bail!("--kill-kitchen needs --mechanism redis or manager"),
        }
    }
}

/// `--kill-kitchen`. Over Redis: the kitchen dies holding order #2 (sent on, not
/// acknowledged); a new kitchen claims it after a second and cooks it again; the server
/// serves it once. Over a manager: the kitchen dies cooking order #2, which it took from
/// the queue and noted in the manager's dict; a manager queue forgets an item once taken,
/// so the new kitchen takes the order over from the dict, then goes on with the queue.
fn kitchen_crash(mechanism: Mechanism, brokers: &Brokers, pace: Pace) -> anyhow::Result<()> {
    let links = CrashLinks::new(mechanism, brokers)?;
    let notes = brokers.manager.as_ref().map(|m| m.address().to_string());
    let args = |crash| Args {
        mechanism,
        pace,
        crash,
        notes: notes.clone(),
    };
    let crash = match mechanism {
        Mechanism::Manager => Crash::WhileCooking(2),
        _ => Crash::AfterSending(2),
    };
    let mut children = vec![
        role("restaurant-order-taker")
            .arg(&args(None))?
            .handle("orders", links.to_kitchen)
            .spawn()?,
        role("restaurant-server")
            .arg(&args(None))?
            .handle("ready", links.server_orders)
            .spawn()?,
    ];
    let mut first = role("restaurant-kitchen")
        .arg(&args(Some(crash)))?
        .handle("orders", links.kitchen_orders)
        .handle("ready", links.to_server)
        .spawn()?;
    match first.join_timeout(crate::support::PATIENCE) {
        Err(ipckit_core::Error::RoleKilled { .. }) => {}
        other => anyhow::bail!("the first kitchen was to be killed; it ended with {other:?}"),
    }
    match &brokers.manager {
        Some(manager) => {
            let held: Vec<u32> = manager
                .dict::<String, Order>(IN_HAND)?
                .values()?
                .iter()
                .map(|o| o.id)
                .collect();
            println!(
                "🔁 Restaurant: the kitchen died holding order(s) {held:?}; a manager queue \
                 forgets an item once it is taken, so a new kitchen takes over what the \
                 dead one noted in the manager's dict `{IN_HAND}`"
            );
        }
        None => println!("🔁 Restaurant: the kitchen died; a new kitchen takes over its orders"),
    }
    children.push(
        role("restaurant-kitchen")
            .arg(&args(None))?
            .handle("orders", links.spare_orders)
            .handle("ready", links.spare_to_server)
            .spawn()?,
    );
    join_all(&mut children)?;
    println!();
    println!(
        "🎉 Restaurant service complete! All customers happy! 😊 \
         (all {} orders served, each exactly once, through a kitchen crash)",
        MENU.len()
    );
    Ok(())
}

pub(crate) fn order_taker(ctx: &mut Ctx) -> RoleResult {
    let Args {
        mechanism, pace, ..
    } = ctx.arg()?;
    let mut kitchen = mechanism.sender(ctx, "orders")?.into_sender::<Order>();
    for (id, item, table, _) in MENU {
        println!("📝 Order taker: New order #{id} - {item} for table {table}");
        kitchen.send(&Order {
            id,
            item: item.to_string(),
            table,
            ready: false,
            of: MENU.len() as u32,
        })?;
        pace.pause(0.8);
    }
    println!("📝 Order taker: no more orders today, going home");
    // Dropping the sending end is what tells the kitchen: no `None` sentinel.
    Ok(())
}

/// Cooks `order`: the kitchen's narration and its pause.
fn cook(mut order: Order, pace: Pace) -> Order {
    announce(&order);
    pace.pause(cooking_time(order.id));
    order.ready = true;
    println!("✅ Kitchen: Order #{} ready - {}", order.id, order.item);
    order
}

fn announce(order: &Order) {
    println!(
        "👨‍🍳 Kitchen: Preparing order #{} - {}...",
        order.id, order.item
    );
}

pub(crate) fn kitchen(ctx: &mut Ctx) -> RoleResult {
    let Args {
        mechanism,
        pace,
        crash,
        notes,
    } = ctx.arg()?;
    let mut orders = mechanism.receiver(ctx, "orders")?.into_receiver::<Order>();
    let mut server = mechanism.sender(ctx, "ready")?.into_sender::<Order>();
    // With notes: the order in this kitchen's hands, in the manager, by kitchen.
    let in_hand = match &notes {
        Some(addr) => Some(Manager::connect(&addr.parse()?, None)?.dict::<String, Order>(IN_HAND)?),
        None => None,
    };
    let me = format!("kitchen {}", std::process::id());
    if let Some(in_hand) = &in_hand {
        // What kitchens that died held: this one is the only kitchen now.
        for (dead, order) in in_hand.items()? {
            println!(
                "👨‍🍳 Kitchen: taking over order #{} from {dead}, which died with it",
                order.id
            );
            server.send(&cook(order, pace))?;
            in_hand.remove(&dead)?;
        }
    }
    // Until the order taker went home and every order is cooked: no `None` sentinel.
    for order in orders.iter() {
        let order = order?;
        if let Some(in_hand) = &in_hand {
            in_hand.insert(&me, &order)?;
        }
        if crash == Some(Crash::WhileCooking(order.id)) {
            announce(&order);
            println!(
                "💥 Kitchen: killed while cooking order #{}, taken from the queue and not sent on",
                order.id
            );
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
        }
        let order = cook(order, pace);
        server.send(&order)?;
        if let Some(in_hand) = &in_hand {
            in_hand.remove(&me)?;
        }
        if crash == Some(Crash::AfterSending(order.id)) {
            println!(
                "💥 Kitchen: killed after sending order #{}, before acknowledging it",
                order.id
            );
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
        }
    }
    println!("👨‍🍳 Kitchen: the order taker went home and every order is cooked; closing");
    Ok(())
}

pub(crate) fn server(ctx: &mut Ctx) -> RoleResult {
    let Args {
        mechanism, pace, ..
    } = ctx.arg()?;
    let mut ready = mechanism.receiver(ctx, "ready")?.into_receiver::<Order>();
    let mut served = Vec::new();
    // Until the kitchen closed.
    for order in ready.iter() {
        let order = order?;
        if !order.ready {
            return Err(format!("order #{} came from the kitchen not ready", order.id).into());
        }
        // At-least-once queues may bring an order twice (a kitchen that died after sending
        // it, before acknowledging it): the order id says it was served already.
        if served.contains(&order.id) {
            println!(
                "🍽️ Server: order #{} again (cooked twice): already served, not served again",
                order.id
            );
            continue;
        }
        println!(
            "🍽️ Server: Delivering order #{} to table {}",
            order.id, order.table
        );
        pace.pause(0.5);
        println!("😊 Table {} received their {}", order.table, order.item);
        served.push(order.id);
    }
    println!(
        "🍽️ Server: the kitchen closed; {} orders served",
        served.len()
    );
    let taken: Vec<u32> = MENU.iter().map(|m| m.0).collect();
    expect_same("orders served", &served, &taken)?;
    Ok(())
}
