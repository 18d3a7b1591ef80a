#!/usr/bin/python3
"""A kazoo lock client, driven by lockkeeper's interoperability tests.

Usage: kazoo_peer.py CONNECT PATH KIND NAME hold
       kazoo_peer.py CONNECT PATH KIND NAME loop COUNT HOLD_MS LOG_FILE

KIND is mutex (Lock), read (ReadLock) or write (WriteLock). Each recipe is given the extra
lock patterns that make it see Curator-named contenders (lockkeeper names its nodes the way
Curator does): "-lock-" for mutexes, "__READ__" / "__WRIT__" for read-write locks.
Modes behave as in LockPeer.java.
"""
import sys
import time

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock, ReadLock, WriteLock

RECIPES = {
    "mutex": (Lock, ["-lock-"]),
    "read": (ReadLock, ["__WRIT__"]),
    "write": (WriteLock, ["__READ__", "__WRIT__"]),
}


def micros():
    return time.time_ns() // 1000


def main():
    connect, path, kind, name, mode = sys.argv[1:6]
    client = KazooClient(hosts=connect, timeout=30.0)
    client.start(timeout=30)
    recipe, patterns = RECIPES[kind]
    lock = recipe(client, path, name, extra_lock_patterns=patterns)
    if mode == "hold":
        for line in sys.stdin:
            command = line.strip()
            if command == "acquire":
                lock.acquire()
                print("acquired", flush=True)
            elif command == "release":
                lock.release()
                print("released", flush=True)
            elif command == "exit":
                break
    else:
        count, hold_ms, log_file = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
        with open(log_file, "a", buffering=1) as log:
            for _ in range(count):
                lock.acquire()
                log.write("enter %s %d\n" % (name, micros()))
                if hold_ms > 0:
                    time.sleep(hold_ms / 1000.0)
                log.write("leave %s %d\n" % (name, micros()))
                lock.release()
    client.stop()
    client.close()


if __name__ == "__main__":
    main()
