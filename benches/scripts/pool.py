"""Python's rows of benches/benches/pool.rs, in the same paired rounds as ipckit's.

Usage: python3 pool.py ROW
ROW is python_process (spawn a process and join it: one iteration), python_pool_chunk1,
python_pool_default, python_executor (maps of 10 000 tasks: one iteration per task) or
python_pool (a map of 100 tasks returning 1 MiB each: one iteration per map). The script
makes its pool, prints "ready", then for each line "n" on its standard input runs whole
maps covering n iterations and prints the seconds n iterations took (the maps' time,
scaled to n); it ends at the end of its input.
"""

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def trivial(x):
    return x + 1


def one_mib(_):
    return bytes(1 << 20)


TASKS = 10_000


def rows(row):
    """The row's setup (a context manager, or None) and one run of it: (run, per)."""
    if row == "python_process":
        ctx = mp.get_context("spawn")

        def once():
            p = ctx.Process(target=trivial, args=(7,))
            p.start()
            p.join()

        return None, once, 1
    if row == "python_pool":
        pool = mp.Pool(4)
        return pool, lambda: pool.map(one_mib, range(100)), 1
    items = range(TASKS)
    if row == "python_executor":
        ex = ProcessPoolExecutor(4)
        return ex, lambda: list(ex.map(trivial, items)), TASKS
    pool = mp.Pool(4)
    chunks = {"python_pool_chunk1": 1, "python_pool_default": None}[row]
    return pool, lambda: pool.map(trivial, items, chunksize=chunks), TASKS


def main():
    held, run, per = rows(sys.argv[1])
    run()  # start the workers
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        runs = max(1, -(-n // per))
        start = time.perf_counter()
        for _ in range(runs):
            run()
        elapsed = time.perf_counter() - start
        print(f"{elapsed * n / (runs * per):.9f}", flush=True)
    if isinstance(held, ProcessPoolExecutor):
        held.shutdown()
    elif held is not None:
        held.terminate()


if __name__ == "__main__":
    main()
