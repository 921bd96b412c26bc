#!/bin/sh
# Runs inside L1 (or on a host with real KVM) for tests/e2e_containerd.rs, from the payload
# root: starts Debian's containerd with its own config (root, state and socket under ./ctd),
# imports the busybox image from a docker archive, and runs tasks with podvm's shim
# (`--runtime io.containerd.podvm.v2`, found on PATH in $PAYLOAD/bin) through `ctr`.
# Usage: ctr-run.sh ARCHIVE
# Output, one fact per line (tests/e2e_containerd.rs parses it):
#   KEY=VALUE, with *-rc the exit codes of the ctr commands, *-out / *-err their output lines,
#   *-secs wall times, and the leftovers once every task is removed: podvm shims, processes
#   holding /dev/kvm (the runner's kvm-hold excepted), mounts under ./ctd, task bundles.
archive=${1:?usage: ctr-run.sh ARCHIVE}
W=$(pwd -P)/ctd
IMG=docker.io/library/busybox:latest
RT="--runtime io.containerd.podvm.v2"
rm -rf "$W"; mkdir -p "$W"
cat >"$W/config.toml" <<CONF
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$W/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/opt"
CONF
ctr() { /usr/bin/ctr --address "$W/containerd.sock" "$@"; }
# lines PREFIX FILE: each line of FILE as PREFIX=LINE
lines() { sed "s/^/$1=/" "$2"; }
# until_true SECONDS CMD...: runs CMD every 0.2 s until it succeeds or SECONDS passed.
until_true() {
  limit=$(( $(date +%s) + $1 )); shift
  while ! "$@"; do
    [ "$(date +%s)" -ge "$limit" ] && return 1
    sleep 0.2
  done
}
state_of() { ctr task ls 2>/dev/null | awk -v t="$1" '$1 == t { print $3 }'; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }

/usr/bin/containerd --config "$W/config.toml" >"$W/containerd.log" 2>&1 &
ctd=$!
if ! until_true 60 ctr version >/dev/null 2>&1; then
  echo "containerd-up=no"; lines containerd-log "$W/containerd.log"; exit 1
fi
echo "containerd-up=yes"
echo "containerd-version=$(ctr version | awk '/Version:/ { print $2; exit }')"
ctr images import "$archive" >"$W/import.out" 2>&1; echo "import-rc=$?"
lines import-out "$W/import.out"

# 1. A task that prints and exits 3, removed with it (--rm), while `ctr events` records the
# task events containerd received from the shim.
/usr/bin/ctr --address "$W/containerd.sock" events >"$W/events.out" 2>&1 &
events=$!
# Subscribed once it shows an event made for the purpose.
n=0
subscribed() {
  n=$((n + 1)); ctr namespaces create "probe$n" 2>/dev/null
  grep -q /namespaces/create "$W/events.out"
}
until_true 30 subscribed; echo "events-subscribed=$?"
start=$(date +%s)
ctr run --rm $RT $IMG t1 sh -c 'echo hi; exit 3' >"$W/t1.out" 2>"$W/t1.err"
echo "t1-rc=$?"
echo "t1-secs=$(( $(date +%s) - start ))"
lines t1-out "$W/t1.out"; lines t1-err "$W/t1.err"
t1_deleted() { grep -q '/tasks/delete.*"t1"' "$W/events.out"; }
until_true 30 t1_deleted
kill "$events"; wait "$events" 2>/dev/null
grep '"t1"' "$W/events.out" \
  | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\/tasks\//) { print "t1-event=" $i; break } }'

# 2. A refused spec: --privileged passes the host's devices.
ctr run --rm --privileged $RT $IMG t3 true >"$W/t3.out" 2>"$W/t3.err"
echo "t3-rc=$?"; lines t3-err "$W/t3.err"

# 3. A detached task: listed, its metrics read, SIGTERM'd (its trap exits 7), removed.
start=$(date +%s)
ctr run -d $RT $IMG t2 sh -c 'trap "exit 7" TERM; echo up; while :; do sleep 1; done' \
  >"$W/t2.out" 2>"$W/t2.err"
echo "t2-run-rc=$?"; lines t2-run-err "$W/t2.err"
until_true 120 is_state t2 RUNNING; echo "t2-running=$(state_of t2) after $(( $(date +%s) - start ))s"
ctr task ls >"$W/ls.out" 2>&1; lines t2-ls "$W/ls.out"
ctr task ps t2 >"$W/ps.out" 2>&1; echo "t2-ps-rc=$?"; lines t2-ps "$W/ps.out"
ctr task metrics t2 >"$W/metrics.out" 2>&1; echo "t2-metrics-rc=$?"; lines t2-metrics "$W/metrics.out"
ctr task kill t2 >"$W/kill.out" 2>&1; echo "t2-kill-rc=$?"; lines t2-kill "$W/kill.out"
until_true 60 is_state t2 STOPPED; echo "t2-after-kill=$(state_of t2)"
ctr task rm t2 >"$W/rm.out" 2>&1; echo "t2-rm-rc=$?"; lines t2-rm "$W/rm.out"
ctr container rm t2 >"$W/crm.out" 2>&1; echo "t2-container-rm-rc=$?"; lines t2-container-rm "$W/crm.out"

# 4. A shim killed (SIGKILL) while its task runs: containerd runs the shim's `delete`, which
# cleans up what the dead shim left (its VM died with it).
ctr run -d $RT $IMG t4 sh -c 'while :; do sleep 1; done' >"$W/t4.out" 2>"$W/t4.err"
echo "t4-run-rc=$?"; lines t4-run-err "$W/t4.err"
until_true 120 is_state t4 RUNNING; echo "t4-running=$(state_of t4)"
# The task's VM runs in a VMM process started from the shim's executable (`__vmm`): counted
# apart; it dies with its shim.
shim_procs() {
  for f in $(grep -la '[c]ontainerd-shim-podvm' /proc/[0-9]*/cmdline 2>/dev/null); do
    if grep -qa __vmm "$f"; then echo "vmm $f"; else echo "shim $f"; fi
  done | sed 's|/proc/||; s|/cmdline||'
}
shim_pids() { shim_procs | sed -n 's/^shim //p'; }
vmm_pids() { shim_procs | sed -n 's/^vmm //p'; }
echo "t4-shims=$(shim_pids | wc -l)"
echo "t4-vmms=$(vmm_pids | wc -l)"
kill -9 $(shim_pids)
# (a zombie's cmdline is empty: one not reaped yet is not counted)
no_vmms() { [ "$(vmm_pids | wc -l)" -eq 0 ]; }
until_true 30 no_vmms; echo "t4-vmms-left-after-shim-kill=$(vmm_pids | wc -l)"
t4_gone() { [ -z "$(state_of t4)" ]; }
until_true 60 t4_gone; echo "t4-after-shim-kill=$(state_of t4)"
ctr container rm t4 >"$W/t4rm.out" 2>&1; echo "t4-container-rm-rc=$?"; lines t4-container-rm "$W/t4rm.out"
echo "tasks-after=$(ctr task ls -q | wc -l)"

# Leftovers, once the shims had the time to exit.
shims() { grep -la '[c]ontainerd-shim-podvm' /proc/[0-9]*/cmdline 2>/dev/null | wc -l; }
no_shims() { [ "$(shims)" -eq 0 ]; }
until_true 30 no_shims
echo "shims-left=$(shims)"
kvm_holders() {
  for p in /proc/[0-9]*; do
    ls -l "$p/fd" 2>/dev/null | grep -q /dev/kvm || continue
    grep -qa kvm-hold "$p/cmdline" 2>/dev/null && continue
    echo "${p#/proc/}:$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
  done
}
echo "kvm-holders-left=$(kvm_holders | wc -l)"
kvm_holders | sed 's/^/kvm-holder=/'
echo "mounts-left=$(grep -c " $W/" /proc/self/mountinfo)"
grep " $W/" /proc/self/mountinfo | sed 's/^/mount-left=/'
echo "bundles-left=$(ls "$W/state/io.containerd.runtime.v2.task/default" 2>/dev/null | wc -l)"
kill "$ctd"; wait "$ctd" 2>/dev/null
lines containerd-log-podvm "$W/containerd.log" | grep -i 'error\|podvm\|shim' | tail -n 40
