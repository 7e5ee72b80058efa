#!/usr/bin/env python3
"""cgcalls.py DUMP N: calls per command from module (.so) functions into Redis (RM_*), from a
callgrind dump written with --compress-strings=no."""
import sys, collections
path, n = sys.argv[1], int(sys.argv[2])
ob = fn = cob = cfn = None
cnt = collections.Counter()
for ln in open(path, errors='replace'):
    if ln.startswith('ob='): ob = ln[3:].strip(); cob = None
    elif ln.startswith('fl=') or ln.startswith('fi=') or ln.startswith('fe='): pass
    elif ln.startswith('fn='): fn = ln[3:].strip(); cob = None
    elif ln.startswith('cob='): cob = ln[4:].strip()
    elif ln.startswith('cfn='): cfn = ln[4:].strip()
    elif ln.startswith('calls='):
        c = int(ln.split()[0][6:])
        tgt_ob = cob or ob
        if ob and ob.endswith(('old.so', 'new.so')) and not tgt_ob.endswith(('old.so', 'new.so')):
            cnt[cfn] += c
        cob = None
for k, v in sorted(cnt.items(), key=lambda x: -x[1]):
    if v / n >= 0.01: print('%7.2f  %s' % (v / n, k))
