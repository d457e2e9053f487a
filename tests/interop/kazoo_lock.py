#!/usr/bin/env python3
"""kazoo's Lock recipe, driven line by line from a test (stdin -> stdout).

    kazoo_lock.py HOSTS PATH            commands on stdin, one answer line each:
      try            -> acquired | busy        (acquire(blocking=False))
      acquire SECS   -> acquired | timeout     (acquire(timeout=SECS))
      release        -> released
      nodes          -> the lock directory's children, space-separated
      quit
    kazoo_lock.py HOSTS PATH bench N    N acquire/release cycles on one session; prints
                                        "cycles=N p50_us=.. p99_us=.. mean_us=.."

The lock is Lock(client, PATH, extra_lock_patterns=("-lock-",)): kazoo then counts the
`_c_<id>-lock-<seq>` nodes of Curator and Lucky as contenders (Lucky counts kazoo's
`<id>__lock__<seq>` nodes without being told).
"""
import sys
import time

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock


def main():
    hosts, path = sys.argv[1], sys.argv[2]
    zk = KazooClient(hosts=hosts, timeout=10.0)
    zk.start(timeout=15)
    lock = Lock(zk, path, extra_lock_patterns=("-lock-",))
    if len(sys.argv) > 3 and sys.argv[3] == "bench":
        n = int(sys.argv[4])
        lat = []
        for _ in range(n):
            t = time.perf_counter_ns()
            lock.acquire()
            lock.release()
            lat.append(time.perf_counter_ns() - t)
        lat.sort()
        print(
            "cycles=%d p50_us=%d p99_us=%d mean_us=%d"
            % (n, lat[n // 2] // 1000, lat[min(n - 1, n * 99 // 100)] // 1000, sum(lat) // n // 1000),
            flush=True,
        )
        zk.stop()
        return
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "try":
            print("acquired" if lock.acquire(blocking=False) else "busy", flush=True)
        elif cmd[0] == "acquire":
            print("acquired" if lock.acquire(timeout=float(cmd[1])) else "timeout", flush=True)
        elif cmd[0] == "release":
            lock.release()
            print("released", flush=True)
        elif cmd[0] == "nodes":
            print(" ".join(sorted(zk.get_children(path))), flush=True)
        elif cmd[0] == "quit":
            break
    zk.stop()
    zk.close()


if __name__ == "__main__":
    main()
