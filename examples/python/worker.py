#!/usr/bin/env python3
"""A worker that uses the reservation module's raw commands through redis-py.

It takes a reservation on a job, keeps it alive with RESERVE.RENEW while it
works (the heartbeat the old libraries did with GET + EXPIRE), checks the
fencing token before each write, and releases with RESERVE.RELEASE ... TOKEN
so a late release can never free somebody else's lock.

    python3 worker.py --url redis://127.0.0.1:6379/0 --job nightly-report

Exit status: 0 done, 2 the job was held by another worker, 3 the
reservation was lost while working.
"""

import argparse
import os
import socket
import sys
import threading
import uuid

import redis


def holder_id(by):
    """<by>-<hostname>-<pid>-<random>: unique per process and reservation."""
    return f"{by}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Renews the reservation every `interval` seconds until stopped."""

    def __init__(self, r, key, holder, token, ttl, interval):
        super().__init__(daemon=True)
        self.r, self.key, self.holder, self.token = r, key, holder, token
        self.ttl, self.interval = ttl, interval
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self.renewals = 0

    def run(self):
        while not self.stopped.wait(self.interval):
            ok = self.r.execute_command(
                "RESERVE.RENEW", self.key, self.holder, self.ttl, "TOKEN", self.token
            )
            if ok != 1:
                print(f"reservation {self.key} lost", file=sys.stderr)
                self.lost.set()
                return
            self.renewals += 1

    def stop(self):
        self.stopped.set()
        self.join()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--job", default="example-job")
    p.add_argument("--by", default="py-worker")
    p.add_argument("--ttl", type=float, default=1.0, help="reservation TTL, seconds")
    p.add_argument("--work", type=float, default=2.5, help="how long the job takes, seconds")
    p.add_argument("--wait", type=float, default=None,
                   help="wait up to this many seconds for the job (RESERVE.WAIT) instead of giving up")
    args = p.parse_args()

    r = redis.Redis.from_url(args.url)
    key = f"reservation-{args.job}"
    holder = holder_id(args.by)

    if args.wait is None:
        token = r.execute_command("RESERVE.LOCK", key, holder, args.ttl)
    else:
        token = r.execute_command("RESERVE.WAIT", key, holder, args.ttl, args.wait)
    if token == 0:
        print(f"{key} is held by another worker")
        return 2
    print(f"locked {key} as {holder} with fencing token {token}")

    beat = Heartbeat(r, key, holder, token, args.ttl, args.ttl / 3)
    beat.start()
    # The job itself: here, just waiting. A real job passes `token` to the
    # systems it writes to, which reject writes with an older token.
    beat.lost.wait(args.work)
    beat.stop()
    if beat.lost.is_set():
        return 3

    released = r.execute_command("RESERVE.RELEASE", key, holder, "TOKEN", token)
    print(f"done after {beat.renewals} renewals; released={released}")
    return 0 if released == 1 else 3


if __name__ == "__main__":
    sys.exit(main())
