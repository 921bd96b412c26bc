#!/bin/sh
# Runs inside L1 (see load.sh), from /payload. Writes to results/:
#   at-once.txt  "N I T0 FIRST T1 RC OUTPUT" per pod of the round of N pods (times: centiseconds
#                of L1 uptime; FIRST = when its first output line came, T1 = when podvm exited)
#   mem.txt      "N UUID PEAK_BYTES" samples of each running pod's cgroup memory.peak, and
#                "N avail KIB" samples of L1's MemAvailable
#   skipped.txt  "N REASON" for a round L1 has too little memory for
#   soak.txt     "I WANT T0 FIRST T1 RC OUTPUT" per sequential pod (WANT: its exit code)
#   errors.txt   "ROUND I LINE" podvm's stderr (and the pod's last console line) of a failed pod,
#                and "ROUND I cause: CAUSE", the cause `podvm status` names (none if it names none)
#   soak-stopped.txt  why a soak stopped before COUNT pods (its MAX_SECS were up)
# Usage: load-inner.sh at-once N... | load-inner.sh soak COUNT [MAX_SECS]
mode=$1; shift
res=/payload/results; mkdir -p $res
tmp=/tmp/load; mkdir -p $tmp
cd /payload
. ./l1-lib.sh
P="podvm --dir state"
# Each pod's limit: it is stopped (busybox timeout: SIGTERM, podvm then stops the VM) after
# this; a lone pod takes ~8 s in L1, 25 at once up to ~90 s.
limit=600
[ "$mode" = soak ] && limit=120
# What a pod is assumed to need of L1's memory when deciding whether a round fits (MiB): a
# busybox pod's VM touches ~35 MiB, its VMM ~10 MiB, plus the page cache of its overlay.
per_pod_mib=64

$P fetch oci:demo:demo >/dev/null 2>>$res/fetch.err || { echo "fetch failed"; exit 1; }

# pod ROUND I WANT: one `podvm run` printing pod-I and exiting WANT, timed; prints its line.
pod() {
  round=$1 i=$2 want=$3
  f=$tmp/$round-$i
  t0=$(now)
  first=$( { timeout $limit $P run --uuid-file-save $f.uuid oci:demo:demo --memory 32Mi \
               --exec /bin/sh -- -c "echo pod-$i; exit $want" 2>$f.err; echo $? >$f.rc; } |
           { read -r line; echo "$line" >$f.out; now; cat >/dev/null; } )
  t1=$(now)
  rc=$(cat $f.rc)
  if [ "$rc" != "$want" ]; then
    # podvm's error with the guest's last console lines it appends (up to 12 lines).
    head -12 $f.err | grep -v '^$' | sed "s/^/$round $i /" >>$res/errors.txt
    u=$(cat $f.uuid 2>/dev/null)
    for c in state/pods/*/$u/console.log; do
      [ -n "$u" ] && [ -s "$c" ] && echo "$round $i console: $(tail -1 $c)" >>$res/errors.txt
    done
    # The cause `podvm status` names (guest-panic, triple-fault, no-agent, killed, ...).
    cause=$([ -n "$u" ] && $P status --format json $u 2>/dev/null | sed -n 's/^ *"cause": "\(.*\)",*$/\1/p')
    echo "$round $i cause: ${cause:-none}" >>$res/errors.txt
  fi
  echo "$t0 $first $t1 $rc $(cat $f.out)"
}

# sample ROUND: until $tmp/done exists, every pod cgroup's memory.peak and L1's MemAvailable.
sample() {
  while [ ! -e $tmp/done ]; do
    for c in /sys/fs/cgroup/podvm/pod-*; do
      [ -r $c/memory.peak ] && echo "$1 ${c##*/pod-} $(cat $c/memory.peak 2>/dev/null)"
    done
    echo "$1 avail $(awk '/^MemAvailable/ {print $2}' /proc/meminfo)"
    sleep 0.5
  done >>$res/mem.txt
}

clean() { $P gc --grace-period 0s >/dev/null 2>&1; $P gc --grace-period 0s >/dev/null 2>&1; }

case $mode in
at-once)
  for n in "$@"; do
    clean
    avail=$(( $(awk '/^MemAvailable/ {print $2}' /proc/meminfo) / 1024 ))
    if [ $avail -lt $(( n * per_pod_mib + 256 )) ]; then
      echo "$n L1 has $avail MiB available; $n pods need about $(( n * per_pod_mib + 256 )) MiB" >>$res/skipped.txt
      continue
    fi
    rm -f $tmp/done
    sample $n & sampler=$!
    i=1; pids=
    while [ $i -le $n ]; do
      (echo "$n $i $(pod $n $i $i)" >>$res/at-once.txt) &
      pids="$pids $!"
      i=$((i + 1))
    done
    # Every launcher ends within $limit (timeout stops its podvm).
    wait $pids
    touch $tmp/done; wait $sampler
  done
  ;;
soak)
  count=$1 max_secs=${2:-0}
  touch $tmp/done
  soak_start=$(date +%s)
  i=1
  while [ $i -le $count ]; do
    if [ "$max_secs" -gt 0 ] && [ $(( $(date +%s) - soak_start )) -ge "$max_secs" ]; then
      echo "$((i - 1)) of $count pods started when the soak's $max_secs s were up" >>$res/soak-stopped.txt
      break
    fi
    want=$(( i % 100 + 1 ))
    echo "$i $want $(pod soak $i $want)" >>$res/soak.txt
    [ $((i % 10)) -eq 0 ] && clean
    i=$((i + 1))
  done
  ;;
esac
clean
