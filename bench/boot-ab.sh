#!/usr/bin/env bash
# Boot-to-command-exit of two podvm builds in the same L1, interleaved, N runs each (e.g. main's
# and a branch's, before/after a change); prints medians, the ratio B/A and each one's memory
# figures. Both use OUT_B's kernel and agent (the wire between podvm and its agent must match).
# With BOOT_AB_TRACE=1, B runs with PODVM_TRACE=1 (src/vmm/process/trace.rs) and the median
# time of each step after the VMM process's spawn is printed.
# Usage: bench/boot-ab.sh PODVM_A OUT_B [RUNS]
set -euo pipefail
podvm_a=${1:?usage: boot-ab.sh PODVM_A OUT_B [RUNS]}
out=${2:?usage: boot-ab.sh PODVM_A OUT_B [RUNS]}
runs=${3:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
mkdir -p "$work/results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
cp "$podvm_a" "$payload/bin/podvm-a"
cp "$here/bench/boot-ab-inner.sh" "$payload/"
"$here/tests/nested/l1.sh" -t 1500 -s 300 "$payload" "$work/results" -- \
  "BOOT_AB_TRACE=${BOOT_AB_TRACE:-0} sh /payload/boot-ab-inner.sh $runs"
python3 - "$work/results" <<'PY'
import statistics, sys
from pathlib import Path
res = Path(sys.argv[1])
def load(name):
    rows = [l.split() for l in (res / f"{name}.txt").read_text().splitlines() if l.strip()]
    return [int(r[0]) for r in rows if r[1] == "0"], sum(1 for r in rows if r[1] != "0")
(a, fa), (b, fb) = load("podvm-a"), load("podvm")
ma, mb = statistics.median(a), statistics.median(b)
print(f"boot-to-exit, median of {len(a)}/{len(b)} good runs, same L1, interleaved:")
print(f"  A {ma:8.0f} ms  (non-zero exits: {fa})")
print(f"  B {mb:8.0f} ms  (non-zero exits: {fb})")
print(f"  ratio B/A: {mb / ma:.3f}")
for name in ("podvm-a", "podvm"):
    print(f"  {name}: {(res / f'{name}-stats.txt').read_text().strip()}")
# B's trace: per run, each step's time after its `supervisor spawn` mark.
steps, run = {}, None
err = res / "podvm.err"
for line in (err.read_text().splitlines() if err.exists() else []):
    parts = line.split()
    if len(parts) < 4 or parts[0] != "podvm-trace:":
        continue
    step, ms = " ".join(parts[1:-1]), float(parts[-1])
    if step == "supervisor spawn":
        run = ms
    if run is not None:
        steps.setdefault(step, []).append(ms - run)
for step, times in sorted(steps.items(), key=lambda kv: statistics.median(kv[1])):
    print(f"  trace {step:32s} +{statistics.median(times):7.1f} ms (median of {len(times)})")
PY
