"""Python's multiprocessing.Manager doing what benches/benches/manager.rs measures.

Usage: python3 manager_bench.py SECONDS [IPCKIT_SOCKET AUTHKEY]
Prints one line per figure: `get_rtt_us <µs>`, `lock_get_set_4x_ops <ops/s>`,
`unlocked_4x_ops <ops/s>`, `unlocked_4x_lost <updates>`. Given the socket of an ipckit
manager (holding a dict `bench` with `x` and a lock `lock`), the same Python client code
runs against it too: `ipckit_get_rtt_us`, `ipckit_lock_get_set_4x_ops`.
"""

import multiprocessing as mp
import sys
import time
from multiprocessing.managers import BaseManager

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


class IpckitManager(BaseManager):
    pass


IpckitManager.register("get_bench")
IpckitManager.register("get_lock")


def ipckit_connect(address, authkey):
    m = IpckitManager(address=address, authkey=authkey)
    m.connect()
    return m


def ipckit_locked(address, authkey, n, start):
    m = ipckit_connect(address, authkey)
    d, lock = m.get_bench(), m.get_lock()
    start.wait()
    for _ in range(n):
        with lock:
            d["x"] = d["x"] + 1


def against_ipckit(seconds, address, authkey):
    """The same client code as below, against the ipckit manager at `address`."""
    m = ipckit_connect(address, authkey)
    d = m.get_bench()
    d["x"] = 0
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(100):
            d.get("x")
        n += 100
    print(f"ipckit_get_rtt_us {(time.perf_counter() - t) / n * 1e6:.2f}", flush=True)
    took = four(ipckit_locked, (address, authkey, N, mp.Event()))
    assert d["x"] == 4 * N, d["x"]
    print(f"ipckit_lock_get_set_4x_ops {4 * N / took:.0f}", flush=True)


def main():
    seconds = float(sys.argv[1])
    if len(sys.argv) > 3:
        against_ipckit(seconds, sys.argv[2], sys.argv[3].encode())
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
