#!/bin/sh
# Runs inside L1 (see pods.sh): times podvm run, podvm boot and QEMU microvm, interleaved, writing
# results/{run,boot,qemu}.txt lines "FIRST_OUTPUT_US EXIT_US RC" (QEMU: first output = exit).
runs=$1; qemu=$2
res=/payload/results; mkdir -p $res
cd /payload
. ./l1-lib.sh
# timed NAME CMD...: runs CMD, noting when its first output line arrives and when it exits.
timed() {
  name=$1; shift
  t0=$(now)
  first=$( { "$@" 2>>$res/$name.err; echo "rc=$?" >/tmp/rc; } | { read -r _; now; cat >/dev/null; } )
  t1=$(now); rc=$(cut -d= -f2 /tmp/rc)
  echo "$(( (first - t0) * 10000 )) $(( (t1 - t0) * 10000 )) $rc" >> $res/$name.txt
}
podvm --dir state fetch oci:demo:demo >/dev/null 2>>$res/fetch.err || { echo "fetch failed"; exit 1; }
cmdline="$(podvm boot --dump-initramfs /tmp/initrd.cpio --initrd-dir rootfs -- /bin/echo hi) 8250.nr_uarts=2"
i=0
while [ $i -lt $runs ]; do
  timed run podvm --dir state run --memory 128Mi --cpu 1 oci:demo:demo --exec /bin/echo -- hi
  timed boot podvm boot --memory 256 --cpus 1 --rootfs rootfs -- /bin/echo hi
  t0=$(now); qemu_microvm $qemu /tmp/initrd.cpio "$cmdline" >/dev/null 2>>$res/qemu.err; rc=$?; t1=$(now)
  echo "$(( (t1 - t0) * 10000 )) $(( (t1 - t0) * 10000 )) $rc" >> $res/qemu.txt
  grep -c '"type":"exited"' /tmp/qemu-agent.out >> $res/qemu-agent-exits.txt 2>/dev/null
  podvm --dir state gc --grace-period 0s >/dev/null 2>&1
  i=$((i + 1))
done
