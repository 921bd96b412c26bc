# Sourced by the bench/*.sh drivers (bash, on the host).
# bench_payload OUT_DIR PAYLOAD_DIR: the L1 payload every benchmark starts from: podvm, the guest
# kernel and agent in the out/ layout, a busybox root tree at rootfs/, and bench/l1-lib.sh.
bench_payload() {
  local out=$1 payload=$2 here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mkdir -p "$payload/bin" "$payload/lib/podvm"
  cp "$out/bin/podvm" "$payload/bin/"
  cp "$out/lib/podvm/vmlinux" "$out/lib/podvm/podvm-agent" "$payload/lib/podvm/"
  "$here/scripts/busybox-tree.sh" "$payload/rootfs"
  cp "$here/bench/l1-lib.sh" "$payload/"
}
