#!/usr/bin/env python3
"""The chart of docs/benchmarks.md's "mutex at the physical limit" section.

Reads the reports in bench/results/mutex-limit/ (written by `make bench`
sections 3 and 5 and bench/scripts/mutex_ab; see that section for how they
were made) and draws, for each target of the issue, the measure before and
after divided by its target, so that 1 is the target and a bar below the
line meets it. Writes an SVG (no plotting library needed):

    python3 bench/scripts/mutex_limit_chart.py [DIR] [OUT.svg]
"""
import html
import math
import re
import statistics
import sys
from pathlib import Path

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/mutex-limit")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else DIR / "chart.svg")


def text(name):
    return (DIR / name).read_text()


def ms(value):
    """'1.62 ms' or '113 µs' as milliseconds."""
    number, unit = value.split()
    return float(number) * (0.001 if unit == "µs" else 1.0)


def expiry(name, other_keys):
    for line in text(name).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == ["RESERVE.WAIT", other_keys]:
            return ms(cells[4]), ms(cells[5])  # p50, p99
    raise SystemExit(f"{name}: no RESERVE.WAIT row for {other_keys} other keys")


def memory(build):
    rows = {}
    for line in text("mutex-ab-callgrind-memory.md").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == build and cells[1] in ("LOCK", "SET_EX"):
            rows[cells[1]] = float(cells[2].split()[0])
    return rows["LOCK"] / rows["SET_EX"]


def target_ratio(names, label):
    """The median over rounds of a target row's measured ratio ('0.93x')."""
    values = []
    for name in names:
        for line in text(name).splitlines():
            if line.startswith("| " + label + " |") or line.startswith("| " + label + ","):
                values.append(float(re.findall(r"([0-9.]+)x", line.split("|")[3])[-1]))
    if not values:
        raise SystemExit(f"no row {label!r}")
    return statistics.median(values)


OLD = ["quick-old-1.md", "quick-old-2.md"]
NEW = ["quick-new-1.md", "quick-new-2.md"]
LOCK_P1 = "RESERVE.LOCK vs `SET NX EX`, free key, pipeline 1"
LOCK_P16 = "RESERVE.LOCK vs `SET NX EX`, free key, pipeline 16"
RENEW = "RESERVE.RENEW vs Lua compare-and-pexpire"
RELEASE = "RESERVE.RELEASE vs Lua compare-and-delete"
HANDOFF = "WAIT handoff p99 vs BLPOP signal list p99, 1 waiter"
MEM32 = "memory per reservation vs plain `SET k v EX` key"

old_p50, old_p99 = expiry("expiry-before.md", "0")
new_p50, new_p99 = expiry("expiry-after.md", "0")

# (label, before, after, target, lower_is_better)
ROWS = [
    ("memory, 28-byte holder (<= 1.15x SET)", memory("old"), memory("new"), 1.15, True),
    ("memory, 32-byte holder (<= 1.15x SET)", target_ratio(OLD, MEM32), target_ratio(NEW, MEM32), 1.15, True),
    ("expiry to grant p50 (<= 0.5 ms)", old_p50, new_p50, 0.5, True),
    ("expiry to grant p99 (<= 1 ms)", old_p99, new_p99, 1.0, True),
    ("LOCK vs SET NX EX, pipeline 1 (>= 0.95x)", target_ratio(OLD, LOCK_P1), target_ratio(NEW, LOCK_P1), 0.95, False),
    ("LOCK vs SET NX EX, pipeline 16 (>= 0.95x)", target_ratio(OLD, LOCK_P16), target_ratio(NEW, LOCK_P16), 0.95, False),
    ("RENEW vs Lua (>= 2x)", target_ratio(OLD, RENEW), target_ratio(NEW, RENEW), 2.0, False),
    ("RELEASE vs Lua (>= 2x)", target_ratio(OLD, RELEASE), target_ratio(NEW, RELEASE), 2.0, False),
    ("handoff p99 vs BLPOP (<= 0.5x)", target_ratio(OLD, HANDOFF), target_ratio(NEW, HANDOFF), 0.5, True),
]


def score(value, target, lower_is_better):
    return value / target if lower_is_better else target / value


W, ROW_H, LEFT, RIGHT, TOP = 980, 46, 330, 60, 70
H = TOP + ROW_H * len(ROWS) + 50
LO, HI = 0.1, 10.0  # log scale of measure / target


def x_of(v):
    v = min(max(v, LO), HI)
    return LEFT + (W - LEFT - RIGHT) * (math.log10(v) - math.log10(LO)) / (
        math.log10(HI) - math.log10(LO)
    )


out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
    'font-family="DejaVu Sans, Arial, sans-serif" font-size="13">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="17">The mutex against its '
    "targets: measure / target, before (grey) and after (blue)</text>",
    f'<text x="{W / 2}" y="44" text-anchor="middle" fill="#555">log scale; 1 = the target; '
    "a bar that ends left of the line meets it</text>",
]
for tick in (0.1, 0.2, 0.5, 1, 2, 5, 10):
    x = x_of(tick)
    style = 'stroke="#d62728" stroke-width="2"' if tick == 1 else 'stroke="#ddd"'
    out.append(f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{H - 40}" {style}/>')
    out.append(f'<text x="{x:.1f}" y="{H - 22}" text-anchor="middle">{tick:g}</text>')
for i, (label, before, after, target, lower) in enumerate(ROWS):
    y = TOP + i * ROW_H
    out.append(f'<text x="{LEFT - 10}" y="{y + 22}" text-anchor="end">{html.escape(label)}</text>')
    for j, (value, color) in enumerate(((before, "#9a9a9a"), (after, "#1f77b4"))):
        s = score(value, target, lower)
        x0, x1 = x_of(LO), x_of(s)
        yy = y + 6 + j * 17
        out.append(f'<rect x="{x0:.1f}" y="{yy}" width="{x1 - x0:.1f}" height="14" fill="{color}"/>')
        out.append(f'<text x="{x1 + 4:.1f}" y="{yy + 12}" fill="#333">{value:.3g}</text>')
out.append("</svg>")
OUT.write_text("\n".join(out) + "\n")
print(f"wrote {OUT}")
for label, before, after, target, lower in ROWS:
    print(f"{label}: {before:.3g} -> {after:.3g} (target {target:g})")
