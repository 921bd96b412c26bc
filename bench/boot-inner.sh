#!/bin/sh
# Runs inside L1 (see boot.sh): times podvm and QEMU microvm, interleaved, writing results/*.txt.
runs=$1; qemu=$2
res=/payload/results; mkdir -p $res
cd /payload
# Busybox date has no %N: /proc/uptime gives centiseconds, plenty for multi-second nested boots.
now() { cut -d" " -f1 /proc/uptime | tr -d .; }
# QEMU gets no vsock device here: a second UART lets the agent fall back to ttyS1.
cmdline="$(podvm boot --dump-initramfs /tmp/initrd.cpio --initrd-dir rootfs -- /bin/true) 8250.nr_uarts=2"
# The agent talks on ttyS1: give QEMU's microvm a second UART there, as podvm has.
qemu_boot() {
  $qemu -M microvm,isa-serial=on,rtc=off -enable-kvm -cpu host -smp 1 -m 256 -nodefaults \
    -no-user-config -nographic -no-reboot -serial file:/tmp/qemu-console.log \
    -chardev file,id=agent,path=/tmp/qemu-agent.out -device isa-serial,chardev=agent,iobase=0x2f8,irq=3 \
    -kernel lib/podvm/vmlinux -initrd /tmp/initrd.cpio -append "$cmdline"
}
i=0
while [ $i -lt $runs ]; do
  t0=$(now); podvm boot --initrd-dir rootfs -- /bin/true >/dev/null 2>>$res/podvm.err; rc=$?; t1=$(now)
  echo "$(( (t1 - t0) * 10000 )) $rc" >> $res/podvm.txt
  rm -f /tmp/qemu-agent.out
  t0=$(now); qemu_boot >/dev/null 2>>$res/qemu.err; rc=$?; t1=$(now)
  echo "$(( (t1 - t0) * 10000 )) $rc" >> $res/qemu.txt
  grep -c '"type":"exited"' /tmp/qemu-agent.out >> $res/qemu-agent-exits.txt 2>/dev/null
  i=$((i + 1))
done
podvm boot --stats --initrd-dir rootfs -- /bin/true 2>&1 | grep podvm-stats > $res/stats.txt
tail -5 /tmp/qemu-console.log > $res/qemu-console-tail.txt 2>/dev/null
