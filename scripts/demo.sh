#!/usr/bin/env bash
# make demo: builds an OCI image locally (busybox from Debian, with umoci), fetches it into
# podvm's content-addressed store, renders its rootfs, and runs a command from it in a microVM.
# On a host whose KVM is PVM (stock guest kernels cannot run), it runs inside the nested
# harness (an L1 Linux with real nested KVM under QEMU), as the E2E tests do.
set -euo pipefail
out=${1:?usage: demo.sh OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
mkdir -p "$payload/bin" "$payload/lib/podvm"
cp "$out/bin/podvm" "$payload/bin/"
cp "$out/lib/podvm/vmlinux" "$out/lib/podvm/podvm-agent" "$payload/lib/podvm/"
echo "demo: building OCI image demo:latest with umoci, importing it into podvm's store"
"$here/scripts/demo-image.sh" "$work/layout"
store=$work/store
image_id=$("$out/bin/podvm" --dir "$store" fetch "oci:$work/layout:demo")
echo "demo: image id $image_id"
"$out/bin/podvm" --dir "$store" image render "$image_id" "$payload/rootfs"
demo_cmd='podvm boot --cpus 2 --memory 256 --initrd-dir rootfs -- /bin/sh -c '"'"'cat /etc/motd; echo "Hello from a podvm microVM: $(uname -sr), $(nproc) vCPUs, $(awk "/MemTotal/{print int(\$2/1024)}" /proc/meminfo) MiB"; exit 3'"'"'; echo "podvm exit status: $? (the command exited 3)"'
if [ -e /sys/module/kvm_pvm ] || [ ! -w /dev/kvm ]; then
  echo "demo: this host's KVM cannot boot podvm's stock guest kernel (PVM or no /dev/kvm);"
  echo "demo: running inside the nested harness (L1 Linux with nested KVM under QEMU, takes a minute)"
  mkdir -p "$work/results"
  "$here/tests/nested/l1.sh" "$payload" "$work/results" -- "$demo_cmd"
else
  (cd "$payload" && PATH=$payload/bin:$PATH sh -c "$demo_cmd")
fi
