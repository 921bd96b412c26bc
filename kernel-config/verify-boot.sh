#!/usr/bin/env bash
# verify-boot.sh VMLINUX [SMP] [MEM_MIB]: boot VMLINUX under QEMU microvm with real (nested) KVM
# and check that the guest sees SMP CPUs and about MEM_MIB of memory and reboots cleanly.
#
# /dev/kvm on the build host is PVM, which cannot run a stock kernel, so QEMU runs inside the
# throwaway L1 VM of /work/shared/nested/l1-run (where /dev/kvm is nested kvm_amd). The guest's
# initramfs is an uncompressed cpio with busybox-static and an /init that prints what it sees.
# Output lines starting with "podvm-check:" are machine-readable; the QEMU wall time (inside L1,
# noisy, for comparison only) is printed as "podvm-check: qemu_ms=N".
# Environment: VERIFY_APPEND adds kernel parameters (e.g. "initcall_debug"); L1_RUN overrides the
# path of l1-run.
# shellcheck disable=SC2016 # check() evals its single-quoted conditions on purpose
set -euo pipefail

VMLINUX=${1:?usage: $0 VMLINUX [SMP] [MEM_MIB]}
SMP=${2:-2}
MEM=${3:-256}
APPEND="console=ttyS0 reboot=t panic=-1${VERIFY_APPEND:+ $VERIFY_APPEND}"
L1_RUN=${L1_RUN:-/work/shared/nested/l1-run}
QEMU=/usr/bin/qemu-system-x86_64

die() { echo "verify-boot: error: $*" >&2; exit 1; }
[ -f "$VMLINUX" ] || die "no kernel at $VMLINUX (build it with kernel-config/build.sh OUT_PATH)"
[ -x "$L1_RUN" ] || die "$L1_RUN not found or not executable"
for p in busybox-static cpio qemu-system-x86; do
	if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
		echo "verify-boot: installing $p"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null || die "apt-get install $p failed"
	fi
done
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
payload=$work/payload root=$work/initramfs
mkdir -p "$payload" "$root"/{bin,dev,proc,sys}
cp "$VMLINUX" "$payload/vmlinux"
cp /bin/busybox "$root/bin/busybox"

# Guest /init: report CPUs, memory, command line, consoles; then reboot (reboot=t: triple fault).
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "podvm-check: nproc=$(nproc)"
echo "podvm-check: cpuinfo_processors=$(grep -c ^processor /proc/cpuinfo)"
echo "podvm-check: memtotal_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
free -m
echo "podvm-check: cmdline=$(cat /proc/cmdline)"
echo "podvm-check: ttys=$(ls /dev | grep '^ttyS' | tr '\n' ' ')"
echo "podvm-check: filesystems=$(awk '{print $NF}' /proc/filesystems | tr '\n' ' ')"
echo "podvm-check: clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "podvm-check: init-done"
reboot -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$payload/initrd.cpio"

# Run inside L1. -no-reboot makes QEMU exit when the guest resets itself (reboot=t).
cat >"$payload/run.sh" <<RUN
ms() { awk '{ printf "%d", \$1 * 1000 }' /proc/uptime; }
start=\$(ms)
$QEMU -M microvm -enable-kvm -cpu host -smp $SMP -m $MEM -nodefaults -no-user-config \\
  -nographic -serial stdio -no-reboot -kernel /payload/vmlinux -initrd /payload/initrd.cpio \\
  -append "$APPEND"
rc=\$?
end=\$(ms)
echo "podvm-check: qemu_exit=\$rc"
echo "podvm-check: qemu_ms=\$((end - start))"
RUN

echo "verify-boot: booting $VMLINUX (smp=$SMP, mem=${MEM}MiB, append: $APPEND) under QEMU microvm inside L1"
l1_rc=0
"$L1_RUN" -m 2048 -t 600 -b "$QEMU" -b /usr/share/qemu "$payload" -- sh /payload/run.sh |
	tr -d '\r' | tee "$work/console.log" || l1_rc=$?
[ $l1_rc -eq 0 ] || echo "verify-boot: l1-run exited with status $l1_rc" >&2

# Checks.
get() { grep -a -o "^podvm-check: $1=.*" "$work/console.log" | head -1 | cut -d= -f2-; }
fail=0
check() { if eval "$2"; then echo "verify-boot: ok: $1"; else echo "verify-boot: FAIL: $1" >&2; fail=1; fi; }
nproc_seen=$(get nproc) cpus_seen=$(get cpuinfo_processors) mem_kib=$(get memtotal_kib)
check "guest sees $SMP CPUs (nproc=${nproc_seen:-?}, /proc/cpuinfo=${cpus_seen:-?})" \
	'[ "$nproc_seen" = "$SMP" ] && [ "$cpus_seen" = "$SMP" ]'
check "guest MemTotal ${mem_kib:-?} KiB is 80-100% of ${MEM} MiB" \
	'[ -n "$mem_kib" ] && [ "$mem_kib" -le $((MEM * 1024)) ] && [ "$mem_kib" -ge $((MEM * 1024 * 8 / 10)) ]'
check "ttyS0 and ttyS1 exist" '[[ "$(get ttys)" == *"ttyS0 ttyS1 "* ]]'
check "init ran to completion" 'grep -aq "^podvm-check: init-done" "$work/console.log"'
check "guest rebooted (reboot=t) and QEMU exited 0" \
	'grep -aq "reboot: Restarting system" "$work/console.log" && [ "$(get qemu_exit)" = 0 ]'
[ $fail -eq 0 ] || die "boot verification failed"
echo "verify-boot: PASS"
