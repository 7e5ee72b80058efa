#!/usr/bin/env python3
"""cgdiff.py OLD_DUMP NEW_DUMP N [inclusive yes|no]: per-command Ir per function, NEW-OLD (|diff|>=2)."""
import sys, re, subprocess
sys.path.insert(0, __import__('os').path.dirname(__file__))
from ab import annotate
a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
inc = (sys.argv[4] if len(sys.argv) > 4 else 'yes') == 'yes'
def tab(p):
    d = {}
    for ir, fn, obj in annotate(p, inc):
        k = fn + ' [' + ('module' if obj.endswith(('old.so','new.so')) else obj.rsplit('/',1)[-1]) + ']'
        d[k] = d.get(k, 0) + ir / n
    return d
A, B = tab(a), tab(b)
rows = sorted(set(A) | set(B), key=lambda k: -abs(B.get(k,0) - A.get(k,0)))
print('%10s %10s %8s  %s' % ('old/cmd', 'new/cmd', 'diff', 'function'))
for k in rows:
    d = B.get(k,0) - A.get(k,0)
    if abs(d) >= 2: print('%10.1f %10.1f %+8.1f  %s' % (A.get(k,0), B.get(k,0), d, k))
