#!/bin/sh
# Runs inside L1 (or on a host with real KVM) for tests/e2e_load.rs, from the payload root:
# starts N pods at once (`podvm run` of IMAGE, pod n prints `pod-n` and exits n) while two loops
# run `podvm status`, `logs` (one) and `list`, `gc` (the other) against them, then reports what
# everyone saw.
# Usage: pods-at-once.sh N IMAGE [MEMORY] [DEADLINE_SECONDS]
# Output, one fact per line (tests/e2e_load.rs parses it):
#   pod N rc=R | pod N out=LINE | pod N err=LINE | pod N timeout
#   retry N first-err=LINE       pod N's guest died silently before its agent started: run again
#   cmd VERB rc=R err=LINE        a concurrent command that failed
#   gone VERB UUID err=LINE       a concurrent command that failed because the pod it had picked
#                                 was removed by a retry (below): not a failure of podvm
#   cmds VERB ok=K failed=F       totals per verb
#   seen status N JSON            what a concurrent `status --format json` printed (one line)
#   seen list JSON                what a concurrent `list --format json` printed (one line)
#   raw N JSON                    a snapshot of the pod's status.json taken during the loop
#   final-status N JSON | final-logs N LINE | final-logs-rc N R | final-list JSON
# podvm's own error lines are printed as `podvm-said: ...`: the nested runner retries a check
# whose output has podvm's line for a guest that died silently, and this test must see it.
n=${1:?usage: pods-at-once.sh N IMAGE [MEMORY] [DEADLINE_SECONDS]}
image=${2:?usage: pods-at-once.sh N IMAGE [MEMORY] [DEADLINE_SECONDS]}
memory=${3:-32Mi}
deadline=${4:-300}
P="podvm --dir state"
d=load
rm -rf $d; mkdir -p $d

# one_line FILE: the file on one line, podvm's error prefix renamed (see above).
one_line() { tr '\n' ' ' <"$1" | sed 's/podvm: /podvm-said: /g'; }

# The uuid of pod $1 once run has written it whole, else nothing.
uuid_of() { [ -f $d/$1.uuid ] && [ "$(wc -c <$d/$1.uuid)" = 37 ] && cat $d/$1.uuid; }

# try VERB CMD...: runs a podvm command, counting it and keeping its stdout in $d/VERB.out;
# a failure is reported with its first stderr line. With $about set to a pod's uuid, a failure
# after that pod was retired (removed for a retry, see below) is reported as `gone` instead.
try() {
  verb=$1; shift
  "$@" >$d/$verb.out 2>$d/$verb.err
  rc=$?
  if [ $rc -eq 0 ]; then
    echo ok >>$d/$verb.count
    return 0
  fi
  if [ -n "$about" ] && grep -qxF "$about" $d/retired 2>/dev/null; then
    echo "gone $verb $about err=$(head -1 $d/$verb.err | sed 's/podvm: /podvm-said: /')"
    return 1
  fi
  echo failed >>$d/$verb.count
  echo "cmd $verb rc=$rc err=$(head -1 $d/$verb.err | sed 's/podvm: /podvm-said: /')"
  return 1
}

# The concurrent loops, until $d/stop appears: one asks about every pod known so far (and reads
# its status.json), the other lists the store and collects garbage, each as fast as it can.
hammer_pods() {
  while [ ! -e $d/stop ]; do
    i=1
    while [ $i -le $n ]; do
      u=$(uuid_of $i)
      about=$u
      if [ -n "$u" ]; then
        try status $P status --format json $u && echo "seen status $i $(tr -d '\n' <$d/status.out)"
        try logs $P logs $u
        for f in state/pods/*/$u/status.json; do
          cat $f >$d/raw.json 2>/dev/null && echo "raw $i $(tr -d '\n' <$d/raw.json)"
        done
      fi
      i=$((i + 1))
    done
  done
  about=
}
hammer_store() {
  while [ ! -e $d/stop ]; do
    try list $P list --format json && echo "seen list $(tr -d '\n' <$d/list.out)"
    try gc $P gc
  done
}

hammer_pods >$d/hammer-pods.txt &
pods_pid=$!
hammer_store >$d/hammer-store.txt &
store_pid=$!

i=1
while [ $i -le $n ]; do
  $P run --uuid-file-save $d/$i.uuid $image --memory $memory \
    --exec /bin/sh -- -c "echo pod-$i; exit $i" >$d/$i.out 2>$d/$i.err &
  echo $! >$d/$i.pid
  i=$((i + 1))
done

# Wait for every pod, at most $deadline seconds in all (busy-polling in 0.2 s steps).
end=$(( $(cut -d. -f1 /proc/uptime) + deadline ))
i=1
while [ $i -le $n ]; do
  pid=$(cat $d/$i.pid)
  while kill -0 $pid 2>/dev/null && [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do sleep 0.2; done
  if kill -0 $pid 2>/dev/null; then
    echo "pod $i timeout"
    kill -9 $pid 2>/dev/null
  fi
  wait $pid
  echo $? >$d/$i.rc
  i=$((i + 1))
done

# A pod whose guest was reset before its agent started, with nothing on its console, is the
# nested environment's silent death (tests/nested/README.md, issue 20): as the nested runner
# does for a check, it runs once more, alone, while the loops go on; the first attempt's
# evidence is reported (`retry N ...`) and its pod removed, so the records stay one per pod.
i=1
while [ $i -le $n ]; do
  if [ "$(cat $d/$i.rc)" = 125 ] && grep -q "the guest stopped before the agent started" $d/$i.err; then
    echo "retry $i first-err=$(one_line $d/$i.err)"
    first=$(uuid_of $i)
    # Retired before it is removed: the loop may have picked its uuid already.
    echo "$first" >>$d/retired
    for k in $(seq 50); do $P rm $first >/dev/null 2>&1 && break; sleep 0.2; done
    $P run --uuid-file-save $d/$i.uuid $image --memory $memory \
      --exec /bin/sh -- -c "echo pod-$i; exit $i" >$d/$i.out 2>$d/$i.err
    echo $? >$d/$i.rc
  fi
  echo "pod $i rc=$(cat $d/$i.rc)"
  echo "pod $i out=$(one_line $d/$i.out)"
  [ -s $d/$i.err ] && echo "pod $i err=$(one_line $d/$i.err)"
  i=$((i + 1))
done

touch $d/stop
wait $pods_pid $store_pid
cat $d/hammer-pods.txt $d/hammer-store.txt
for verb in status logs list gc; do
  echo "cmds $verb ok=$(grep -cx ok $d/$verb.count 2>/dev/null) failed=$(grep -cx failed $d/$verb.count 2>/dev/null)"
done

# With everything quiet: what the records say now.
i=1
while [ $i -le $n ]; do
  u=$(uuid_of $i)
  if [ -n "$u" ]; then
    echo "final-status $i $($P status --format json $u 2>&1 | tr -d '\n' | sed 's/podvm: /podvm-said: /g')"
    $P logs $u >$d/logs.out 2>$d/logs.err
    echo "final-logs-rc $i $?"
    echo "final-logs $i $(one_line $d/logs.out)"
  fi
  i=$((i + 1))
done
echo "final-list $($P list --format json 2>&1 | tr -d '\n' | sed 's/podvm: /podvm-said: /g')"
