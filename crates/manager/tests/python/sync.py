# A SyncManager client of an ipckit manager: argv = socket path, authkey, style.
import queue, sys, time
from multiprocessing.managers import BaseManager, SyncManager

path, key, style = sys.argv[1], sys.argv[2].encode(), sys.argv[3]

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __eq__(self, o):
        return (self.x, self.y) == (o.x, o.y)

if style == "sync":
    m = SyncManager(address=path, authkey=key)
    m.connect()
    d = m.dict({"a": 1})
    l = m.list([1, 2])
    v = m.Value("i", 0)
    lock = m.Lock()
    q = m.Queue()
    ns = m.Namespace()
    ev = m.Event()
    ns.x = 5
    assert ns.x == 5
    try:
        ns.missing
        raise SystemExit("no AttributeError")
    except AttributeError:
        pass
    assert not ev.is_set()
    assert ev.wait(0.05) is False
    ev.set()
    assert ev.wait(1) is True
    sem = m.Semaphore(2)
    assert sem.acquire() and sem.acquire()
    assert sem.acquire(timeout=0.05) is False
    sem.release(); sem.release()
    rl = m.RLock()
    with rl:
        with rl:
            pass
else:
    class M(BaseManager):
        pass
    for n in ["get_scores", "get_items", "get_count", "get_guard", "get_jobs"]:
        M.register(n)
    m = M(address=path, authkey=key)
    m.connect()
    d, l, v, lock, q = m.get_scores(), m.get_items(), m.get_count(), m.get_guard(), m.get_jobs()

# dict
d["k"] = [1, 2.5, "x", b"y", None, True, (3, 4), {"n": -7}]
assert d["k"] == [1, 2.5, "x", b"y", None, True, [3, 4], {"n": -7}], d["k"]
assert "k" in d and "zz" not in d
assert d.get("zz") is None and d.get("zz", 9) == 9
d.update({"b": 2}, c=3)
assert len(d) >= 3
assert set(d.keys()) >= {"k", "b", "c"}
assert ("b", 2) in list(d.items())
assert 2 in list(d.values())
del d["b"]
try:
    d["b"]
    raise SystemExit("no KeyError")
except KeyError as e:
    assert e.args == ("b",), e.args
try:
    del d["b"]
    raise SystemExit("no KeyError on del")
except KeyError:
    pass
d["p"] = Point(1, 2)
assert d["p"] == Point(1, 2)
try:
    d["big"] = 2**70
    raise SystemExit("no OverflowError")
except OverflowError:
    pass
if style == "sync":
    assert sorted(iter(d)) == sorted(d.keys())
# list
l.append(3)
l.extend([4, 5])
assert l[0] == 1 and l[-1] == 5 and len(l) == 5, len(l)
assert l.pop() == 5
try:
    l[99]
    raise SystemExit("no IndexError")
except IndexError:
    pass
assert list(l) == [1, 2, 3, 4]
# value
v.set(41) if style != "sync" else None
if style == "sync":
    v.value = 41
    assert v.value == 41
else:
    assert v.get() == 41
# lock
with lock:
    pass
assert lock.acquire(False)
lock.release()
# queue
q.put("job")
assert q.get(timeout=1) == "job"
t = time.monotonic()
try:
    q.get(timeout=0.1)
    raise SystemExit("no queue.Empty")
except queue.Empty:
    pass
assert time.monotonic() - t >= 0.09
try:
    q.get_nowait()
    raise SystemExit("no queue.Empty")
except queue.Empty:
    pass
print("ok")
