#!/usr/bin/env bash
# virtio-fs throughput: sequential write (fsync'd), sequential read (guest cache dropped, then
# again from the guest's cache), an untar of a small tree + sync, and a metadata walk (find and
# ls -lR, guest caches dropped) over a tree of META empty files, inside the guest on a shared directory: podvm's in-process virtio-fs vs
# QEMU -M microvm + virtiofsd (vhost-user), same kernel, agent and command, inside the same L1
# (nested KVM), interleaved, RUNS runs each; prints medians in ms and MB/s.
# Needs virtiofsd: VIRTIOFSD=/path/to/virtiofsd (e.g. from `cargo install virtiofsd`); without it
# only podvm is measured.
# Usage: bench/fs.sh OUT_DIR [RUNS] [MIB] [FILES] [META]   (raw results kept in $BENCH_RESULTS if
# set; the summary, one entry per case with the ratio podvm/peer, in bench/results/fs.json)
set -euo pipefail
out=${1:?usage: fs.sh OUT_DIR [RUNS] [MIB] [FILES] [META]}
runs=${2:-5}
mib=${3:-128}
files=${4:-1000}
meta=${5:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
results=${BENCH_RESULTS:-$work/results}
mkdir -p "$results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
mkdir -p "$payload/rootfs/proc" "$payload/rootfs/sys" "$payload/rootfs/dev"
# The tree to untar: FILES files of 1..8 KiB in 20 directories.
tree=$work/tree; mkdir -p "$tree"
for d in $(seq 1 20); do
  mkdir -p "$tree/d$d"
  for f in $(seq 1 $(( files / 20 ))); do head -c $(( (f % 8 + 1) * 1024 )) /dev/urandom > "$tree/d$d/f$f"; done
done
tar cf "$payload/rootfs/tree.tar" -C "$tree" .
# The tree to walk: META empty files in 100 directories, already in the share.
for d in $(seq 1 100); do
  mkdir -p "$payload/rootfs/meta/d$d"
  (cd "$payload/rootfs/meta/d$d" && seq 1 $(( meta / 100 )) | sed 's/^/f/' | xargs touch)
done
cp "$here/bench/fs-inner.sh" "$payload/"
qemu=$(command -v qemu-system-x86_64)
extra=(-b "$qemu" -b /usr/share/qemu -b /usr/share/seabios)
vfsd=${VIRTIOFSD:-}
[ -n "$vfsd" ] && extra+=(-b "$vfsd")
# -s: end an L1 whose console stays silent 5 minutes (a livelocked L1) instead of at -t.
"$here/tests/nested/l1.sh" -m 4096 -t 3000 -s 300 "${extra[@]}" \
  "$payload" "$results" -- "sh /payload/fs-inner.sh $runs $mib $qemu ${vfsd:-none}"
mkdir -p "$here/bench/results"
python3 "$here/bench/fs-summarize.py" "$results" "$mib" "$files" "$meta" "$here/bench/results/fs.json"
