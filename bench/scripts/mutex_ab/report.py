#!/usr/bin/env python3
"""Turn results.json (from ab.py) into markdown tables: medians, min-max, NEW/OLD ratios."""
import json
import os
import statistics as st
import sys

R = json.load(open(sys.argv[1]))
med = st.median


def rng(xs, fmt="{:.0f}"):
    return (fmt + "–" + fmt).format(min(xs), max(xs))


if R["callgrind"]:
    print("## 1. Instructions per command (callgrind, N=%s per phase, %d server runs per build)\n"
          % (R["callgrind"]["old"]["LOCK"][0]["n"], len(R["callgrind"]["old"]["LOCK"])))
    metrics = [("total_per_cmd", "whole process / cmd"),
               ("call_per_cmd", "call() incl. / cmd"),
               ("handler_incl_per_cmd", "command handler incl. / cmd"),
               ("module_self_per_cmd", "self Ir inside the .so / cmd")]
    print("| command | metric | OLD median (min–max) | NEW median (min–max) | NEW−OLD | NEW/OLD |")
    print("|---|---|---|---|---|---|")
    for ph in ["LOCK", "RENEW", "RELEASE", "SETNX", "EXPIRE", "DEL"]:
        for m, label in metrics:
            o = [x[m] for x in R["callgrind"]["old"][ph]]
            n = [x[m] for x in R["callgrind"]["new"][ph]]
            print(f"| {ph} | {label} | {med(o):.0f} ({rng(o)}) | {med(n):.0f} ({rng(n)}) | "
                  f"{med(n) - med(o):+.0f} | {med(n) / med(o):.4f} |")
    print("\nhandler = reservation::commands::{lock,renew,release}_command for module commands, "
          "setCommand / expireCommand / delCommand for the references (inclusive: includes the "
          "Redis module-API work the handler triggers).\n")

if R["throughput"]:
    print("## 2. Throughput (redis-benchmark, requests/s, %d rounds, ABBA order)\n"
          % len(R["throughput"]["LOCK_P16"]["old"]))
    print("| test | OLD median (min–max) | NEW median (min–max) | NEW/OLD (medians) | "
          "per-round NEW/OLD median (min–max) |")
    print("|---|---|---|---|---|")
    for t, v in R["throughput"].items():
        o, n = v["old"], v["new"]
        pr = [b / a for a, b in zip(o, n)]
        print(f"| {t} | {med(o):.0f} ({rng(o)}) | {med(n):.0f} ({rng(n)}) | {med(n) / med(o):.3f} | "
              f"{med(pr):.3f} ({rng(pr, '{:.3f}')}) |")

if R["memory"]:
    print("\n## 3. Memory per held key (%s keys, 28-byte holder, TTL 1800, %d reps)\n"
          % (R["memory"]["old"]["LOCK"][0]["dbsize"], len(R["memory"]["old"]["LOCK"])))
    print("| server | workload | used_memory Δ / key, median (min–max) | RSS Δ / key median "
          "| MEMORY USAGE one key |")
    print("|---|---|---|---|---|")
    for srv in ["old", "new", "plain"]:
        for wl, xs in R["memory"][srv].items():
            um = [x["used_memory_delta_per_key"] for x in xs]
            rss = [x["rss_delta_per_key"] for x in xs]
            mu = sorted(set(x["memory_usage_one_key"] for x in xs))
            print(f"| {srv} | {wl} | {med(um):.2f} ({rng(um, '{:.2f}')}) | {med(rss):.1f} | "
                  f"{', '.join(map(str, mu))} |")
print("\nmeta:", json.dumps(R["meta"]))

# module -> Redis API calls per command (deterministic; from the first OLD and NEW dump)
import subprocess, collections
if R["callgrind"]:
    print("\n## Module→Redis API calls per command (first OLD / NEW callgrind dump)\n")
    for ph in ["LOCK", "RENEW", "RELEASE"]:
        t = {}
        for v in ("old", "new"):
            out = subprocess.run(["python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cgcalls.py"),
                                  R["callgrind"][v][ph][0]["dump"], str(R["callgrind"][v][ph][0]["n"])],
                                 capture_output=True, text=True).stdout
            t[v] = {ln.split()[1]: float(ln.split()[0]) for ln in out.splitlines() if ln.strip()}
        diff = {k: t["new"].get(k, 0) - t["old"].get(k, 0) for k in set(t["old"]) | set(t["new"])}
        tot = {v: sum(t[v].values()) for v in t}
        chg = ", ".join(f"{k} {d:+.0f}" for k, d in sorted(diff.items()) if abs(d) >= 0.5) or "none"
        print(f"- {ph}: OLD {tot['old']:.0f} calls, NEW {tot['new']:.0f} calls; changes: {chg}")
