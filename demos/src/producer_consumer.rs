//! The `producer-consumer` scenario: three producer processes and one consumer process
//! around a small bounded queue, as the Python tutorial's producer-consumer example, but finite and
//! checked: each producer makes 5 items and goes home; the consumer takes items until every
//! producer is gone and the queue is empty (no sentinel), then checks it got every item
//! exactly once, each producer's in the order made.

use ipckit_queues::{
    Ctx, Queue, QueueReceiver, QueueSender, Receiver, RoleResult, Sender, TrySendError,
};
use serde::{Deserialize, Serialize};

use crate::support::{Pace, expect_same, join_all, role};

const PRODUCERS: u32 = 3;
const ITEMS: u32 = 5;
/// Small, so that producers find it full and wait for the consumer.
const CAPACITY: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Item {
    producer: u32,
    n: u32,
}

#[derive(Serialize, Deserialize)]
struct Args {
    id: u32,
    pace: Pace,
}

/// The `producer-consumer` scenario.
pub(crate) fn producer_consumer(pace: Pace) -> anyhow::Result<()> {
    println!(
        "🏭 {PRODUCERS} producer processes, 1 consumer process, and a queue of {CAPACITY} \
         items between them"
    );
    let queue: Queue<Item> = Queue::create(CAPACITY)?;
    // The consumer first: it waits, as there is no producer yet.
    let mut children = vec![
        role("pc-consumer")
            .arg(&pace)?
            .handle("items", queue.receiver()?)
            .spawn()?,
    ];
    // Each producer holds a sender: the consumer knows more may come while any of them
    // lives. This one, held while they start, keeps the consumer from deciding that there
    // is no more after the first producers went home but before the last one started.
    let starting = queue.sender()?;
    for id in 1..=PRODUCERS {
        let child = role("pc-producer")
            .arg(&Args { id, pace })?
            .handle("items", queue.sender()?)
            .spawn()?;
        children.push(child);
    }
    drop(starting);
    // Producers first: each joined as it goes home; the consumer last.
    children.rotate_left(1);
    join_all(&mut children)?;
    println!(
        "🎉 All {} items made, consumed exactly once each, no sentinel needed",
        PRODUCERS * ITEMS
    );
    Ok(())
}

pub(crate) fn producer(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let mut items: Sender<Item, QueueSender> = ctx.handle("items")?;
    for n in 1..=ITEMS {
        let item = Item { producer: id, n };
        println!("🏭 Producer {id}: made item {id}-{n}");
        match items.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                println!("⏳ Producer {id}: the queue is full, waiting for room for item {id}-{n}");
                items.send(&item)?;
            }
            Err(e) => return Err(e.into()),
        }
        pace.pause(0.3);
    }
    println!("🏭 Producer {id}: made all {ITEMS} items, going home");
    // Dropping the sender is how the consumer learns this producer is done.
    Ok(())
}

pub(crate) fn consumer(ctx: &mut Ctx) -> RoleResult {
    let pace: Pace = ctx.arg()?;
    let mut items: Receiver<Item, QueueReceiver> = ctx.handle("items")?;
    println!("🛒 Consumer: waiting for items");
    let mut got = Vec::new();
    // Until every producer went home and the queue is empty.
    for item in items.iter() {
        let item = item?;
        println!("🛒 Consumer: consumed item {}-{}", item.producer, item.n);
        got.push(item);
        // Slower than the producers together: the queue fills up.
        pace.pause(0.4);
    }
    println!("🛒 Consumer: every producer went home and the queue is empty");
    // Each producer's items in the order it made them...
    for id in 1..=PRODUCERS {
        let mine: Vec<u32> = got
            .iter()
            .filter(|i| i.producer == id)
            .map(|i| i.n)
            .collect();
        expect_same(
            &format!("items of producer {id}"),
            &mine,
            &(1..=ITEMS).collect::<Vec<_>>(),
        )?;
    }
    // ... and nothing else, nothing twice.
    let mut all = got.clone();
    all.sort_unstable();
    let made: Vec<Item> = (1..=PRODUCERS)
        .flat_map(|producer| (1..=ITEMS).map(move |n| Item { producer, n }))
        .collect();
    expect_same("items consumed", &all, &made)?;
    println!(
        "✅ Consumer: all {} items, each exactly once, each producer's in order",
        got.len()
    );
    Ok(())
}
