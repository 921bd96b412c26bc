#!/usr/bin/env bash
# Boot-to-command-exit of `podvm boot` vs QEMU `-M microvm` booting the same kernel, initramfs and
# command line, both inside the same L1 (nested KVM), interleaved, N runs each; prints medians and
# the ratio, and podvm's memory overhead (process RSS minus guest RAM touched).
# Usage: bench/boot.sh OUT_DIR [RUNS]
set -euo pipefail
out=${1:?usage: boot.sh OUT_DIR [RUNS]}
runs=${2:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
mkdir -p "$work/results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
cp "$here/bench/boot-inner.sh" "$payload/"
qemu=$(command -v qemu-system-x86_64)
"$here/tests/nested/l1.sh" -t 3000 -b "$qemu" -b /usr/share/qemu -b /usr/share/seabios \
  "$payload" "$work/results" -- "sh /payload/boot-inner.sh $runs $qemu"
python3 "$here/bench/summarize.py" "$work/results"
