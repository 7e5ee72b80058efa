#!/usr/bin/env python3
"""A/B benchmark of redis-reservation: OLD vs NEW module build, exclusive mutex path.

Reproduces everything in REPORT.md:
  1. callgrind instruction counts per command (LOCK / RENEW / RELEASE, plus SET NX EX,
     EXPIRE, DEL references on the same servers)
  2. redis-benchmark throughput, OLD/NEW alternated (ABBA), several rounds
  3. memory per held reservation (used_memory delta / 200000 + MEMORY USAGE)

Compares two builds of the module, given as MUTEX_AB_OLD and MUTEX_AB_NEW
(paths to libreservation.so; copy them first so a rebuild cannot change
them mid-run). Writes only under MUTEX_AB_DIR (default: a new temp dir).
Starts its own servers on free loopback ports (never 6379) in temp dirs and
shuts them down (by pid) at the end. Needs redis-server, redis-benchmark,
valgrind and callgrind_annotate.
Usage: MUTEX_AB_OLD=old.so MUTEX_AB_NEW=new.so python3 ab.py [--quick]
       [--skip-cg] [--skip-tp] [--skip-mem] [--tp-rounds=N] [--tag=-x]
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.environ.get("MUTEX_AB_DIR") or tempfile.mkdtemp(prefix="mutex-ab-")
for _name in ("old", "new"):
    shutil.copy(os.environ[f"MUTEX_AB_{_name.upper()}"], f"{BENCH}/{_name}.so")
MODS = {"old": f"{BENCH}/old.so", "new": f"{BENCH}/new.so"}
HOLDER = b"host-1-worker-12345-6f1d2c3b"  # 28 bytes
TTL = b"1800"
QUICK = "--quick" in sys.argv

CG_N = 2000 if QUICK else 20000          # commands per callgrind phase
CG_REPS = 1 if QUICK else 4
TP_ROUNDS = 2 if QUICK else 10          # rounds; each round runs OLD and NEW once (ABBA order)
MEM_N = 20000 if QUICK else 200000
MEM_REPS = 1 if QUICK else 3

RESULTS = {"meta": {}, "callgrind": {}, "throughput": {}, "memory": {}}
for _a in sys.argv:
    if _a.startswith("--tp-rounds="):
        TP_ROUNDS = int(_a.split("=", 1)[1])
SUFFIX = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--tag=")), "")
OUT_JSON = f"{BENCH}/results{'-quick' if QUICK else ''}{SUFFIX}.json"
STARTED = []  # (pid, port, dir)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- tiny RESP client
class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    @staticmethod
    def enc(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            d = self.s.recv(1 << 20)
            if not d:
                raise ConnectionError("closed")
            self.buf += d

    def _n(self, n):
        while len(self.buf) < n + 2:
            d = self.s.recv(1 << 20)
            if not d:
                raise ConnectionError("closed")
            self.buf += d
        v, self.buf = self.buf[:n], self.buf[n + 2:]
        return v

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return Exception(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._n(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError(line)

    def cmd(self, *args):
        self.s.sendall(self.enc(*args))
        return self.reply()

    def one_by_one(self, cmds):
        """Send commands strictly one at a time (like redis-benchmark -c 1 -P 1)."""
        out = []
        for c in cmds:
            self.s.sendall(c)
            out.append(self.reply())
        return out

    def pipeline(self, cmds, batch=1000):
        out = []
        for i in range(0, len(cmds), batch):
            chunk = cmds[i:i + batch]
            self.s.sendall(b"".join(chunk))
            out.extend(self.reply() for _ in chunk)
        return out


def info(c, section):
    txt = c.cmd("INFO", section).decode()
    d = {}
    for ln in txt.splitlines():
        if ":" in ln and not ln.startswith("#"):
            k, v = ln.split(":", 1)
            d[k] = v
    return d


# ---------------------------------------------------------------- servers
def free_port(start):
    p = start
    while True:
        if p != 6379:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
                s.close()
                # also make sure nothing listens there
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                except OSError:
                    return p
            except OSError:
                pass
            finally:
                s.close()
        p += 1


def start_server(name, module, port_hint, callgrind=False):
    port = free_port(port_hint)
    d = tempfile.mkdtemp(prefix=f"ab-{name}-", dir=BENCH + "/run")
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", d, "--logfile", f"{d}/log"]
    if module:
        args += ["--loadmodule", module]
    if callgrind:
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/callgrind.out.%p",
                "--dump-instr=no", "--dump-line=no", "--compress-strings=no"] + args
    p = subprocess.Popen(args, stdout=open(f"{d}/stdout", "w"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    STARTED.append((p, port, d))
    t0 = time.time()
    while True:
        try:
            c = Conn(port)
            if c.cmd("PING") == "PONG":
                break
        except OSError:
            pass
        if p.poll() is not None or time.time() - t0 > 180:
            raise RuntimeError(f"server {name} failed to start, see {d}")
        time.sleep(0.2)
    log(f"started {name} pid={p.pid} port={port} dir={d} callgrind={callgrind}")
    return p, port, d, c


def stop_server(entry):
    p, port, d = entry
    if p.poll() is None:
        try:
            c = Conn(port)
            c.s.sendall(Conn.enc("SHUTDOWN", "NOSAVE"))
            c.s.settimeout(60)
            try:
                c.s.recv(100)
            except OSError:
                pass
        except OSError:
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()  # only our own pid
            p.wait()
    log(f"stopped pid={p.pid} port={port} rc={p.returncode}")


def stop_all():
    while STARTED:
        stop_server(STARTED.pop())


def key(i):
    return b"k:%012d" % i  # same shape as redis-benchmark __rand_int__


# ---------------------------------------------------------------- 1. callgrind
def cg_ctl(pid, *opts):
    r = subprocess.run(["callgrind_control", *opts, str(pid)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"callgrind_control {opts}: {r.stdout} {r.stderr}")


ANN_RE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.*?):(.*?)\s+\[(.*)\]\s*$")


def annotate(path, inclusive):
    r = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                        "--threshold=100", path], capture_output=True, text=True, timeout=600)
    rows = []
    for ln in r.stdout.splitlines():
        m = ANN_RE.match(ln)
        if m:
            rows.append((int(m.group(1).replace(",", "")), m.group(3), m.group(4)))
    return rows


def cg_totals(path):
    with open(path) as f:
        for ln in f:
            if ln.startswith("totals:") or ln.startswith("summary:"):
                return int(ln.split()[1])
    raise RuntimeError("no totals in " + path)


HANDLERS = {
    # The first release's path, then the engine/glue layout's.
    "LOCK": ("reservation::commands::lock_command", "reservation::glue::commands::lock_command"),
    "RENEW": ("reservation::commands::renew_command", "reservation::glue::commands::renew_command"),
    "RELEASE": ("reservation::commands::release_command", "reservation::glue::commands::release_command"),
    "SETNX": "setCommand",
    "EXPIRE": "expireCommand",
    "DEL": "delCommand",
}


def analyse_dump(path, phase, n):
    tot = cg_totals(path)
    inc = annotate(path, True)
    exc = annotate(path, False)
    incd = {}
    for ir, fn, obj in inc:
        incd[fn] = incd.get(fn, 0) + ir
    mod_self = sum(ir for ir, fn, obj in exc if obj.endswith(("old.so", "new.so")))
    res = {
        "n": n,
        "total_per_cmd": tot / n,
        "processCommand_per_cmd": incd.get("processCommand", 0) / n,
        "call_per_cmd": incd.get("call", 0) / n,
        "dispatcher_per_cmd": incd.get("RedisModuleCommandDispatcher", 0) / n,
        "handler_incl_per_cmd": sum(incd.get(h, 0) for h in
                                    (HANDLERS[phase] if isinstance(HANDLERS[phase], tuple)
                                     else (HANDLERS[phase],))) / n,
        "module_self_per_cmd": mod_self / n,
        "serverCron_total": incd.get("serverCron", 0),
    }
    # top module functions (self) for the report
    top = sorted(((ir, fn) for ir, fn, obj in exc if obj.endswith(("old.so", "new.so"))),
                 reverse=True)[:12]
    res["module_top_self"] = [(fn, ir / n) for ir, fn in top]
    return res


def cg_run_phase(pid, d, conn, phase, cmds, expect):
    cg_ctl(pid, "-z")
    replies = conn.one_by_one(cmds)
    before = set(os.listdir(d))
    cg_ctl(pid, "-d", phase)
    new = None
    for _ in range(600):
        new = [f for f in set(os.listdir(d)) - before if f.startswith("callgrind.out")]
        if new:
            break
        time.sleep(0.1)
    path = os.path.join(d, sorted(new)[-1])
    time.sleep(0.5)
    bad = [r for r in replies if not expect(r)]
    if bad:
        raise RuntimeError(f"{phase}: {len(bad)} unexpected replies, e.g. {bad[:3]}")
    r = analyse_dump(path, phase, len(cmds))
    r["dump"] = path
    return r


def callgrind_part():
    log("== 1. callgrind")
    n = CG_N
    keys = [key(i) for i in range(n)]
    phases = [
        ("LOCK", [Conn.enc("RESERVE.LOCK", k, HOLDER, TTL) for k in keys],
         lambda r: isinstance(r, int) and r > 0, True),
        ("RENEW", [Conn.enc("RESERVE.RENEW", k, HOLDER, TTL) for k in keys],
         lambda r: r == 1, False),
        ("RELEASE", [Conn.enc("RESERVE.RELEASE", k, HOLDER) for k in keys],
         lambda r: r == 1, False),
        ("SETNX", [Conn.enc("SET", k, HOLDER, "NX", "EX", TTL) for k in keys],
         lambda r: r == "OK", True),
        ("EXPIRE", [Conn.enc("EXPIRE", k, TTL) for k in keys], lambda r: r == 1, False),
        ("DEL", [Conn.enc("DEL", k) for k in keys], lambda r: r == 1, False),
    ]
    out = {}
    for rep in range(CG_REPS):
        order = ["old", "new"] if rep % 2 == 0 else ["new", "old"]
        for v in order:
            p, port, d, c = start_server(f"cg-{v}", MODS[v], 7420, callgrind=True)
            # warm-up (not measured): touch every command path once
            c.cmd("RESERVE.LOCK", "warm", HOLDER, TTL)
            c.cmd("RESERVE.RENEW", "warm", HOLDER, TTL)
            c.cmd("RESERVE.RELEASE", "warm", HOLDER)
            c.cmd("SET", "warm", "v", "NX", "EX", TTL)
            c.cmd("EXPIRE", "warm", TTL)
            c.cmd("DEL", "warm")
            for phase, cmds, expect, flush in phases:
                if flush:
                    c.cmd("FLUSHALL")
                t0 = time.time()
                r = cg_run_phase(p.pid, d, c, phase, cmds, expect)
                r["wall_s"] = time.time() - t0
                out.setdefault(v, {}).setdefault(phase, []).append(r)
                log(f"  {v} rep{rep} {phase}: total/cmd={r['total_per_cmd']:.0f} "
                    f"call/cmd={r['call_per_cmd']:.0f} handler/cmd={r['handler_incl_per_cmd']:.0f} "
                    f"module-self/cmd={r['module_self_per_cmd']:.0f} ({r['wall_s']:.1f}s)")
            stop_server(STARTED.pop())
    RESULTS["callgrind"] = out
    save()


# ---------------------------------------------------------------- 2. throughput
TP_TESTS = [
    # name, extra args, command
    ("LOCK_P16", ["-c", "50", "-P", "16", "-n", "200000", "-r", "10000000"],
     ["RESERVE.LOCK", "k:__rand_int__", HOLDER.decode(), "1800"]),
    ("LOCK_P1", ["-c", "50", "-P", "1", "-n", "50000", "-r", "10000000"],
     ["RESERVE.LOCK", "k:__rand_int__", HOLDER.decode(), "1800"]),
    ("SETNX_P16", ["-c", "50", "-P", "16", "-n", "200000", "-r", "10000000"],
     ["SET", "k:__rand_int__", HOLDER.decode(), "NX", "EX", "1800"]),
]


def redis_bench(port, extra, command):
    r = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "--csv", *extra,
                        *command], capture_output=True, text=True, timeout=300)
    for ln in r.stdout.splitlines():
        if ln.startswith('"') and not ln.startswith('"test"'):
            return float(ln.split('","')[1])
    raise RuntimeError("redis-benchmark output: " + r.stdout + r.stderr)


def throughput_part():
    log("== 2. throughput")
    srv = {}
    for v in ("old", "new"):
        p, port, d, c = start_server(f"tp-{v}", MODS[v], 7430)
        srv[v] = (port, c)
    res = {t[0]: {"old": [], "new": [], "order": []} for t in TP_TESTS}
    for rnd in range(TP_ROUNDS):
        # ABBA: round 0 old,new ; round 1 new,old ; ...
        order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
        for name, extra, command in TP_TESTS:
            for v in order:
                port, c = srv[v]
                c.cmd("FLUSHALL")
                rps = redis_bench(port, extra, command)
                res[name][v].append(rps)
                res[name]["order"].append(v)
                log(f"  round {rnd} {name} {v}: {rps:.0f} rps")
    RESULTS["throughput"] = res
    for v in ("old", "new"):
        srv[v][1].cmd("FLUSHALL")
    stop_all()
    save()


# ---------------------------------------------------------------- 3. memory
def memory_part():
    log("== 3. memory")
    n = MEM_N
    keys = [key(i) for i in range(n)]
    servers = {}
    for v, mod in (("old", MODS["old"]), ("new", MODS["new"]), ("plain", None)):
        p, port, d, c = start_server(f"mem-{v}", mod, 7440)
        servers[v] = (p, c)
    workloads = {
        "LOCK": ([Conn.enc("RESERVE.LOCK", k, HOLDER, TTL) for k in keys],
                 lambda r: isinstance(r, int) and r > 0),
        "SET_EX": ([Conn.enc("SET", k, HOLDER, "EX", TTL) for k in keys], lambda r: r == "OK"),
    }
    res = {}
    for rep in range(MEM_REPS):
        for v in (["old", "new", "plain"] if rep % 2 == 0 else ["new", "old", "plain"]):
            p, c = servers[v]
            for wl in (["LOCK", "SET_EX"] if v != "plain" else ["SET_EX"]):
                cmds, expect = workloads[wl]
                c.cmd("FLUSHALL")
                time.sleep(0.2)
                m0 = info(c, "memory")
                rss0 = int(m0["used_memory_rss"])
                replies = c.pipeline(cmds)
                bad = [r for r in replies if not expect(r)]
                if bad:
                    raise RuntimeError(f"mem {v} {wl}: {len(bad)} bad replies e.g. {bad[:3]}")
                m1 = info(c, "memory")
                dbsize = c.cmd("DBSIZE")
                mu = c.cmd("MEMORY", "USAGE", key(12345), "SAMPLES", "0")
                r = {
                    "dbsize": dbsize,
                    "used_memory_delta_per_key": (int(m1["used_memory"]) - int(m0["used_memory"])) / n,
                    "rss_delta_per_key": (int(m1["used_memory_rss"]) - rss0) / n,
                    "memory_usage_one_key": mu,
                }
                res.setdefault(v, {}).setdefault(wl, []).append(r)
                log(f"  rep{rep} {v} {wl}: used_memory/key={r['used_memory_delta_per_key']:.2f} "
                    f"rss/key={r['rss_delta_per_key']:.1f} MEMORY USAGE={mu} dbsize={dbsize}")
            c.cmd("FLUSHALL")
    RESULTS["memory"] = res
    stop_all()
    save()


def save():
    with open(OUT_JSON, "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)


def main():
    os.makedirs(BENCH + "/run", exist_ok=True)
    for v, m in MODS.items():
        RESULTS["meta"][v] = subprocess.run(["sha256sum", m], capture_output=True,
                                            text=True).stdout.split()[0]
    RESULTS["meta"]["redis"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                              text=True).stdout.strip()
    RESULTS["meta"]["loadavg_start"] = open("/proc/loadavg").read().strip()
    try:
        if "--skip-cg" not in sys.argv:
            callgrind_part()
        if "--skip-tp" not in sys.argv:
            throughput_part()
        if "--skip-mem" not in sys.argv:
            memory_part()
    finally:
        stop_all()
        RESULTS["meta"]["loadavg_end"] = open("/proc/loadavg").read().strip()
        save()
    log("results in", OUT_JSON)


if __name__ == "__main__":
    main()
