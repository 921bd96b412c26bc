#!/usr/bin/env bash
# Boot-to-command-exit of two podvm builds in the same L1, interleaved, N runs each (e.g. main's
# and a branch's, before/after a change); prints medians, the ratio B/A and each one's memory
# figures. Both use OUT_B's kernel and agent (the wire between podvm and its agent must match).
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
"$here/tests/nested/l1.sh" -t 1500 "$payload" "$work/results" -- "sh /payload/boot-ab-inner.sh $runs"
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
PY
