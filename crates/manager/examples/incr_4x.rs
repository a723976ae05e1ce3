//! Four processes add 1 to one key of a manager's dict, `N` times each (default
//! 200 000), through the local fast path, and the parent prints operations per second:
//! the `manager_dict_incr_4x` bench's `incr_fast_path` row (or, with `--later`, its
//! `incr_later_fast_path` row; with `--socket`, over the socket) alone, small enough to
//! run under `perf`.
//!
//! ```text
//! cargo run --release -p ipckit-manager --example incr_4x -- [N] [--later] [--socket]
//! ```

use std::{collections::VecDeque, time::Instant};

use ipckit_manager::{Manager, Result, ServeOptions};

/// Calls a `--later` worker lets await their answers.
const IN_FLIGHT: usize = 32;

/// A child's work; its error comes back to the parent as text.
fn worker(args: (String, u64, bool)) -> std::result::Result<(), String> {
    add(args).map_err(|e| e.to_string())
}

fn add((addr, n, later): (String, u64, bool)) -> Result<()> {
    let m = Manager::connect(&addr.parse()?, None)?;
    let d = m.dict::<String, i64>("scores")?;
    if !later {
        for _ in 0..n {
            d.incr("x", 1)?;
        }
        return Ok(());
    }
    let mut sent = VecDeque::with_capacity(IN_FLIGHT);
    for _ in 0..n {
        if sent.len() == IN_FLIGHT
            && let Some(p) = sent.pop_front()
        {
            ipckit_manager::Pending::wait(p)?;
        }
        sent.push_back(d.incr_later("x", 1)?);
    }
    sent.into_iter().try_for_each(|p| p.wait().map(drop))
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    ipckit_manager::enter(&[]);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let later = args.iter().any(|a| a == "--later");
    let socket = args.iter().any(|a| a == "--socket");
    let m = Manager::start_with(ServeOptions::new().fast_path(!socket))?;
    let addr = m.address().to_string();
    let start = Instant::now();
    let mut children = (0..4)
        .map(|_| ipckit_manager::spawn((addr.clone(), n, later), worker))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for c in &mut children {
        c.join()??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = m.dict::<String, i64>("scores")?.get("x")?.unwrap_or(0);
    assert_eq!(total, 4 * i64::try_from(n).unwrap_or(i64::MAX));
    println!(
        "{:.0} ops/s ({total} increments in {secs:.2} s)",
        total as f64 / secs
    );
    Ok(())
}
