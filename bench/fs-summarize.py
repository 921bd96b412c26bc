#!/usr/bin/env python3
"""Prints medians (ms, MB/s) of bench/fs-inner.sh results for podvm and, if run, QEMU+virtiofsd."""
import statistics
import sys
from pathlib import Path

results, mib, files = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def load(name):
    path = results / f"{name}.txt"
    if not path.exists():
        return []
    return [[int(x) * 10 for x in line.split()] for line in path.read_text().splitlines() if line.strip()]


rows = {name: load(name) for name in ("podvm", "qemu")}
print(f"virtio-fs in the guest, medians in ms (runs: podvm {len(rows['podvm'])}, qemu+virtiofsd {len(rows['qemu'])}):")
for label, index in (("write+fsync", 0), ("read (cold guest cache)", 1), (f"untar {files} files", 2)):
    line = f"  {label:24}"
    medians = {}
    for name in ("podvm", "qemu"):
        if rows[name]:
            medians[name] = statistics.median(row[index] for row in rows[name])
            rate = f" ({mib / (medians[name] / 1000):6.1f} MB/s)" if index < 2 and medians[name] else ""
            line += f"  {name}: {medians[name]:7.0f}{rate}"
    if len(medians) == 2 and medians["qemu"]:
        line += f"  ratio podvm/qemu: {medians['podvm'] / medians['qemu']:.2f}"
    print(line)
if not rows["podvm"]:
    sys.exit("no podvm results: see results/podvm.err")
