//! The `sensor` scenario: a sensor process publishes temperatures into a ring in shared
//! memory and a monitor process follows them, as the Python tutorial's `mmap` example, but without
//! its `-999.0` end marker or its "0.0 means not written yet" guess.

use ipckit_core::{Ctx, RoleResult};
use ipckit_shmem::{Ring, Shared};

use crate::support::{PATIENCE, Pace, expect_same, join_all, role};

/// The last 64 readings, in shared memory.
type Readings = Shared<Ring<f64, 64>>;

const READINGS: u32 = 20;
/// Readings in the moving average.
const WINDOW: usize = 5;

/// Reading `i` (from 0), the Python tutorial's formula rounded to two decimals; the monitor checks
/// what it saw against the same sequence.
fn reading(i: u32) -> f64 {
    let t = 20.0 + f64::from(i) * 0.5 + 0.1 * f64::from(i % 3);
    (t * 100.0).round() / 100.0
}

/// The `sensor` scenario.
pub(crate) fn sensor(pace: Pace) -> anyhow::Result<()> {
    println!(
        "📡 A sensor process publishes {READINGS} temperatures into a ring in shared memory; \
         a monitor process follows them"
    );
    let ring: Readings = Ring::create()?;
    // The monitor first: it may well start waiting before the first reading is there.
    let monitor = role("sensor-monitor")
        .handle("ring", ring.try_clone()?)
        .spawn()?;
    let writer = role("sensor-writer")
        .arg(&pace)?
        .handle("ring", ring.try_clone()?)
        .spawn()?;
    join_all(&mut [writer, monitor])?;
    println!("🎉 The monitor saw all {READINGS} readings, in order");
    Ok(())
}

pub(crate) fn writer(ctx: &mut Ctx) -> RoleResult {
    let pace: Pace = ctx.arg()?;
    let ring = ctx.handle::<Readings>("ring")?;
    for i in 0..READINGS {
        let t = reading(i);
        println!("🌡️ Sensor: reading {} = {t:.2}°C", i + 1);
        ring.push(&t);
        pace.pause(0.15);
    }
    println!("🌡️ Sensor: done, closing the ring");
    ring.close();
    Ok(())
}

pub(crate) fn monitor(ctx: &mut Ctx) -> RoleResult {
    let ring = ctx.handle::<Readings>("ring")?;
    let mut reader = ring.reader();
    println!("📊 Monitor: waiting for readings");
    let mut got: Vec<f64> = Vec::new();
    loop {
        match reader.recv_timeout(PATIENCE) {
            Ok(t) => {
                got.push(t);
                let last = &got[got.len().saturating_sub(WINDOW)..];
                let average = last.iter().sum::<f64>() / last.len() as f64;
                println!(
                    "📊 Monitor: reading {} = {t:.2}°C, average of the last {} = {average:.2}°C",
                    got.len(),
                    last.len()
                );
            }
            Err(ipckit_shmem::Error::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "📊 Monitor: the sensor closed the ring. No end marker (-999.0) needed: the ring \
         knows when its writer closes, or dies"
    );
    let sent: Vec<f64> = (0..READINGS).map(reading).collect();
    expect_same("monitor", &got, &sent)?;
    let average = got.iter().sum::<f64>() / got.len() as f64;
    println!(
        "📊 Final stats: {} readings, in order, average {average:.2}°C",
        got.len()
    );
    Ok(())
}
