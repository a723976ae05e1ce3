//! Maps a trivial function over 10 000 integers with 4 workers, one task per dispatch,
//! `ROUNDS` times (default 50), and prints tasks per second: the `pool_map_10k` bench's
//! `chunk1` row alone, small enough to run under `perf`.
//!
//! ```text
//! cargo run --release -p ipckit-pool --example map_chunk1 -- [ROUNDS] [--timeout]
//! ```

use std::time::{Duration, Instant};

use ipckit_pool::{Pool, PoolOptions};

fn trivial(x: u64) -> u64 {
    x + 1
}

fn main() -> Result<(), ipckit_pool::Error> {
    ipckit_pool::enter(&[]);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(50);
    let mut opts = PoolOptions::new(4).chunk_size(1);
    if args.iter().any(|a| a == "--timeout") {
        opts = opts.task_timeout(Duration::from_secs(10));
    }
    let pool = Pool::new(opts, trivial)?;
    pool.map(0..10_000u64)?;
    let start = Instant::now();
    for _ in 0..rounds {
        let out = pool.map(0..10_000u64)?;
        assert_eq!(out[9], 10);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.0} tasks/s ({rounds} maps of 10 000 in {secs:.2} s)",
        f64::from(rounds) * 10_000.0 / secs
    );
    pool.join()
}
