# Every method of Python's manager proxies, one transcript line per call (its result, or
# the exception it raises), so that the transcript of an ipckit manager can be compared
# with Python's own. argv: "own" (start Python's own SyncManager), or
# "sync PATH KEY" / "register PATH KEY" (an ipckit manager; with "register" the objects
# are a Rust process's, reached through BaseManager.register names and AutoProxy).
# Lines of calls only a SyncManager proxy type has are marked "sync".
import queue, sys, threading, time
from multiprocessing.managers import BarrierProxy, BaseManager, SyncManager

mode = sys.argv[1]
sync = mode != "register"
lines = []


def t(label, f, message=True, only_sync=False):
    if only_sync and not sync:
        return
    try:
        r = f()
        out = "-> " + repr(r)
    except Exception as e:
        out = "raises " + type(e).__name__ + (" " + repr(e.args) if message else "")
    lines.append(("sync " if only_sync else "") + label + " " + out)


if mode == "own":
    m = SyncManager(authkey=b"own")
    m.start()
elif mode == "sync":
    m = SyncManager(address=sys.argv[2], authkey=sys.argv[3].encode())
    m.connect()
else:
    class M(BaseManager):
        pass
    for n in ["d", "l", "v", "lock", "rlock", "sem", "cond", "ev", "jq"]:
        M.register("get_" + n)
    M.register("get_bar", proxytype=BarrierProxy)
    m = M(address=sys.argv[2], authkey=sys.argv[3].encode())
    m.connect()

if sync:
    d, l, v = m.dict(), m.list([3, 1, 2]), m.Value("i", 5)
    lock, rlock, sem = m.Lock(), m.RLock(), m.Semaphore(2)
    cond, ev, bar, jq = m.Condition(), m.Event(), m.Barrier(1), m.JoinableQueue()
else:
    d, l, v = m.get_d(), m.get_l(), m.get_v()
    lock, rlock, sem = m.get_lock(), m.get_rlock(), m.get_sem()
    cond, ev, bar, jq = m.get_cond(), m.get_ev(), m.get_bar(), m.get_jq()

# dict (keys inserted in sorted order: ipckit's dicts keep their keys sorted)
t("d[a]=1", lambda: d.__setitem__("a", 1))
t("d[b]=list", lambda: d.__setitem__("b", [1, 2.5, "x", b"y", None, True, {"k": -7}]))
t("d[c]=3", lambda: d.__setitem__("c", 3))
t("d[a]", lambda: d["a"])
t("d[b]", lambda: d["b"])
t("d[zz]", lambda: d["zz"])
t("a in d", lambda: "a" in d)
t("zz in d", lambda: "zz" in d)
t("len(d)", lambda: len(d))
t("get", lambda: d.get("c"))
t("get missing", lambda: d.get("zz"))
t("get default", lambda: d.get("zz", 9))
t("keys", lambda: list(d.keys()))
t("values", lambda: list(d.values()))
t("items", lambda: list(d.items()))
t("copy", lambda: d.copy())
t("setdefault there", lambda: d.setdefault("c", 7))
t("setdefault new", lambda: d.setdefault("d", 4))
t("update", lambda: d.update({"e": 5}, f=6))
t("pop", lambda: d.pop("f"))
t("pop default", lambda: d.pop("zz", 0))
t("pop missing", lambda: d.pop("zz"))
t("popitem", lambda: d.popitem())
t("del d[d]", lambda: d.__delitem__("d"))
t("del missing", lambda: d.__delitem__("d"))
t("iter", lambda: list(iter(d)))
t("copy after", lambda: d.copy())
t("clear", lambda: d.clear())
t("popitem empty", lambda: d.popitem())
t("len empty", lambda: len(d))

# list
t("l[:]", lambda: l[:])
t("l[0]", lambda: l[0])
t("l[-1]", lambda: l[-1])
t("l[5]", lambda: l[5])
t("l['a']", lambda: l["a"])
t("l[1:]", lambda: l[1:])
t("l[::-1]", lambda: l[::-1])
t("l[::2]", lambda: l[::2])
t("l[5:1]", lambda: l[5:1])
t("l[-2:10]", lambda: l[-2:10])
t("l[::0]", lambda: l[::0])
t("len(l)", lambda: len(l))
t("l + [9]", lambda: l + [9])
t("l + (9,)", lambda: l + (9,))
t("l * 2", lambda: l * 2)
t("2 * l", lambda: 2 * l)
t("l * -1", lambda: l * -1)
t("l * 'a'", lambda: l * "a")
t("reversed", lambda: list(reversed(l)))
t("3 in l", lambda: 3 in l)
t("1.0 in l", lambda: 1.0 in l)
t("7 in l", lambda: 7 in l)
t("count", lambda: l.count(1))
t("index", lambda: l.index(2))
t("index start", lambda: l.index(1, 1))
t("index start stop", lambda: l.index(1, 0, 1))
t("index missing", lambda: l.index(7))
t("append", lambda: l.append(4))
t("extend", lambda: l.extend([5, 1]))
t("insert", lambda: l.insert(1, 6))
t("insert far", lambda: l.insert(99, 8))
t("l[:] 2", lambda: l[:])
t("pop", lambda: l.pop())
t("pop 0", lambda: l.pop(0))
t("pop -2", lambda: l.pop(-2))
t("pop 99", lambda: l.pop(99))
t("remove", lambda: l.remove(1))
t("remove missing", lambda: l.remove(99))
t("l[:] 3", lambda: l[:])
t("reverse", lambda: l.reverse())
t("l[:] 4", lambda: l[:])
t("sort", lambda: l.sort())
t("l[:] 5", lambda: l[:])
t("sort reverse", lambda: l.sort(reverse=True))
t("l[:] 6", lambda: l[:])
t("l[0]=7", lambda: l.__setitem__(0, 7))
t("l[99]=1", lambda: l.__setitem__(99, 1))
t("l[1:2]=", lambda: l.__setitem__(slice(1, 2), [7, 8, 9]))
t("l[:] 7", lambda: l[:])
t("l[::2]= bad", lambda: l.__setitem__(slice(None, None, 2), [0]))
t("l[::2]=", lambda: l.__setitem__(slice(None, None, 3), [0, 0]))
t("l[:] 8", lambda: l[:])
t("del l[0]", lambda: l.__delitem__(0))
t("del l[99]", lambda: l.__delitem__(99))
t("del l[::2]", lambda: l.__delitem__(slice(None, None, 2)))
t("l[:] 9", lambda: l[:])
t("append str", lambda: l.append("s"))
t("sort mixed", lambda: l.sort())
t("remove str", lambda: l.remove("s"))


l2 = m.list([8, 2]) if sync else None


def iadd():
    global l2
    l2 += [4]
    return l2[:]


def imul():
    global l2
    l2 *= 2
    return l2[:]


t("l += [4]", iadd, only_sync=True)
t("l *= 2", imul, only_sync=True)
t("sort key", lambda: l.sort(key=None))
t("l[:] 10", lambda: l[:])

# every kind of slice: read, delete, assign
l3 = m.list() if sync else None
bounds = (None, -9, -3, 0, 2, 9)
for st in (None, 1, 2, -1, -2, 3):
    for b in bounds:
        for e in bounds:
            sl = slice(b, e, st)

            def sliced(sl=sl):
                l3[:] = list(range(7))
                got = l3[sl]
                del l3[sl]
                after_del = l3[:]
                l3[:] = list(range(7))
                new = [99] * len(got) + ([98] if sl.step in (None, 1) else [])
                l3[sl] = new
                return got, after_del, l3[:]

            t("slice %r" % (sl,), sliced, only_sync=True)

# value
t("v.get", lambda: v.get())
t("v.set", lambda: v.set(6))
t("v.get 2", lambda: v.get())
t("v.value", lambda: v.value, only_sync=True)

# locks
t("lock.acquire(False)", lambda: lock.acquire(False))
t("lock.acquire(False) 2", lambda: lock.acquire(False))
t("lock.acquire(timeout)", lambda: lock.acquire(True, 0.05))
t("lock.release", lambda: lock.release())
t("lock.release 2", lambda: lock.release())
t("with lock", lambda: lock.__enter__() or lock.__exit__(None, None, None))
t("rlock.acquire", lambda: rlock.acquire())
t("rlock.acquire 2", lambda: rlock.acquire())
t("rlock.release", lambda: rlock.release())
t("rlock.release 2", lambda: rlock.release())
t("rlock.release 3", lambda: rlock.release())
t("sem.acquire", lambda: sem.acquire())
t("sem.acquire 2", lambda: sem.acquire())
t("sem.acquire(False)", lambda: sem.acquire(False))
t("sem.acquire(timeout)", lambda: sem.acquire(True, 0.05))
t("sem.release", lambda: sem.release())
t("sem.release 2", lambda: sem.release())
if sync:
    bsem = m.BoundedSemaphore(1)
t("bsem.acquire", lambda: bsem.acquire(), only_sync=True)
t("bsem.release", lambda: bsem.release(), only_sync=True)
t("bsem.release 2", lambda: bsem.release(), only_sync=True)

# condition
t("cond.notify unheld", lambda: cond.notify())
t("cond.wait unheld", lambda: cond.wait(0.01))
t("cond.release unheld", lambda: cond.release())
t("cond.acquire", lambda: cond.acquire())
t("cond.notify", lambda: cond.notify())
t("cond.notify 3", lambda: cond.notify(3))
t("cond.notify_all", lambda: cond.notify_all())
t("cond.wait timeout", lambda: cond.wait(0.05))
t("cond.wait_for true", lambda: cond.wait_for(lambda: 5), only_sync=True)
t("cond.wait_for false", lambda: cond.wait_for(lambda: 0, 0.05), only_sync=True)
t("cond.release", lambda: cond.release())

# event
t("ev.is_set", lambda: ev.is_set())
t("ev.wait", lambda: ev.wait(0.01))
t("ev.set", lambda: ev.set())
t("ev.wait 2", lambda: ev.wait(0.01))
t("ev.clear", lambda: ev.clear())
t("ev.is_set 2", lambda: ev.is_set())

# barrier
t("bar.wait", lambda: bar.wait())
t("bar.parties", lambda: bar.parties)
t("bar.n_waiting", lambda: bar.n_waiting)
t("bar.broken", lambda: bar.broken)
t("bar.abort", lambda: bar.abort())
t("bar.broken 2", lambda: bar.broken)
t("bar.wait broken", lambda: bar.wait())
t("bar.reset", lambda: bar.reset())
t("bar.wait 2", lambda: bar.wait())

if sync:
    bar2 = m.Barrier(2)
t("bar2.wait timeout", lambda: bar2.wait(0.05), only_sync=True)
t("bar2.broken", lambda: bar2.broken, only_sync=True)
t("bar2.wait broken", lambda: bar2.wait(1), only_sync=True)
t("bar2.reset", lambda: bar2.reset(), only_sync=True)
t("bar2.broken 2", lambda: bar2.broken, only_sync=True)

# joinable queue
t("jq.put", lambda: jq.put("a"))
t("jq.put 2", lambda: jq.put_nowait("b"))
t("jq.qsize", lambda: jq.qsize())
t("jq.empty", lambda: jq.empty())
t("jq.full", lambda: jq.full())
t("jq.get", lambda: jq.get())
t("jq.get_nowait", lambda: jq.get_nowait())
t("jq.get_nowait empty", lambda: jq.get_nowait())
t("jq.get timeout", lambda: jq.get(True, 0.05))
t("jq.task_done", lambda: jq.task_done())
t("jq.task_done 2", lambda: jq.task_done())
t("jq.join", lambda: jq.join())
t("jq.task_done 3", lambda: jq.task_done())

if sync:
    q = m.Queue(2)
    a = m.Array("i", [1, 2, 3])
    ns = m.Namespace()
t("q.put", lambda: q.put(1), only_sync=True)
t("q.put 2", lambda: q.put(2), only_sync=True)
t("q.full", lambda: q.full(), only_sync=True)
t("q.put_nowait full", lambda: q.put_nowait(3), only_sync=True)
t("q.put timeout full", lambda: q.put(3, True, 0.05), only_sync=True)
t("q.get", lambda: q.get(), only_sync=True)
t("q.put 3", lambda: q.put(3, timeout=1), only_sync=True)
t("q.qsize", lambda: q.qsize(), only_sync=True)


def bounded_put():
    # A put on a full queue waits for another connection's get (a thread has its own).
    q1 = m.Queue(1)
    q1.put("a")

    def take():
        time.sleep(0.2)
        q1.get()

    th = threading.Thread(target=take)
    th.start()
    t0 = time.monotonic()
    q1.put("b", True, 30)
    waited = time.monotonic() - t0
    th.join()
    return waited >= 0.15, q1.get_nowait()


t("q1.put waits for a get", bounded_put, only_sync=True)
t("len(a)", lambda: len(a), only_sync=True)
t("a[0]", lambda: a[0], only_sync=True)
t("a[-1]", lambda: a[-1], only_sync=True)
t("a[5]", lambda: a[5], only_sync=True)
t("a[1:]", lambda: a[1:], only_sync=True)
t("a[0]=9", lambda: a.__setitem__(0, 9), only_sync=True)
t("a[0]=1.5", lambda: a.__setitem__(0, 1.5), only_sync=True)
t("a[0]='x'", lambda: a.__setitem__(0, "x"), only_sync=True)
t("a[0]=2**40", lambda: a.__setitem__(0, 2**40), message=False, only_sync=True)
t("a[5]=1", lambda: a.__setitem__(5, 1), only_sync=True)
t("a[0:1]=[1]", lambda: a.__setitem__(slice(0, 1), [1]), only_sync=True)
t("list(a)", lambda: list(a), only_sync=True)
t("ns.x=1", lambda: setattr(ns, "x", 1), only_sync=True)
t("ns.x", lambda: ns.x, only_sync=True)
t("del ns.x", lambda: delattr(ns, "x"), only_sync=True)
t("ns.x gone", lambda: ns.x, only_sync=True)

print("\n".join(lines))
if mode == "own":
    m.shutdown()
