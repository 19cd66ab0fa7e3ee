#!/usr/bin/env python3
"""Times the cluster benchmarks (failover.sh, join.sh) collect from their tests' output.

    benches/times.py FILE 'NAME=REGEX' ...

Each REGEX has two groups, a number and its unit (ms or s). Prints, per NAME, how many runs
measured it and their median, p95 (nearest rank), worst and best, in seconds.
"""
import math
import re
import statistics
import sys

text = open(sys.argv[1]).read()
for spec in sys.argv[2:]:
    name, pattern = spec.split("=", 1)
    values = [float(v) / 1000 if unit == "ms" else float(v) for v, unit in re.findall(pattern, text)]
    if not values:
        print(f"{name}: no measurement")
        continue
    p95 = sorted(values)[math.ceil(0.95 * len(values)) - 1]
    print(f"{name}: runs {len(values)}, median {statistics.median(values):.2f} s, p95 {p95:.2f} s, "
          f"worst {max(values):.2f} s, best {min(values):.2f} s")
