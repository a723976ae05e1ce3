//! The restaurant's three stations as three programs, for three terminals or three hosts:
//! `restaurant take-orders`, `restaurant serve-kitchen` and `restaurant serve-tables`, which
//! meet on a Redis broker through two queues named after `--name`.
//!
//! The queue delivers at least once: a kitchen killed while it holds an order has the
//! order claimed by another kitchen (once it has been idle for [`CLAIM_IDLE`]) and cooked
//! again, perhaps a second time. The tables de-duplicate on the order id, count what they
//! dropped, and end once every order is served: each order says how many the day has.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Subcommand;
use ipckit_core::{Error, RecvTimeoutError};
use ipckit_redis::{AckMode, RedisOptions, RedisQueue};

use super::{MENU, Order, cook};
use crate::support::{PATIENCE, Pace};

/// How long an order may stay with a kitchen without being acknowledged before another
/// kitchen takes it for dead and claims the order: longer than the longest cooking (2 s).
const CLAIM_IDLE: Duration = Duration::from_secs(3);

/// The restaurant's stations, each a program of its own.
#[derive(Debug, Subcommand)]
pub(crate) enum Station {
    /// The kitchen: cooks the orders of `<name>:orders` and sends them on to
    /// `<name>:ready`, until the order taker went home and every order is cooked. Run
    /// several, or start another after one is killed: an order a dead kitchen held is
    /// claimed by a live one after 3 s and cooked again.
    ServeKitchen {
        /// The broker: `redis://[:password@]host[:port][/db]`.
        #[arg(long)]
        redis_url: String,
        /// The restaurant: its queues are `<name>:orders` and `<name>:ready`.
        #[arg(long, default_value = "restaurant")]
        name: String,
    },
    /// The order taker: puts the day's orders on `<name>:orders` (the tutorial's menu, round
    /// and round), each saying how many the day has, then goes home.
    TakeOrders {
        /// The broker: `redis://[:password@]host[:port][/db]`.
        #[arg(long)]
        redis_url: String,
        /// The restaurant: its queues are `<name>:orders` and `<name>:ready`.
        #[arg(long, default_value = "restaurant")]
        name: String,
        /// How many orders the day has.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
        orders: u32,
    },
    /// The server: serves the plates of `<name>:ready` to their tables, each order once (a
    /// plate cooked twice, after a kitchen died, is dropped and counted), and ends when
    /// every order of the day is served — the count comes with the orders, from
    /// take-orders. Then it closes the restaurant (kitchens go home) and removes its
    /// queues from the broker. Gives up after 60 s without a plate.
    ServeTables {
        /// The broker: `redis://[:password@]host[:port][/db]`.
        #[arg(long)]
        redis_url: String,
        /// The restaurant: its queues are `<name>:orders` and `<name>:ready`.
        #[arg(long, default_value = "restaurant")]
        name: String,
    },
}

/// Runs one station.
pub(crate) fn station(station: Station, pace: Pace) -> anyhow::Result<()> {
    match station {
        Station::ServeKitchen { redis_url, name } => serve_kitchen(&redis_url, &name, pace),
        Station::TakeOrders {
            redis_url,
            name,
            orders,
        } => take_orders(&redis_url, &name, orders, pace),
        Station::ServeTables { redis_url, name } => serve_tables(&redis_url, &name, pace),
    }
}

/// The restaurant's two queues on the broker: the orders and the plates ready.
fn queues(url: &str, name: &str) -> anyhow::Result<(RedisQueue<Order>, RedisQueue<Order>)> {
    let opts = RedisOptions::new(64)
        .max_message(1 << 10)
        .claim_idle(CLAIM_IDLE);
    Ok((
        // A kitchen acknowledges an order once its plate is sent on, not when it asks for
        // the next: a kitchen slow to come back is not taken for dead.
        RedisQueue::create_at(
            url,
            &format!("{name}:orders"),
            opts.clone().ack(AckMode::Manual),
        )?,
        RedisQueue::create_at(url, &format!("{name}:ready"), opts)?,
    ))
}

fn take_orders(url: &str, name: &str, count: u32, pace: Pace) -> anyhow::Result<()> {
    let (orders, _) = queues(url, name)?;
    println!(
        "📝 Order taker: {count} orders today, onto `{}` at {}",
        orders.name(),
        orders.url()
    );
    let mut kitchen = orders.sender()?;
    for id in 1..=count {
        let (_, item, table, _) = MENU[(id as usize - 1) % MENU.len()];
        println!("📝 Order taker: New order #{id} - {item} for table {table}");
        kitchen.send(&Order {
            id,
            item: item.to_string(),
            table,
            ready: false,
            of: count,
        })?;
        pace.pause(0.8);
    }
    println!("📝 Order taker: no more orders today, going home");
    Ok(())
}

fn serve_kitchen(url: &str, name: &str, pace: Pace) -> anyhow::Result<()> {
    let (orders, ready) = queues(url, name)?;
    println!(
        "👨‍🍳 Kitchen (pid {}): open, cooking the orders of `{}` at {}",
        std::process::id(),
        orders.name(),
        orders.url()
    );
    // Declared first, dropped last: the tables see this kitchen go only after it
    // acknowledged its last order (dropping the receiver does).
    let mut tables = ready.sender()?;
    let mut incoming = orders.receiver()?;
    let mut cooked = 0;
    loop {
        let order = match incoming.recv() {
            Ok(order) => order,
            Err(Error::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        if let Some(d) = incoming.get_mut().last_delivery()
            && d.count > 1
        {
            println!(
                "👨‍🍳 Kitchen: order #{} claimed from a kitchen that held it too long \
                 (delivery {}): cooking it, perhaps again",
                order.id, d.count
            );
        }
        tables.send(&cook(order, pace))?;
        // Killed before this, the order comes back to a kitchen, and the tables drop
        // whichever plate comes second.
        incoming.get_mut().ack()?;
        cooked += 1;
    }
    println!(
        "👨‍🍳 Kitchen: the order taker went home and every order is cooked ({cooked} here); closing"
    );
    Ok(())
}

fn serve_tables(url: &str, name: &str, pace: Pace) -> anyhow::Result<()> {
    let (orders, ready) = queues(url, name)?;
    println!(
        "🍽️ Server: waiting for plates on `{}` at {}",
        ready.name(),
        ready.url()
    );
    let mut plates = ready.receiver()?;
    // Order id → times it came.
    let mut served: BTreeMap<u32, u32> = BTreeMap::new();
    let mut expected = None;
    let mut last_plate = Instant::now();
    let mut said_closed = false;
    while expected.is_none_or(|n| served.len() < n as usize) {
        let order = match plates.recv_timeout(Duration::from_secs(1)) {
            Ok(order) => order,
            Err(e @ (RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout)) => {
                if last_plate.elapsed() > PATIENCE {
                    bail!(
                        "no plate for {PATIENCE:?}: {} of {} orders served",
                        served.len(),
                        expected.map_or("?".into(), |n: u32| n.to_string())
                    );
                }
                if matches!(e, RecvTimeoutError::Disconnected) {
                    // Every kitchen that opened is gone (one was killed, say). The queue is
                    // not closed: another kitchen may open, so wait for it.
                    if !said_closed {
                        println!("🍽️ Server: no kitchen open at the moment; waiting for one");
                        said_closed = true;
                    }
                    // The end answers at once: do not spin on it.
                    std::thread::sleep(Duration::from_millis(200));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        last_plate = Instant::now();
        said_closed = false;
        expected = Some(order.of);
        if !order.ready {
            bail!("order #{} came from the kitchen not ready", order.id);
        }
        serve(&mut served, &order, pace);
    }
    let dropped_before: u32 = served.values().map(|n| n - 1).sum();
    println!(
        "🍽️ Server: all {} orders served; closing the restaurant",
        served.len()
    );
    // Kitchens still waiting go home; one cooking an order a dead kitchen left cooks it,
    // and its plate is dropped here.
    orders.close()?;
    loop {
        match plates.recv_timeout(PATIENCE) {
            Ok(order) => serve(&mut served, &order, pace),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                bail!("a kitchen is still open {PATIENCE:?} after the restaurant closed")
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(plates);
    orders.destroy()?;
    ready.destroy()?;
    let dropped: u32 = served.values().map(|n| n - 1).sum();
    let twice: Vec<u32> = served
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let all: Vec<u32> = served.keys().copied().collect();
    let want: Vec<u32> = (1..=expected.unwrap_or(0)).collect();
    crate::support::expect_same("orders served", &all, &want)?;
    println!(
        "🧾 Final tally: {} orders, each served exactly once; {dropped} duplicate plate(s) \
         dropped by order id{} ({} after closing)",
        all.len(),
        if twice.is_empty() {
            String::new()
        } else {
            format!(", of order(s) {twice:?}")
        },
        dropped - dropped_before
    );
    println!("🧹 Server: the restaurant's queues are removed from the broker");
    Ok(())
}

/// Serves `order` unless its id was served already; counts it either way.
fn serve(served: &mut BTreeMap<u32, u32>, order: &Order, pace: Pace) {
    let times = served.entry(order.id).or_insert(0);
    *times += 1;
    if *times > 1 {
        println!(
            "🍽️ Server: order #{} again (cooked twice): already served, dropped",
            order.id
        );
        return;
    }
    println!(
        "🍽️ Server: Delivering order #{} to table {} ({} of {})",
        order.id,
        order.table,
        served.len(),
        order.of
    );
    pace.pause(0.5);
    println!("😊 Table {} received their {}", order.table, order.item);
}
