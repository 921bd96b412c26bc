#!/usr/bin/env python3
"""Prints medians (ms, MB/s) of bench/net-inner.sh results and the ratios to the veth peer."""
import statistics
import sys
from pathlib import Path

results, mib = Path(sys.argv[1]), int(sys.argv[2])


def load(name):
    path = results / f"{name}.txt"
    if not path.exists():
        return []
    return [int(line) * 10 for line in path.read_text().split() if line.strip()]


rows = {name: load(name) for name in ("vhost", "userspace", "qemu", "veth")}
print(f"{mib} MiB download over HTTP (busybox wget <- httpd), medians in ms:")
medians = {}
for name, values in rows.items():
    if values:
        medians[name] = statistics.median(values)
        rate = mib / (medians[name] / 1000) if medians[name] else float("inf")
        print(f"  {name:10} runs {len(values):2}  {medians[name]:8.0f} ms  {rate:7.1f} MB/s")
for name, peer in (("vhost", "qemu"), ("userspace", "qemu"), ("vhost", "veth"), ("userspace", "veth")):
    if name in medians and medians.get(peer):
        print(f"  ratio podvm {name}/{peer} (time): {medians[name] / medians[peer]:.2f}")
if not medians:
    print("no results; see the .err files next to them")
    sys.exit(1)
