//! The `restaurant` scenario: an order taker, a kitchen and a server process, each order
//! passed from one station to the next, as the Python tutorial's `multiprocessing.Queue` example.
//!
//! Without its `None` sentinels: a station learns there is no more when the one before it
//! goes home (its sending end is gone). And written once, against ipckit's byte traits: the
//! stations only ever see a typed `Sender<Order, _>` / `Receiver<Order, _>`, whichever
//! mechanism `--mechanism` picks to carry the orders.

use std::{any::Any, time::Duration};

use clap::ValueEnum;
use ipckit_core::{Ctx, Handle, Handoff, RecvBytes, RoleResult, SendBytes};
use ipckit_pipes::{Connection, Reader, Writer};
use ipckit_queues::{
    MessageQueue, MqOptions, MqReceiver, MqSender, Queue, QueueOptions, QueueReceiver, QueueSender,
};
use ipckit_redis::{RedisOptions, RedisQueue, RedisReceiver, RedisSender, RedisServer};
use ipckit_sockets::{Address, Listener};
use serde::{Deserialize, Serialize};

use crate::support::{Pace, expect_same, join_all, role};

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
        }
    }

    /// A new link: its sending end and its receiving end, for two children, and what must
    /// stay alive in the parent meanwhile (a named object's owner, which removes its name).
    /// `redis_url` is the broker of `Mechanism::Redis`.
    fn link(self, redis_url: &str) -> anyhow::Result<(End, End, Option<Owner>)> {
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
                let queue: RedisQueue<Order> =
                    RedisQueue::create(redis_url, RedisOptions::new(8).max_message(1 << 10))?;
                (
                    End::new(queue.byte_sender()?),
                    End::new(queue.byte_receiver()?),
                    Some(Box::new(RedisLink(Some(queue)))),
                )
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
        })
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

#[derive(Serialize, Deserialize)]
struct Args {
    mechanism: Mechanism,
    pace: Pace,
    /// The kitchen SIGKILLs itself after sending this order to the server, before it
    /// acknowledges it (`--kill-kitchen`).
    crash_after: Option<u32>,
}

/// The `restaurant` scenario.
pub(crate) fn restaurant(
    mechanism: Mechanism,
    redis_url: Option<String>,
    kill_kitchen: bool,
    pace: Pace,
) -> anyhow::Result<()> {
    if kill_kitchen && mechanism != Mechanism::Redis {
        anyhow::bail!("--kill-kitchen needs --mechanism redis (a queue that redelivers)");
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
    if kill_kitchen {
        return kitchen_crash(&redis_url, pace);
    }
    // The owners stay alive until every station has finished.
    let (to_kitchen, kitchen_orders, _kitchen_link) = mechanism.link(&redis_url)?;
    let (to_server, server_orders, _server_link) = mechanism.link(&redis_url)?;
    let args = Args {
        mechanism,
        pace,
        crash_after: None,
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
    println!();
    println!(
        "🎉 Restaurant service complete! All customers happy! 😊 \
         (all {} orders served, each exactly once)",
        MENU.len()
    );
    Ok(())
}

/// `--kill-kitchen`: the kitchen dies holding order #2 (sent on, not acknowledged); a new
/// kitchen, whose ends the parent made up front (so the server never sees the kitchen
/// gone), claims it after a second and cooks it again; the server serves it once.
fn kitchen_crash(url: &str, pace: Pace) -> anyhow::Result<()> {
    let opts = RedisOptions::new(8)
        .max_message(1 << 10)
        .claim_idle(Duration::from_secs(1));
    let orders = RedisLink(Some(RedisQueue::<Order>::create(url, opts.clone())?));
    let ready = RedisLink(Some(RedisQueue::<Order>::create(url, opts)?));
    let (Some(orders_q), Some(ready_q)) = (&orders.0, &ready.0) else {
        anyhow::bail!("the queues were lost");
    };
    let args = |crash_after| Args {
        mechanism: Mechanism::Redis,
        pace,
        crash_after,
    };
    let replacement = (orders_q.byte_receiver()?, ready_q.byte_sender()?);
    let mut children = vec![
        role("restaurant-order-taker")
            .arg(&args(None))?
            .handle("orders", orders_q.byte_sender()?)
            .spawn()?,
        role("restaurant-server")
            .arg(&args(None))?
            .handle("ready", ready_q.byte_receiver()?)
            .spawn()?,
    ];
    let mut first = role("restaurant-kitchen")
        .arg(&args(Some(2)))?
        .handle("orders", orders_q.byte_receiver()?)
        .handle("ready", ready_q.byte_sender()?)
        .spawn()?;
    match first.join_timeout(crate::support::PATIENCE) {
        Err(ipckit_core::Error::RoleKilled { .. }) => {}
        other => anyhow::bail!("the first kitchen was to be killed; it ended with {other:?}"),
    }
    println!("🔁 Restaurant: the kitchen died; a new kitchen takes over its orders");
    children.push(
        role("restaurant-kitchen")
            .arg(&args(None))?
            .handle("orders", replacement.0)
            .handle("ready", replacement.1)
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
        })?;
        pace.pause(0.8);
    }
    println!("📝 Order taker: no more orders today, going home");
    // Dropping the sending end is what tells the kitchen: no `None` sentinel.
    Ok(())
}

pub(crate) fn kitchen(ctx: &mut Ctx) -> RoleResult {
    let Args {
        mechanism,
        pace,
        crash_after,
    } = ctx.arg()?;
    let mut orders = mechanism.receiver(ctx, "orders")?.into_receiver::<Order>();
    let mut server = mechanism.sender(ctx, "ready")?.into_sender::<Order>();
    // Until the order taker went home and every order is cooked: no `None` sentinel.
    for order in orders.iter() {
        let mut order = order?;
        println!(
            "👨‍🍳 Kitchen: Preparing order #{} - {}...",
            order.id, order.item
        );
        pace.pause(cooking_time(order.id));
        order.ready = true;
        println!("✅ Kitchen: Order #{} ready - {}", order.id, order.item);
        server.send(&order)?;
        if crash_after == Some(order.id) {
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
