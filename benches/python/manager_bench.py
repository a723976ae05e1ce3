"""Python's multiprocessing.Manager doing what benches/benches/manager.rs measures.

Usage: python3 manager_bench.py SECONDS
Prints one line per figure: `get_rtt_us <µs>`, `lock_get_set_4x_ops <ops/s>`,
`unlocked_4x_ops <ops/s>`, `unlocked_4x_lost <updates>`.
"""

import multiprocessing as mp
import sys
import time

N = 2000


def locked(d, lock, n, start):
    start.wait()
    for _ in range(n):
        with lock:
            d["x"] = d["x"] + 1


def unlocked(d, n, start):
    start.wait()
    for _ in range(n):
        d["y"] += 1


def four(target, args):
    procs = [mp.Process(target=target, args=args) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(0.2)
    t = time.perf_counter()
    args[-1].set()
    for p in procs:
        p.join()
    return time.perf_counter() - t


def main():
    seconds = float(sys.argv[1])
    with mp.Manager() as m:
        d = m.dict()
        d["x"] = 0
        d["y"] = 0
        n = 0
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            for _ in range(100):
                d.get("x")
            n += 100
        print(f"get_rtt_us {(time.perf_counter() - t) / n * 1e6:.2f}", flush=True)

        lock = m.Lock()
        took = four(locked, (d, lock, N, m.Event()))
        assert d["x"] == 4 * N, d["x"]
        print(f"lock_get_set_4x_ops {4 * N / took:.0f}", flush=True)

        took = four(unlocked, (d, N, m.Event()))
        print(f"unlocked_4x_ops {4 * N / took:.0f}", flush=True)
        print(f"unlocked_4x_lost {4 * N - d['y']}", flush=True)


if __name__ == "__main__":
    main()
