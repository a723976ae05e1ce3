"""Python's rows of the compare bench (benches/benches/compare.rs).

  compare.py WORKLOAD MECHANISM

WORKLOAD is rtt (64-byte round trips), bw (1 MiB messages one way), 1to1 (64-byte messages
from one producer to one consumer), 4to1 (four producers, one consumer) or fanout (every
64-byte message to 8 consumers). MECHANISM is pipe (multiprocessing.Pipe), queue
(multiprocessing.Queue), manager (a multiprocessing.Manager's queue), connection
(multiprocessing.connection's Listener and Client over a Unix socket) or xmlrpc
(xmlrpc.client calling a SimpleXMLRPCServer in another process; rtt only).

The script starts its other processes, prints "ready", then for each line "n" on its
standard input runs n iterations and prints the seconds they took; at the end of its input
it tells its processes to return (None on their control pipes), waits for them and returns. Every message carries its number; the receiving side
checks the count and the sum, so a lost message fails the run.
"""

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener

SMALL = 64
BIG = 1 << 20
PRODUCERS = 4
CONSUMERS = 8
PATIENCE = 30.0
ONE_WAY = ("bw", "1to1", "4to1", "fanout")


def message(i, size):
    return i.to_bytes(8, "little") + bytes(size - 8)


def number(msg):
    return int.from_bytes(msg[:8], "little")


# The ends of each mechanism: put(bytes) and get() -> bytes.


class PipeEnds:
    """One end of a multiprocessing.Pipe (a duplex socket pair, or a one-way pipe)."""

    def __init__(self, conn):
        self.conn = conn

    def put(self, msg):
        self.conn.send_bytes(msg)

    def get(self):
        if not self.conn.poll(PATIENCE):
            raise TimeoutError("no message")
        return self.conn.recv_bytes()


class QueueEnds:
    """A multiprocessing.Queue (or a manager's queue proxy) to put on and one to get from."""

    def __init__(self, tx, rx):
        self.tx, self.rx = tx, rx

    def put(self, msg):
        self.tx.put(msg)

    def get(self):
        return self.rx.get(timeout=PATIENCE)


def xmlrpc_serve(ready):
    from xmlrpc.server import SimpleXMLRPCServer

    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda b: b, "echo")
    ready.send(server.server_address[1])
    server.serve_forever()


# The other processes: each serves orders ("n") on its control connection until it closes.


def echo(ctl, ends):
    while True:
        n = ctl.recv()
        if n is None:
            return
        for _ in range(n):
            ends.put(ends.get())
        ctl.send(n)


def consume(ctl, ends, size):
    while True:
        n = ctl.recv()
        if n is None:
            return
        total = 0
        for _ in range(n):
            msg = ends.get()
            if len(msg) != size:
                raise ValueError(f"a message of {len(msg)} bytes, not {size}")
            total += number(msg)
        ctl.send(total)


def produce(ctl, ends, size):
    while True:
        n = ctl.recv()
        if n is None:
            return
        for i in range(n):
            ends.put(message(i, size))
        ctl.send(n)


def start(target, *args):
    mine, theirs = mp.Pipe()
    p = mp.Process(target=target, args=(theirs, *args), daemon=True)
    p.start()
    theirs.close()
    return p, mine


def report(ctl):
    if not ctl.poll(PATIENCE):
        raise TimeoutError("no report")
    return ctl.recv()


class Rig:
    """What this process holds of a row: its ends, the other processes and how a batch runs."""

    def __init__(self, workload, mech):
        self.workload, self.mech = workload, mech
        self.procs, self.ctls, self.folders = [], [], []
        self.size = BIG if workload == "bw" else SMALL
        if mech == "xmlrpc":
            if workload != "rtt":
                raise SystemExit("xmlrpc carries round trips only")
            mine, theirs = mp.Pipe()
            p = mp.Process(target=xmlrpc_serve, args=(theirs,), daemon=True)
            p.start()
            self.procs.append(p)
            import xmlrpc.client

            self.proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{report(mine)}")
            return
        if workload == "rtt":
            self.ends = self.link(echo)
        elif workload in ("bw", "1to1"):
            self.ends = self.link(consume, self.size)
        elif workload == "4to1":
            self.ends = self.shared_into_me(PRODUCERS)
        elif workload == "fanout":
            self.fan = [self.link(consume, self.size) for _ in range(CONSUMERS)]
        else:
            raise SystemExit(f"no workload {workload}")

    def manager(self):
        if not hasattr(self, "_manager"):
            self._manager = mp.Manager()
        return self._manager

    def link(self, role, *args):
        """A link to one new process serving `role`: this process's ends of it."""
        mech = self.mech
        if mech == "pipe":
            mine, theirs = mp.Pipe()
            p, ctl = start(pipe_child, role, theirs, *args)
            theirs.close()
            mine_ends = PipeEnds(mine)
        elif mech in ("queue", "manager"):
            make = mp.Queue if mech == "queue" else self.manager().Queue
            to_child, to_me = make(), make()
            p, ctl = start(queue_child, role, to_me, to_child, *args)
            mine_ends = QueueEnds(to_child, to_me)
        elif mech == "connection":
            folder = tempfile.mkdtemp(prefix="ipckit-py")
            self.folders.append(folder)
            address = os.path.join(folder, "sock")
            listener = Listener(address, family="AF_UNIX")
            p, ctl = start(connection_worker, role, address, *args)
            mine_ends = PipeEnds(listener.accept())
            listener.close()
        else:
            raise SystemExit(f"no mechanism {mech}")
        self.procs.append(p)
        self.ctls.append(ctl)
        return mine_ends

    def shared_into_me(self, producers):
        """Producers putting on one queue that this process takes from."""
        if self.mech not in ("queue", "manager"):
            raise SystemExit(f"{self.mech} has no many-to-one form here")
        make = mp.Queue if self.mech == "queue" else self.manager().Queue
        q = make()
        for _ in range(producers):
            p, ctl = start(queue_child, produce, q, None, self.size)
            self.procs.append(p)
            self.ctls.append(ctl)
        return QueueEnds(None, q)

    def batch(self, n):
        w = self.workload
        if self.mech == "xmlrpc":
            msg = message(0, SMALL)
            import xmlrpc.client

            began = time.perf_counter()
            for _ in range(n):
                got = self.proxy.echo(xmlrpc.client.Binary(msg))
                if got.data != msg:
                    raise ValueError("a wrong echo")
            return time.perf_counter() - began
        if w == "rtt":
            self.ctls[0].send(n)
            msg = message(0, SMALL)
            began = time.perf_counter()
            for _ in range(n):
                self.ends.put(msg)
                if len(self.ends.get()) != SMALL:
                    raise ValueError("a wrong echo")
            took = time.perf_counter() - began
            if report(self.ctls[0]) != n:
                raise ValueError("echoes missing")
            return took
        if w in ("bw", "1to1"):
            began = time.perf_counter()
            self.ctls[0].send(n)
            for i in range(n):
                self.ends.put(message(i, self.size))
            total = report(self.ctls[0])
            took = time.perf_counter() - began
            if total != n * (n - 1) // 2:
                raise ValueError("messages lost")
            return took
        if w == "4to1":
            k = len(self.ctls)
            shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
            began = time.perf_counter()
            for ctl, m in zip(self.ctls, shares):
                ctl.send(m)
            total = 0
            for _ in range(n):
                total += number(self.ends.get())
            for ctl in self.ctls:
                report(ctl)
            took = time.perf_counter() - began
            if total != sum(m * (m - 1) // 2 for m in shares):
                raise ValueError("messages lost")
            return took
        if w == "fanout":
            began = time.perf_counter()
            for ctl in self.ctls:
                ctl.send(n)
            for i in range(n):
                msg = message(i, SMALL)
                for ends in self.fan:
                    ends.put(msg)
            for ctl in self.ctls:
                if report(ctl) != n * (n - 1) // 2:
                    raise ValueError("messages lost")
            return time.perf_counter() - began
        raise SystemExit(f"no workload {w}")

    def close(self):
        for ctl in self.ctls:
            ctl.send(None)
        for p in self.procs:
            if self.mech == "xmlrpc":
                p.terminate()
            p.join(PATIENCE)
            if p.exitcode != 0 and self.mech != "xmlrpc":
                raise SystemExit(f"a process ended with {p.exitcode}")
        if hasattr(self, "_manager"):
            self._manager.shutdown()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def pipe_child(ctl, role, conn, *args):
    role(ctl, PipeEnds(conn), *args)


def queue_child(ctl, role, tx, rx, *args):
    role(ctl, QueueEnds(tx, rx), *args)


def connection_worker(ctl, role, address, *args):
    role(ctl, PipeEnds(Client(address, family="AF_UNIX")), *args)


def main():
    workload, mech = sys.argv[1], sys.argv[2]
    rig = Rig(workload, mech)
    print("ready", flush=True)
    for line in sys.stdin:
        print(f"{rig.batch(int(line)):.9f}", flush=True)
    rig.close()


if __name__ == "__main__":
    main()
