"""Python's multiprocessing.Queue doing what benches/benches/redis.rs measures.

Usage: python3 mp_queue.py SECONDS
Prints one line per row: `ROW ELAPSED_SECONDS COUNT`, COUNT being messages (1p1c, 4p1c)
or round trips (rtt), each of 64 bytes, every producer and the echo in processes of their
own. Each row runs batches until SECONDS have passed.
"""

import multiprocessing as mp
import sys
import time

MSG = bytes(64)
BATCH = 5000


def produce(q, n, start):
    start.wait()
    for _ in range(n):
        q.put(MSG)


def echo(req, rep):
    for m in iter(req.get, None):
        rep.put(m)


def flow(producers, n):
    """Seconds for `producers` processes to put n messages each, and this one to get them."""
    q, start = mp.Queue(), mp.Event()
    procs = [mp.Process(target=produce, args=(q, n, start)) for _ in range(producers)]
    for p in procs:
        p.start()
    time.sleep(0.1)
    t = time.perf_counter()
    start.set()
    for _ in range(producers * n):
        q.get()
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    return elapsed


def rtt(req, rep, n):
    t = time.perf_counter()
    for _ in range(n):
        req.put(MSG)
        rep.get()
    return time.perf_counter() - t


def timed(row, budget, run, per):
    total, count = 0.0, 0
    while total < budget:
        total += run()
        count += per
    print(f"{row} {total:.6f} {count}", flush=True)


def main():
    budget = float(sys.argv[1])
    timed("1p1c", budget, lambda: flow(1, BATCH), BATCH)
    timed("4p1c", budget, lambda: flow(4, BATCH // 4), BATCH // 4 * 4)
    req, rep = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo, args=(req, rep))
    p.start()
    rtt(req, rep, 100)
    timed("rtt", budget, lambda: rtt(req, rep, 1000), 1000)
    req.put(None)
    p.join()


if __name__ == "__main__":
    main()
