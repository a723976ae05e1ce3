"""Python's multiprocessing.Manager doing what benches/benches/manager.rs measures.

Usage: python3 manager_bench.py SECONDS [IPCKIT_SOCKET AUTHKEY]
       python3 manager_bench.py SECONDS --four
Prints one line per figure: `get_rtt_us <µs>`, `lock_get_set_4x_ops <ops/s>`,
`unlocked_4x_ops <ops/s>`, `unlocked_4x_lost <updates>`. Given the socket of an ipckit
manager (holding a dict `bench` with `x` and a lock `lock`), the same Python client code
runs against it too: `ipckit_get_rtt_us`, `ipckit_lock_get_set_4x_ops`. With `--four`,
only Python's manager's four-process figures.

With each, the CPU time Python's client code spends per call (`get_client_cpu_us`) or per
locked increment in all four clients (`lock_get_set_4x_client_cpu_us`), each prefixed
`ipckit_` against the ipckit manager: what no server can take off a call's time.
"""

import multiprocessing as mp
import sys
import time
from multiprocessing.managers import BaseManager

N = 2000


def timed_increments(d, lock, n, cpu):
    """`n` locked increments, their CPU time added to `cpu`."""
    began = time.process_time()
    for _ in range(n):
        with lock:
            d["x"] = d["x"] + 1
    with cpu.get_lock():
        cpu.value += time.process_time() - began


def locked(d, lock, n, cpu, start):
    start.wait()
    timed_increments(d, lock, n, cpu)


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


def ipckit_locked(address, authkey, n, cpu, start):
    m = ipckit_connect(address, authkey)
    d, lock = m.get_bench(), m.get_lock()
    start.wait()
    timed_increments(d, lock, n, cpu)


def gets(d, seconds, prefix):
    """`d.get` for `seconds`: prints its round trip and the client's CPU time per call."""
    n = 0
    t, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - t < seconds:
        for _ in range(100):
            d.get("x")
        n += 100
    cpu = (time.process_time() - cpu) / n * 1e6
    print(f"{prefix}get_rtt_us {(time.perf_counter() - t) / n * 1e6:.2f}", flush=True)
    print(f"{prefix}get_client_cpu_us {cpu:.2f}", flush=True)


def four_locked(target, args, d, prefix):
    """Four clients' locked increments: prints their rate and CPU time per increment."""
    cpu = mp.Value("d", 0.0)
    took = four(target, (*args, N, cpu, mp.Event()))
    assert d["x"] == 4 * N, d["x"]
    print(f"{prefix}lock_get_set_4x_ops {4 * N / took:.0f}", flush=True)
    per = cpu.value / (4 * N) * 1e6
    print(f"{prefix}lock_get_set_4x_client_cpu_us {per:.2f}", flush=True)


def against_ipckit(seconds, address, authkey):
    """The same client code as below, against the ipckit manager at `address`."""
    m = ipckit_connect(address, authkey)
    d = m.get_bench()
    d["x"] = 0
    gets(d, seconds, "ipckit_")
    four_locked(ipckit_locked, (address, authkey), d, "ipckit_")


def main():
    seconds = float(sys.argv[1])
    four_only = sys.argv[2:] == ["--four"]
    if len(sys.argv) > 3:
        against_ipckit(seconds, sys.argv[2], sys.argv[3].encode())
    with mp.Manager() as m:
        d = m.dict()
        d["x"] = 0
        d["y"] = 0
        if not four_only:
            gets(d, seconds, "")
        four_locked(locked, (d, m.Lock()), d, "")

        took = four(unlocked, (d, N, m.Event()))
        print(f"unlocked_4x_ops {4 * N / took:.0f}", flush=True)
        print(f"unlocked_4x_lost {4 * N - d['y']}", flush=True)


if __name__ == "__main__":
    main()
