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
# 3b. Exec processes in t2 (issue 15), while `ctr events` records the exec events.
/usr/bin/ctr --address "$W/containerd.sock" events >"$W/xevents.out" 2>&1 &
xevents=$!
xn=0
xsubscribed() {
  xn=$((xn + 1)); ctr namespaces create "xprobe$xn" 2>/dev/null
  grep -q /namespaces/create "$W/xevents.out"
}
until_true 30 xsubscribed
echo "exec-events-subscribed=$?"
start=$(date +%s)
ctr task exec --exec-id e1 t2 sh -c 'echo x; exit 4' </dev/null >"$W/e1.out" 2>"$W/e1.err"
echo "e1-rc=$?"; echo "e1-secs=$(( $(date +%s) - start ))"
lines e1-out "$W/e1.out"; lines e1-err "$W/e1.err"
# A terminal: ctr -t needs one of its own, which util-linux script gives it (24x80); ctr passes
# its size on (ResizePty) once the exec started, which the exec waits for (at most 10 s).
[ -e /dev/pts/ptmx ] || { mkdir -p /dev/pts; mount -t devpts -o ptmxmode=0666 devpts /dev/pts; }
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
sized='tty; i=0; while [ "$(stty size)" = "0 0" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size'
/usr/bin/script -qec "stty rows 24 cols 80; /usr/bin/ctr --address $W/containerd.sock task exec -t --exec-id e2 t2 sh -c '$sized'" /dev/null \
  </dev/null >"$W/e2.out" 2>"$W/e2.err"
echo "e2-rc=$?"; tr -d '\r' <"$W/e2.out" >"$W/e2.txt"; lines e2-out "$W/e2.txt"; lines e2-err "$W/e2.err"
# A long exec shows in ctr task ps, and is signalled by its exec id.
ctr task exec -d --exec-id e3 t2 sleep 600 </dev/null >"$W/e3.out" 2>&1; echo "e3-rc=$?"; lines e3-out "$W/e3.out"
ctr task ps t2 >"$W/xps.out" 2>&1; echo "e3-ps-rc=$?"; lines e3-ps "$W/xps.out"
ctr task kill -s KILL --exec-id e3 t2 >"$W/e3k.out" 2>&1; echo "e3-kill-rc=$?"; lines e3-kill "$W/e3k.out"
e3_gone() { ctr task ps t2 >"$W/xps3.out" 2>&1 && ! grep -q e3 "$W/xps3.out"; }
until_true 30 e3_gone; echo "e3-gone=$?"
# Attack: an exec with more arguments than the shim takes is refused; nothing starts.
ctr task exec --exec-id e4 t2 echo $(seq 1100) </dev/null >"$W/e4.out" 2>"$W/e4.err"
echo "e4-rc=$?"; lines e4-out "$W/e4.out"; lines e4-err "$W/e4.err"
ctr task ps t2 >"$W/xps2.out" 2>&1; echo "e4-in-ps=$(grep -c e4 "$W/xps2.out")"
e1_exited() { grep -q '/tasks/exit.*"e1"' "$W/xevents.out"; }
until_true 30 e1_exited
kill "$xevents"; wait "$xevents" 2>/dev/null
grep '"e1"' "$W/xevents.out" \
  | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\/tasks\//) { print "e1-event=" $i; break } }'
grep '"e1"' "$W/xevents.out" | sed 's/^/e1-event-line=/'
echo "e4-events=$(grep -c '"e4"' "$W/xevents.out")"
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
# 5. containerd killed (SIGKILL) and started again with the same config while t5 runs: the
# shim keeps running, containerd finds the task again, and kill and rm work.
ctr run -d $RT $IMG t5 sh -c 'while :; do sleep 1; done' >"$W/t5.out" 2>"$W/t5.err"
echo "t5-run-rc=$?"; lines t5-run-err "$W/t5.err"
until_true 120 is_state t5 RUNNING; echo "t5-running=$(state_of t5)"
kill -9 "$ctd"; wait "$ctd" 2>/dev/null
/usr/bin/containerd --config "$W/config.toml" >"$W/containerd2.log" 2>&1 &
ctd=$!
until_true 60 ctr version >/dev/null 2>&1; echo "t5-containerd-back=$?"
until_true 30 is_state t5 RUNNING; echo "t5-after-restart=$(state_of t5)"
echo "t5-shims=$(shim_pids | wc -l)"
echo "t5-vmms=$(vmm_pids | wc -l)"
ctr task kill -s KILL t5 >"$W/t5k.out" 2>&1; echo "t5-kill-rc=$?"; lines t5-kill "$W/t5k.out"
until_true 60 is_state t5 STOPPED; echo "t5-after-kill=$(state_of t5)"
ctr task rm t5 >"$W/t5rm.out" 2>&1; echo "t5-rm-rc=$?"; lines t5-rm "$W/t5rm.out"
ctr container rm t5 >"$W/t5crm.out" 2>&1; echo "t5-container-rm-rc=$?"
lines containerd2-log-podvm "$W/containerd2.log" | grep -i 'error\|podvm\|shim' | tail -n 20
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
