#!/usr/bin/env python3
"""Prints medians (ms, MB/s) of bench/fs-inner.sh results for podvm and, if run, QEMU+virtiofsd,
and writes them as a summary JSON: a list with one entry per case,
{"name", "podvm", "peer", "ratio", "runs", "spread"}: medians in ms, ratio = podvm / peer (lower
is better), runs = the runs of each side, spread = the larger of the two sides' (max - min) /
median. A case is left out where a side has no valid run (negative time; for the metadata walk,
also an entry count other than the tree's).

Usage: fs-summarize.py RESULTS_DIR MIB FILES META [SUMMARY_JSON]
"""
import json
import statistics
import sys
from pathlib import Path

results, mib, files, meta = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary_path = Path(sys.argv[5]) if len(sys.argv) > 5 else None

# (summary name, label, column of the RESULT line, whether MB/s makes sense)
CASES = (
    ("fs-write", f"write {mib} MiB + fsync", 0, True),
    ("fs-read-cold", "read (cold guest cache)", 1, True),
    ("fs-read-warm", "read again (no cache drop)", 3, True),
    ("fs-untar", f"untar {files} files + sync", 2, False),
    ("fs-meta", f"find + ls -lR {meta} files", 4, False),
)


def load(name):
    path = results / f"{name}.txt"
    if not path.exists():
        return []
    rows = [[int(x) for x in line.split()] for line in path.read_text().splitlines() if line.strip()]
    # Centiseconds to ms; the sixth field, if there, is the entries the metadata walk found.
    return [[x * 10 for x in row[:5]] + row[5:] for row in rows]


def spread(values):
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median else 0.0


rows = {name: load(name) for name in ("podvm", "qemu")}
print(f"virtio-fs in the guest, medians in ms (runs: podvm {len(rows['podvm'])}, qemu+virtiofsd {len(rows['qemu'])}):")
summary = []
for key, label, index, rate in CASES:
    line = f"  {label:28}"
    medians, spreads, runs = {}, [], {}
    for name in ("podvm", "qemu"):
        values = [row[index] for row in rows[name] if len(row) > index and row[index] >= 0]
        if key == "fs-meta":
            # A walk that did not find the whole tree (e.g. EMFILE on the host) measured nothing.
            values = [row[index] for row in rows[name]
                      if len(row) > 5 and row[5] == meta + 101 and row[index] >= 0]
        if values:
            medians[name] = statistics.median(values)
            spreads.append(spread(values))
            runs[name] = len(values)
            mbs = f" ({mib / (medians[name] / 1000):6.1f} MB/s)" if rate and medians[name] else ""
            line += f"  {name}: {medians[name]:7.0f}{mbs}"
    if len(medians) == 2:
        ratio = medians["podvm"] / medians["qemu"] if medians["qemu"] else None
        line += f"  ratio podvm/qemu: {ratio:.2f}" if ratio is not None else "  ratio: peer took 0 ms"
        summary.append({
            "name": key,
            "podvm": medians["podvm"],
            "peer": medians["qemu"],
            "ratio": round(ratio, 3) if ratio is not None else None,
            "runs": min(runs.values()),
            "spread": round(max(spreads), 3),
        })
    print(line)
for name in ("podvm", "qemu"):
    found = sorted({row[5] for row in rows[name] if len(row) > 5})
    if found:
        print(f"  entries the metadata walk found under {name}: {found} (expected {meta + 101})")
if summary_path is not None and summary:
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {summary_path}")
if not rows["podvm"]:
    sys.exit("no podvm results: see results/podvm.err")
