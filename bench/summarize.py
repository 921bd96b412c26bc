#!/usr/bin/env python3
"""Prints medians and the podvm/QEMU ratio from bench/boot-inner.sh results."""
import json
import statistics
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    rows = [line.split() for line in (results / f"{name}.txt").read_text().split("\n") if line.strip()]
    failed = [row for row in rows if row[1] != "0"]
    return [int(row[0]) for row in rows], failed


podvm, podvm_failed = load("podvm")
qemu, qemu_failed = load("qemu")
exits = [line for line in (results / "qemu-agent-exits.txt").read_text().split() if line.strip()]
qemu_completed = sum(1 for count in exits if count == "1")
if qemu_completed != len(qemu):
    sys.exit(f"only {qemu_completed} of {len(qemu)} QEMU runs got the agent's exit report: not comparable")
p, q = statistics.median(podvm), statistics.median(qemu)
print(f"boot-to-exit, median of {len(podvm)} runs each, same L1, interleaved:")
print(f"  podvm boot:        {p / 1000:8.1f} ms  (non-zero exits: {len(podvm_failed)})")
print(f"  qemu -M microvm:   {q / 1000:8.1f} ms  (non-zero exits: {len(qemu_failed)})")
print(f"  ratio podvm/qemu:  {p / q:8.3f}  (below 1 means podvm is faster)")
stats = (results / "stats.txt").read_text().strip()
if stats:
    figures = json.loads(stats.split("podvm-stats: ", 1)[1])
    print(f"  podvm memory: process RSS {figures['process_rss_kib']} KiB, guest RAM touched "
          f"{figures['guest_resident_kib']} KiB, VMM overhead {figures['vmm_overhead_kib']} KiB")
