#!/bin/sh
# Runs inside L1 (see boot.sh): times podvm and QEMU microvm, interleaved, writing results/*.txt.
runs=$1; qemu=$2
res=/payload/results; mkdir -p $res
cd /payload
. ./l1-lib.sh
# QEMU gets no vsock device here: a second UART lets the agent fall back to ttyS1.
cmdline="$(podvm boot --dump-initramfs /tmp/initrd.cpio --initrd-dir rootfs -- /bin/true) 8250.nr_uarts=2"
i=0
while [ $i -lt $runs ]; do
  t0=$(now); podvm boot --initrd-dir rootfs -- /bin/true >/dev/null 2>>$res/podvm.err; rc=$?; t1=$(now)
  echo "$(( (t1 - t0) * 10000 )) $rc" >> $res/podvm.txt
  t0=$(now); qemu_microvm $qemu /tmp/initrd.cpio "$cmdline" >/dev/null 2>>$res/qemu.err; rc=$?; t1=$(now)
  echo "$(( (t1 - t0) * 10000 )) $rc" >> $res/qemu.txt
  grep -c '"type":"exited"' /tmp/qemu-agent.out >> $res/qemu-agent-exits.txt 2>/dev/null
  i=$((i + 1))
done
podvm boot --stats --initrd-dir rootfs -- /bin/true 2>&1 | grep podvm-stats > $res/stats.txt
tail -5 /tmp/qemu-console.log > $res/qemu-console-tail.txt 2>/dev/null
