#!/bin/sh
# Runs inside L1 (see boot-ab.sh): `podvm-a boot` and `podvm boot`, interleaved, to results/*.txt
# (milliseconds and exit code per run).
runs=$1
res=/payload/results; mkdir -p $res
cd /payload
. ./l1-lib.sh
i=0
while [ $i -lt $runs ]; do
  for b in podvm-a podvm; do
    trace=0; [ "$b" = podvm ] && trace=${BOOT_AB_TRACE:-0}
    t0=$(now); PODVM_TRACE=$trace $b boot --initrd-dir rootfs -- /bin/true >/dev/null 2>>$res/$b.err; rc=$?; t1=$(now)
    echo "$(( (t1 - t0) * 10 )) $rc" >> $res/$b.txt
  done
  i=$((i + 1))
done
for b in podvm-a podvm; do
  $b boot --stats --initrd-dir rootfs -- /bin/true 2>&1 | grep podvm-stats > $res/$b-stats.txt
done
