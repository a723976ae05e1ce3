"""Python's rows of benches/benches/pool.rs, measured in the same run as ipckit's.

Usage: python3 pool.py GROUP SECONDS
Prints one line per row: `ROW ELAPSED_SECONDS COUNT`, where COUNT is what the row's figure
is per: processes spawned and joined, tasks mapped, or maps of 100 × 1 MiB.
"""

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def trivial(x):
    return x + 1


def one_mib(_):
    return bytes(1 << 20)


def timed(row, budget, run, per):
    """Runs `run` until `budget` seconds have passed (at least once); prints the row."""
    n = 0
    start = time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
    print(row, elapsed, n * per, flush=True)


def spawn_join(budget):
    ctx = mp.get_context("spawn")

    def once():
        p = ctx.Process(target=trivial, args=(7,))
        p.start()
        p.join()

    once()
    timed("python_process", budget, once, 1)


def pool_map_10k(budget):
    items = range(10_000)
    with mp.Pool(4) as pool:
        pool.map(trivial, range(100))
        timed("python_pool_chunk1", budget, lambda: pool.map(trivial, items, chunksize=1), 10_000)
        timed("python_pool_default", budget, lambda: pool.map(trivial, items), 10_000)
    with ProcessPoolExecutor(4) as ex:
        list(ex.map(trivial, range(100)))
        timed("python_executor", budget, lambda: list(ex.map(trivial, items)), 10_000)


def pool_map_1mib(budget):
    with mp.Pool(4) as pool:
        pool.map(one_mib, range(4))
        timed("python_pool", budget, lambda: pool.map(one_mib, range(100)), 1)


if __name__ == "__main__":
    group, budget = sys.argv[1], float(sys.argv[2])
    {"spawn_join": spawn_join, "pool_map_10k": pool_map_10k, "pool_map_1MiB": pool_map_1mib}[group](budget)
