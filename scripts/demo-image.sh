#!/usr/bin/env bash
# Builds the demo's OCI image layout at DIR (image `demo:latest`) from Debian's busybox-static
# with umoci: a busybox root tree, an unprivileged user, and a default command.
set -euo pipefail
layout=${1:?usage: demo-image.sh LAYOUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:demo"
umoci unpack --rootless --image "$layout:demo" "$work/bundle" >/dev/null
"$here/scripts/busybox-tree.sh" "$work/bundle/rootfs"
echo "Hello from a podvm image" > "$work/bundle/rootfs/etc/motd"
umoci repack --image "$layout:demo" "$work/bundle"
umoci config --image "$layout:demo" --config.cmd /bin/sh --config.workingdir / \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.label org.opencontainers.image.title=podvm-demo
