#!/usr/bin/env bash
# Pod start rate: `podvm run` of a cached image vs `podvm boot` of the same root tree (the pod
# bookkeeping: manifest, overlay, logs, state) vs QEMU `-M microvm` booting the same kernel and
# initramfs, all in the same L1, interleaved, N runs each. For the two podvm paths it records the
# time to the app's first output line and to podvm's exit; QEMU's agent talks over a serial file,
# so for it only the exit is measured. Prints medians and ratios.
# Usage: bench/pods.sh OUT_DIR [RUNS]
set -euo pipefail
out=${1:?usage: pods.sh OUT_DIR [RUNS]}
runs=${2:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
mkdir -p "$work/results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
"$here/scripts/demo-image.sh" "$payload/demo" >/dev/null
cp "$here/bench/pods-inner.sh" "$payload/"
qemu=$(command -v qemu-system-x86_64)
"$here/tests/nested/l1.sh" -m 3072 -t 3000 -b "$qemu" -b /usr/share/qemu -b /usr/share/seabios \
  "$payload" "$work/results" -- "sh /payload/pods-inner.sh $runs $qemu"
python3 "$here/bench/pods-summarize.py" "$work/results"
