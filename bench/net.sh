#!/usr/bin/env bash
# Guest network throughput: a MIB MiB download by the guest's busybox wget from busybox httpd on
# the host side of its tap, in the same L1 (nested KVM), interleaved, RUNS runs each:
#   podvm virtio-net on vhost-net, podvm with its userspace backend (PODVM_NET_BACKEND=userspace),
#   QEMU -M microvm with virtio-net-device on vhost-net (same kernel, agent, tap and command),
#   and a plain network namespace over a veth pair (no VM: the ceiling).
# Prints medians in ms and MB/s and the ratios.
# Usage: bench/net.sh OUT_DIR [RUNS] [MIB]   (raw results kept in $BENCH_RESULTS if set)
set -euo pipefail
out=${1:?usage: net.sh OUT_DIR [RUNS] [MIB]}
runs=${2:-5}
mib=${3:-64}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
results=${BENCH_RESULTS:-$work/results}
mkdir -p "$results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
cp "$here/bench/net-inner.sh" "$payload/"
qemu=$(command -v qemu-system-x86_64 || echo none)
extra=(-b /usr/sbin/ip)
[ "$qemu" != none ] && extra+=(-b "$qemu" -b /usr/share/qemu -b /usr/share/seabios)
"$here/tests/nested/l1.sh" -m 4096 -t 3000 "${extra[@]}" \
  "$payload" "$results" -- "sh /payload/net-inner.sh $runs $mib $qemu"
python3 "$here/bench/net-summarize.py" "$results" "$mib"
