#!/bin/sh
# Runs inside L1 (or on a host with real KVM) for tests/e2e_limits.rs, from the payload root:
# one pod writes MIB MiB to stdout with podvm's FLAGS, then this reports what its log holds.
# Usage: flood.sh ID MIB DEADLINE_SECONDS [FLAGS...]
# Output, one fact per line (tests/e2e_limits.rs parses it):
#   rc=R                      `podvm run`'s exit status (hung=1 instead when both attempts hung)
#   run-err=TEXT              the first lines of its stderr
#   size=N | replayed=N | note=LINE   the log file's size, what `podvm logs` replays, its last
#                             stderr line
#   mode MODE UID NAME        the modes of the pod's files
# A pod still running after DEADLINE_SECONDS is a hang: the pod's threads (state, CPU ticks,
# kernel wait channel, sampled twice) and its console's last lines go to stderr as `NOTE:` lines,
# the pod is stopped, and the flood runs once more (the first attempt's evidence stays in stderr).
id=${1:?usage: flood.sh ID MIB DEADLINE [FLAGS...]}
mib=${2:?usage: flood.sh ID MIB DEADLINE [FLAGS...]}
deadline=${3:?usage: flood.sh ID MIB DEADLINE [FLAGS...]}
shift 3
P="podvm --dir state"
IMAGE=oci:busybox-layout:latest

# threads PID: one line per thread of PID: name, state, user and system ticks, wait channel.
threads() {
  for t in /proc/$1/task/*; do
    echo "NOTE:   thread $(cat $t/comm 2>/dev/null) $(cut -d' ' -f3,14,15 $t/stat 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
  done
}

# evidence PID UUID: what a hung pod is doing, on stderr.
evidence() {
  echo "NOTE: attempt $attempt: podvm run (pid $1, pod $2) still running after ${deadline}s; its threads:"
  threads $1
  sleep 5
  echo "NOTE: 5 s later:"
  threads $1
  echo "NOTE: its console's last lines:"
  tail -5 state/pods/run/$2/console.log 2>/dev/null | sed 's/^/NOTE:   /'
  echo "NOTE: L1's kernel log, last lines:"
  dmesg 2>/dev/null | tail -5 | sed 's/^/NOTE:   /'
} >&2

# attempt: runs the flood; sets rc, or hung=1 after the deadline (the pod then stopped).
attempt() {
  rm -f $id.uuid
  $P run "$@" --uuid-file-save $id.uuid $IMAGE --exec /bin/sh -- -c \
    "dd if=/dev/zero bs=1M count=$mib 2>/dev/null" >/dev/null 2>$id.run.err &
  pid=$!
  waited=0 hung=0
  while kill -0 $pid 2>/dev/null && [ $waited -lt $deadline ]; do
    sleep 1; waited=$((waited + 1))
  done
  if kill -0 $pid 2>/dev/null; then
    hung=1
    evidence $pid "$(cat $id.uuid 2>/dev/null)"
    timeout 60 $P stop --force "$(cat $id.uuid)" >/dev/null 2>&1 || kill -9 $pid
  fi
  wait $pid
  rc=$?
}

attempt=1
attempt "$@"
if [ $hung = 1 ]; then
  attempt=2
  attempt "$@"
fi
if [ $hung = 1 ]; then
  echo hung=1
else
  echo rc=$rc
fi
echo "run-err=$(head -3 $id.run.err | tr '\n' ' ')"
p=state/pods/run/$(cat $id.uuid)
echo size=$(stat -c %s $p/logs/*.log)
echo replayed=$($P logs $(cat $id.uuid) 2>$id.err | wc -c)
echo "note=$(tail -1 $id.err)"
for f in state state/pods state/pods/run $p $p/logs $p/logs/*.log $p/lock $p/pod $p/status.json $p/console.log; do
  echo mode $(stat -c '%a %u' $f) ${f#$p/}
done
