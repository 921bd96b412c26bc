#!/usr/bin/env bash
# Installs the Debian packages podvm's build, tests and demo need, only those that are missing.
set -euo pipefail
packages=(
  # guest kernel build (kernel-config/build.sh)
  linux-source-6.1 bc flex bison libelf-dev libssl-dev xz-utils
  # nested E2E harness: L1 kernel under QEMU, its initramfs and disk image
  qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio e2fsprogs
  # image fixtures: a real registry, image tools
  docker-registry skopeo umoci zstd python3 openssl
  # image signatures (gpg makes test keys) and Basic auth (htpasswd) tests
  gnupg apache2-utils
  # interactive --tty E2E check (tests/e2e_agent.rs): a terminal to type into and resize
  tmux
  # pod networking: CNI plugins (bridge, host-local, portmap, ...), the iptables they call, and
  # ip/tc (iproute2) for the network E2E checks
  containernetworking-plugins iptables iproute2
  # rootless pod networking (src/net/passt.rs) and its E2E check in tests/e2e_rootless.rs
  passt
  # podvm as a systemd service (tests/e2e_systemd.rs): systemd, journald, D-Bus, carried into L1
  systemd dbus util-linux
  # the containerd shim's E2E test (tests/e2e_containerd.rs): Debian's containerd 1.6 and ctr
  containerd
  # fuzzing (make fuzz): libfuzzer-sys compiles libFuzzer's C++ with the system compiler
  g++
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
