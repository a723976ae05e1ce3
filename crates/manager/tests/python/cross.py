# A Python process beside a Rust one on an ipckit manager's objects, by registered
# name. argv: socket path, authkey, role.
import sys
from multiprocessing.managers import BaseManager

path, key, role = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
PATIENCE = 30


class M(BaseManager):
    pass


for n in ["cond", "ready", "jobs", "done"]:
    M.register("get_" + n)
m = M(address=path, authkey=key)
m.connect()

if role == "cond-wait":
    # Woken by the Rust process's notify.
    cond, ready = m.get_cond(), m.get_ready()
    cond.acquire()
    ready.set()
    print(cond.wait(PATIENCE))
    cond.release()
elif role == "cond-notify":
    # Wakes the Rust process that waits.
    cond, ready = m.get_cond(), m.get_ready()
    assert ready.wait(PATIENCE)
    with cond:
        cond.notify()
    print("notified")
elif role == "produce":
    jobs, done = m.get_jobs(), m.get_done()
    for i in range(5):
        jobs.put(i)
    jobs.join()
    # join returned after every task_done, so after every item was recorded.
    print(len(done))
elif role == "consume":
    jobs, done = m.get_jobs(), m.get_done()
    for _ in range(5):
        done.append(jobs.get(timeout=PATIENCE))
        jobs.task_done()
    print("consumed")
