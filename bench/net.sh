#!/usr/bin/env bash
# Guest network throughput: a MIB MiB download by the guest's busybox wget from busybox httpd on
# the host side of its tap (podvm virtio-net with vhost-net, and with the userspace backend), vs
# the same download from a plain network namespace over a veth pair, all inside the same L1
# (nested KVM), interleaved, RUNS runs each; prints medians in ms and MB/s and the ratios.
# Usage: bench/net.sh OUT_DIR [RUNS] [MIB]   (raw results kept in $BENCH_RESULTS if set)
set -euo pipefail
out=${1:?usage: net.sh OUT_DIR [RUNS] [MIB]}
runs=${2:-5}
mib=${3:-64}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
results=${BENCH_RESULTS:-$work/results}
mkdir -p "$payload/bin" "$payload/lib/podvm" "$results"
cp "$out/bin/podvm" "$payload/bin/"
cp "$out/lib/podvm/vmlinux" "$out/lib/podvm/podvm-agent" "$payload/lib/podvm/"
"$here/scripts/busybox-tree.sh" "$payload/rootfs"
cp "$here/bench/net-inner.sh" "$payload/"
"$here/tests/nested/l1.sh" -m 4096 -t 3000 -b /usr/sbin/ip \
  "$payload" "$results" -- "sh /payload/net-inner.sh $runs $mib"
python3 "$here/bench/net-summarize.py" "$results" "$mib"
