#!/bin/bash
# l1.sh: run a command inside a throwaway L1 Linux VM (QEMU TCG, AMD-V CPU) so that
# /dev/kvm inside it is ordinary nested KVM (kvm_amd). See tests/nested/README.md.
#
# Usage: l1.sh [-m MiB] [-t SECONDS] [-s SECONDS] [-l CONSOLE_LOG] [-i] [-b HOSTPATH]... PAYLOAD_DIR RESULTS_DIR -- CMD...
#   PAYLOAD_DIR becomes an ext4 disk mounted read-write at /payload in L1; CMD runs there under
#   busybox sh with cwd /payload and PATH=/payload/bin:/usr/sbin:/usr/bin:/sbin:/bin, PAYLOAD=/payload.
#   Whatever CMD writes under /payload/results/ is copied to RESULTS_DIR after L1 powers off.
#   -b HOSTPATH: host file or directory (plus the shared libraries of its executables) made
#      available in L1 at the same absolute path; it lives on a second, read-only disk and
#      is symlinked into place. Busybox applets shadow same-named tools: call them by full path.
#   -m L1 memory (default 4096), -t timeout in seconds for the whole L1 run (default 1200),
#   -s stall limit: stop L1 (status 124) when its console stays silent this long, or at once when
#      L1's kernel reports a soft lockup (default: off).
#      Nested KVM under TCG occasionally livelocks L1 (both vCPUs spinning, nothing printed, no
#      in-L1 timeout able to fire); this ends such a run early instead of at the -t timeout.
#   -l console log (default RESULTS_DIR/../l1-console.log).
#   -i interactive: this terminal is L1's console (for `-- sh -i`), no timeout; Ctrl-A X quits.
# Exit status: CMD's status; 124 if L1 timed out or crashed; 2 on usage/setup errors.
# Environment: PODVM_CACHE_DIR (default ~/.cache/podvm): initramfs cache under l1/<hash>/.
#   PODVM_L1_KERNEL: L1 kernel to use (default newest /boot/vmlinuz-*-cloud-amd64).
set -euo pipefail
MEM=4096; TIMEOUT=1200; STALL=0; LOG=; HOSTFILES=(); INTERACTIVE=
die() { echo "l1.sh: $*" >&2; exit 2; }
usage() { sed -n "/^# Usage/,/^# Exit/p" "$0" >&2; exit 2; }
while getopts "m:t:s:b:l:ih" o; do
  case $o in
    m) MEM=$OPTARG;; t) TIMEOUT=$OPTARG;; s) STALL=$OPTARG;; b) HOSTFILES+=("$OPTARG");; l) LOG=$OPTARG;; i) INTERACTIVE=1;;
    *) usage;;
  esac
done
shift $((OPTIND-1))
[ $# -ge 3 ] || usage
PAYLOAD=$1 RESULTS=$2; shift 2; [ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || die "no command given"
[ -d "$PAYLOAD" ] || die "payload directory not found: $PAYLOAD"
[ -n "$LOG" ] || LOG=$RESULTS/../l1-console.log
mkdir -p "$RESULTS" "$(dirname "$LOG")"
RESULTS=$(realpath "$RESULTS"); LOG=$(realpath -m "$LOG")

# --- tools -----------------------------------------------------------------------------------
ensure_tools() {
  local missing=
  for b in qemu-system-x86_64 busybox cpio mkfs.ext4 debugfs; do
    command -v $b >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v $b >/dev/null || missing=1
  done
  # The initramfs needs a static busybox (package busybox-static).
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing=1
  [ -n "${PODVM_L1_KERNEL:-}" ] || ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || missing=1
  [ -z "$missing" ] && return
  echo "l1.sh: installing qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio e2fsprogs" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 linux-image-cloud-amd64 \
    busybox-static cpio e2fsprogs >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio e2fsprogs >/dev/null; } \
    || die "cannot install the L1 tools with apt-get"
}
ensure_tools
export PATH=$PATH:/usr/sbin:/sbin
KERNEL=${PODVM_L1_KERNEL:-$(ls /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -1)}
KVER=${KERNEL##*/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || die "no modules for $KVER in $MODDIR"
BUSYBOX=/bin/busybox

# --- L1 init (part of the initramfs cache key) ---------------------------------------------
INIT=$(cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /dev/net /tmp /run /payload /l1ctl
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t tmpfs shm /dev/shm
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t cgroup2 none /sys/fs/cgroup || echo "l1: cannot mount cgroup2"
# An idle cgroup with a CPU quota for the whole run keeps the kernel's CFS-bandwidth static key
# set, so pods' cpu.max come and go without text patching (see tests/nested/README.md, Stalls).
{ echo +cpu > /sys/fs/cgroup/cgroup.subtree_control && mkdir /sys/fs/cgroup/l1-hold \
  && echo "100000 100000" > /sys/fs/cgroup/l1-hold/cpu.max; } || echo "l1: cannot hold a cpu.max"
hostname l1
for m in $(cat /mod/order); do insmod /mod/$m || echo "l1: insmod $m failed"; done
ip link set lo up
n=0; while ! findfs LABEL=l1-payload >/dev/null 2>&1 || ! findfs LABEL=l1-ctl >/dev/null 2>&1; do
  n=$((n+1)); [ $n -lt 300 ] || { echo "l1: disks did not appear"; echo "@@L1-EXIT=124@@"; poweroff -f; }
  sleep 0.1
done
mount -t ext4 -o noatime "$(findfs LABEL=l1-payload)" /payload || echo "l1: cannot mount payload"
mount -t ext4 -o ro "$(findfs LABEL=l1-ctl)" /l1ctl || echo "l1: cannot mount control disk"
while read -r p; do
  [ -n "$p" ] || continue
  mkdir -p "$(dirname "$p")" && ln -sfn "/l1ctl/host$p" "$p" || echo "l1: cannot place $p"
done < /l1ctl/host.list
mkdir -p /payload/results
[ -f /l1ctl/want-kallsyms ] && grep ' [tTwW] ' /proc/kallsyms > /payload/.l1-kallsyms
export PATH=/payload/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp PAYLOAD=/payload
cd /payload
echo  # the firmware leaves the console mid-line
sh /l1ctl/cmd </dev/null
rc=$?
cd /; kill -9 -1 2>/dev/null; sleep 0.2; sync
umount /payload 2>/dev/null || umount -l /payload || echo "l1: cannot unmount payload"
echo "@@L1-EXIT=$rc@@"
poweroff -f
INIT
)

# Modules an L1 host for microVMs wants (those built in are skipped), with deps, in load order.
MODS="virtio_pci virtio_blk crc32c_generic crc32c-intel ext4 kvm-amd tun tap overlay bridge veth vhost_vsock vhost_net
  fuse nf_tables nft_chain_nat nft_nat nft_masq nft_ct br_netfilter
  sch_ingress cls_u32 act_mirred act_gact nft_compat xt_MASQUERADE xt_comment xt_multiport xt_addrtype
  xt_mark xt_conntrack xt_nat xt_tcpudp"
declare -A SEEN; ORDER=()
add_mod() {
  local rel=$1 d; [ -n "${SEEN[$rel]:-}" ] && return; SEEN[$rel]=1
  for d in $(grep "^$rel:" "$MODDIR/modules.dep" | cut -d: -f2); do add_mod "$d"; done
  ORDER+=("$rel")
}
for m in $MODS; do
  pat="/${m//[-_]/[-_]}\.ko(\.[a-z]+)?"
  grep -qE "$pat\$" "$MODDIR/modules.builtin" && continue
  rel=$(grep -oE "^[^:]*$pat:" "$MODDIR/modules.dep" | head -1 | tr -d :) || true
  [ -n "$rel" ] || { echo "l1.sh: warning: module $m not found for $KVER" >&2; continue; }
  add_mod "$rel"
done

# --- initramfs, cached by hash ---------------------------------------------------------------
CACHE=${PODVM_CACHE_DIR:-${HOME:-/root}/.cache/podvm}/l1
KEY=$( { echo "$KVER"; printf '%s\n' "${ORDER[@]}"; echo "$INIT"; sha256sum "$BUSYBOX" "$KERNEL"; } \
  | sha256sum | cut -c1-16)
INITRD=$CACHE/$KEY/initrd.gz
if [ ! -f "$INITRD" ]; then
  mkdir -p "$CACHE"; stage=$(mktemp -d "$CACHE/.build.XXXXXX")
  root=$stage/root; mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,mod,payload,l1ctl}
  cp "$BUSYBOX" "$root/bin/busybox"
  : > "$root/mod/order"
  for rel in "${ORDER[@]}"; do
    case $rel in
      *.ko) cp "$MODDIR/$rel" "$root/mod/";;
      *.ko.xz) xz -dc "$MODDIR/$rel" > "$root/mod/$(basename "${rel%.xz}")";;
      *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$root/mod/$(basename "${rel%.zst}")";;
      *.ko.gz) gzip -dc "$MODDIR/$rel" > "$root/mod/$(basename "${rel%.gz}")";;
    esac
    b=$(basename "$rel"); echo "${b%.ko*}.ko" >> "$root/mod/order"
  done
  printf '%s\n' "$INIT" > "$root/init"; chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$stage/initrd.gz"
  printf '%s\n' "kernel $KVER" "${ORDER[@]}" > "$stage/modules.txt"
  rm -rf "$root"
  if ! mv -T "$stage" "$CACHE/$KEY" 2>/dev/null; then rm -rf "$stage"; fi
  echo "l1.sh: built L1 initramfs $INITRD" >&2
fi

# --- disks -----------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/podvm-l1.XXXXXX")
cleanup() {  # also stops QEMU when l1.sh itself is interrupted or killed with TERM
  local pid; pid=$(cat "$work/qemu.pid" 2>/dev/null) || true
  if [ -n "$pid" ] && grep -q qemu "/proc/$pid/comm" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT; trap 'exit 130' INT TERM

mib=$(( ($(du -sb "$PAYLOAD" | cut -f1) + 1048575) / 1048576 ))
size=$(( mib * 3 / 2 + 512 ))
truncate -s "${size}M" "$work/payload.img"
mkfs.ext4 -q -F -L l1-payload -O ^has_journal -m 0 -i 8192 -E root_owner=0:0 -d "$PAYLOAD" "$work/payload.img" \
  || die "mkfs.ext4 of payload $PAYLOAD failed"

ctl=$work/ctl; mkdir -p "$ctl/host"
printf '%s ' "$@" > "$ctl/cmd"; echo >> "$ctl/cmd"  # words joined: a shell command line
[ -f "$CACHE/$KEY/kallsyms" ] || : > "$ctl/want-kallsyms"  # for stall_diag, once per L1 kernel
paths=$work/paths; : > "$paths"
for f in "${HOSTFILES[@]}"; do
  [ -e "$f" ] || die "no such host file: $f"
  f=$(realpath -s "$f"); echo "$f" >> "$paths"
  find -L "$f" -type f \( -perm -u+x -o -name '*.so*' \) 2>/dev/null | while read -r x; do
    ldd "$x" 2>/dev/null | grep -o '/[^ ]*' || true
  done >> "$paths"
done
# Keep only top-level entries (a path under another listed directory comes with it).
sort -u "$paths" | awk 'BEGIN{p=""} { if (p != "" && index($0, p "/") == 1) next; print; p=$0 }' \
  > "$ctl/host.list"
while read -r p; do
  mkdir -p "$ctl/host$(dirname "$p")"; cp -rL "$p" "$ctl/host$p"
done < "$ctl/host.list"
csize=$(( $(du -sb "$ctl" | cut -f1) / 1048576 * 5 / 4 + 16 ))
truncate -s "${csize}M" "$work/ctl.img"
mkfs.ext4 -q -F -L l1-ctl -O ^has_journal -m 0 -E root_owner=0:0 -d "$ctl" "$work/ctl.img" \
  || die "mkfs.ext4 of the control disk failed"

# stall_diag: where the stalled L1's vCPUs are, from QEMU's monitor: registers sampled a few
# times, each RIP named by L1's System.map (a RIP no symbol explains is most likely in L2).
stall_diag() {
  local map=$CACHE/$KEY/kallsyms  # L1 runs with nokaslr: the addresses hold for every boot
  local l2=${PODVM_OUT_DIR:-out}/lib/podvm/vmlinux  # podvm's guest kernel: names L2 RIPs
  python3 - "$work/monitor.sock" "$map" "$l2" <<'PY'
import bisect, re, socket, subprocess, sys, time
sock_path, map_path, l2_path = sys.argv[1:4]
syms, l2syms = [], []
try:
    for line in open(map_path):
        addr, kind, name = line.split()[:3]
        if kind in "tTwW":
            syms.append((int(addr, 16), name))
except OSError as err:
    print(f"(no L1 symbols: {err})")
try:
    nm = subprocess.run(["nm", l2_path], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            l2syms.append((int(parts[0], 16), parts[2]))
except (OSError, subprocess.CalledProcessError) as err:
    print(f"(no L2 symbols from {l2_path}: {err})")
syms.sort(); l2syms.sort()
def lookup(table, rip):
    i = bisect.bisect_right(table, (rip, "~")) - 1
    return f"{table[i][1]}+{rip - table[i][0]:#x}" if i >= 0 and rip - table[i][0] < 0x10000 else "?"
def name(rip):  # both kernels live at the same virtual addresses: name the RIP in each
    return f"L1:{lookup(syms, rip)} L2:{lookup(l2syms, rip)}"
s = socket.socket(socket.AF_UNIX); s.connect(sock_path); s.settimeout(5)
def cmd(c):
    s.sendall(c.encode() + b"\n"); time.sleep(1.0); out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            out += chunk
            if len(chunk) < 65536: break
    except socket.timeout: pass
    return out.decode(errors="replace")
cmd("")
for sample in range(5):
    text = cmd("info registers -a")
    print(f"--- sample {sample} ---")
    for cpu, block in enumerate(re.split(r"\nCPU#", text)[1:] or [text]):
        rip = re.search(r"RIP=([0-9a-f]+)", block); cr3 = re.search(r"CR3=([0-9a-f]+)", block)
        hlt = re.search(r"HLT=(\d)", block); efl = re.search(r"RFL=([0-9a-f]+)", block)
        if rip:
            r = int(rip.group(1), 16)
            print(f"cpu{cpu} RIP={r:#x} {name(r)} CR3={cr3.group(1) if cr3 else '?'} "
                  f"HLT={hlt.group(1) if hlt else '?'} RFL={efl.group(1) if efl else '?'}")
    if sample == 0:
        print(text)
print(cmd("info cpus"))
PY
}

# stall_watch SECONDS: kills QEMU when the console log has not grown for SECONDS.
stall_watch() {
  local limit=$1 last size idle=0
  last=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
  while sleep 10; do
    size=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
    if [ "$size" != "$last" ]; then last=$size; idle=0; else idle=$((idle + 10)); fi
    # An L1 whose own watchdog reports a soft lockup is livelocked too, however much it prints.
    if grep -aq "watchdog: BUG: soft lockup" "$LOG" 2>/dev/null; then idle=$limit; fi
    if [ "$idle" -ge "$limit" ]; then
      echo "l1.sh: L1 printed nothing for ${limit}s or reported a soft lockup: stalled; stopping it" >&2
      echo "l1.sh: stalled after ${limit}s of silence" >> "$LOG.qemu-stderr"
      stall_diag > "$LOG.stall-diag" 2>&1 || true
      echo "l1.sh: vCPU states of the stalled L1: $LOG.stall-diag" >&2
      kill "$(cat "$work/qemu.pid" 2>/dev/null)" 2>/dev/null || true
      return
    fi
  done
}

# --- boot (one L1 at a time on this host: TCG eats every core) ------------------------------
mkdir -p "$CACHE"; exec 9>"$CACHE/qemu.lock"
flock -n 9 || { echo "l1.sh: waiting for another L1 to finish" >&2; flock 9; }
start=$(date +%s)
: > "$LOG"; : > "$LOG.qemu-stderr"
QEMU=(qemu-system-x86_64 -accel "tcg,thread=multi" -cpu "EPYC,+svm" -smp 2 -m "$MEM"
  -M pc -nographic -nodefaults -no-reboot -net none -pidfile "$work/qemu.pid"
  -monitor "unix:$work/monitor.sock,server=on,wait=off"
  -kernel "$KERNEL" -initrd "$INITRD"
  -drive "file=$work/payload.img,if=virtio,format=raw,cache=unsafe"
  -drive "file=$work/ctl.img,if=virtio,format=raw,cache=unsafe,readonly=on"
  -append "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off nokaslr kvm_amd.nested=1")
if [ -n "$INTERACTIVE" ]; then
  # The terminal is L1's console (Ctrl-A X quits QEMU); no timeout.
  "${QEMU[@]}" -serial mon:stdio 2>>"$LOG.qemu-stderr" | tee -a "$LOG" || true
else
  timeout -k 10 "$TIMEOUT" "${QEMU[@]}" -serial stdio \
    </dev/null 2>>"$LOG.qemu-stderr" | tee -a "$LOG" | grep -av '^@@L1-EXIT' &
  qemu_job=$!
  watchdog=
  if [ "$STALL" -gt 0 ]; then
    stall_watch "$STALL" & watchdog=$!
  fi
  wait $qemu_job || true  # in the background so that INT/TERM traps run at once
  [ -z "$watchdog" ] || kill "$watchdog" 2>/dev/null || true
fi
exec 9>&-
elapsed=$(( $(date +%s) - start ))
code=$(grep -a -o '@@L1-EXIT=[0-9]*@@' "$LOG" | tail -1 | sed 's/[^=]*=\([0-9]*\)@@/\1/' || true)

# --- results ---------------------------------------------------------------------------------
if debugfs -R "stat /results" "$work/payload.img" 2>/dev/null | grep -q 'Type: directory'; then
  mkdir -p "$work/out"
  debugfs -R "rdump /results $work/out" "$work/payload.img" >/dev/null 2>&1 \
    || echo "l1.sh: debugfs could not extract /results" >&2
  cp -a "$work/out/results/." "$RESULTS/"
fi
if [ ! -f "$CACHE/$KEY/kallsyms" ]; then
  debugfs -R "dump /.l1-kallsyms $work/kallsyms" "$work/payload.img" >/dev/null 2>&1 || true
  [ -s "$work/kallsyms" ] && mv "$work/kallsyms" "$CACHE/$KEY/kallsyms"
fi
if [ -z "$code" ]; then
  echo "l1.sh: no exit status from L1 after ${elapsed}s (timeout ${TIMEOUT}s or crash); console tail ($LOG):" >&2
  tail -n 30 "$LOG" | sed 's/^/  | /' >&2
  grep -v "TCG doesn't support requested feature" "$LOG.qemu-stderr" | sed 's/^/  qemu: /' >&2 || true
  echo "L1-EXIT status=124 elapsed=${elapsed}s (timeout or crash)"
  exit 124
fi
echo "L1-EXIT status=$code elapsed=${elapsed}s"
exit "$code"
