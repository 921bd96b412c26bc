#!/usr/bin/env python3
"""Prints medians and ratios from bench/pods-inner.sh results."""
import statistics
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    rows = [line.split() for line in (results / f"{name}.txt").read_text().splitlines() if line.strip()]
    failed = sum(1 for row in rows if row[2] != "0")
    return [int(r[0]) for r in rows], [int(r[1]) for r in rows], failed


run_first, run_exit, run_failed = load("run")
boot_first, boot_exit, boot_failed = load("boot")
_, qemu_exit, qemu_failed = load("qemu")
exits = (results / "qemu-agent-exits.txt").read_text().split()
if sum(1 for count in exits if count == "1") != len(qemu_exit):
    sys.exit("some QEMU runs did not get the agent's exit report: not comparable")
med = statistics.median
print(f"pod start, median of {len(run_exit)} runs each, same L1, interleaved (ms):")
print(f"  podvm run (cached image):  first output {med(run_first) / 1000:8.1f}  exit {med(run_exit) / 1000:8.1f}"
      f"  (non-zero exits: {run_failed})")
print(f"  podvm boot (same tree):    first output {med(boot_first) / 1000:8.1f}  exit {med(boot_exit) / 1000:8.1f}"
      f"  (non-zero exits: {boot_failed})")
print(f"  qemu -M microvm:                                exit {med(qemu_exit) / 1000:8.1f}"
      f"  (non-zero exits: {qemu_failed})")
print(f"  ratio run/boot, first output: {med(run_first) / med(boot_first):6.3f}  (pod bookkeeping)")
print(f"  ratio run/boot, exit:         {med(run_exit) / med(boot_exit):6.3f}")
print(f"  ratio run/qemu, exit:         {med(run_exit) / med(qemu_exit):6.3f}")
print(f"  ratio boot/qemu, exit:        {med(boot_exit) / med(qemu_exit):6.3f}")
