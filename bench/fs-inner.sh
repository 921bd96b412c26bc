#!/bin/sh
# Runs inside L1 (see fs.sh): the same guest command on a virtio-fs share, under podvm and under
# QEMU microvm + virtiofsd, interleaved; appends "write_cs read_cs untar_cs warm_cs meta_cs
# meta_entries" lines to results/{podvm,qemu}.txt (centiseconds: write+fsync, cold read,
# untar+sync, read again, metadata walk; then the entries the walk found, to check it ran).
runs=$1; mib=$2; qemu=$3; vfsd=$4
res=/payload/results; mkdir -p $res
cd /payload
# In the guest: centisecond clock from /proc/uptime (busybox date has no %N), leading zeros
# dropped (under 1 s of uptime "0.89" would be 089, which sh arithmetic rejects as octal).
guest='now() { cut -d" " -f1 /proc/uptime | tr -d . | sed "s/^0*//"; }; rm -rf /bench.bin /untar; mkdir /untar;
t0=$(now); dd if=/dev/zero of=/bench.bin bs=1M count='$mib' 2>/dev/null; sync /bench.bin; t1=$(now);
echo 3 > /proc/sys/vm/drop_caches; t2=$(now); cat /bench.bin > /dev/null; t3=$(now);
t4=$(now); tar xf /tree.tar -C /untar; sync; t5=$(now);
t6=$(now); cat /bench.bin > /dev/null; t7=$(now);
echo 3 > /proc/sys/vm/drop_caches; t8=$(now); n=$(find /meta | wc -l); ls -lR /meta > /dev/null; t9=$(now);
echo "RESULT $((t1 - t0)) $((t3 - t2)) $((t5 - t4)) $((t7 - t6)) $((t9 - t8)) $n"; rm -rf /bench.bin /untar'
cp -a rootfs rootfs-q
cmdline="$(podvm boot --dump-initramfs /tmp/initrd.cpio --rootfs rootfs-q -- /bin/sh -c "$guest") 8250.nr_uarts=2"
qemu_run() {
  rm -f /tmp/vfsd.sock /tmp/qemu-agent.out
  # acpi=off: QEMU then announces its virtio-mmio devices on the kernel command line, as podvm does.
  $vfsd --socket-path=/tmp/vfsd.sock --shared-dir /payload/rootfs-q --cache auto --xattr --sandbox none \
    2>>$res/virtiofsd.err &
  vpid=$!
  w=0; while [ ! -S /tmp/vfsd.sock ] && [ $w -lt 100 ]; do sleep 0.1; w=$((w + 1)); done
  timeout 240 $qemu -M microvm,isa-serial=on,rtc=off,acpi=off,memory-backend=mem -enable-kvm -cpu host -smp 1 -m 256 \
    -object memory-backend-memfd,id=mem,size=256M,share=on -nodefaults -no-user-config -nographic \
    -no-reboot -serial file:/tmp/qemu-console.log \
    -chardev file,id=agent,path=/tmp/qemu-agent.out -device isa-serial,chardev=agent,iobase=0x2f8,irq=3 \
    -chardev socket,id=vfs,path=/tmp/vfsd.sock -device vhost-user-fs-device,chardev=vfs,tag=rootfs \
    -kernel lib/podvm/vmlinux -initrd /tmp/initrd.cpio -append "$cmdline"
  kill $vpid 2>/dev/null; wait $vpid 2>/dev/null
  grep -ao 'RESULT [0-9 ]*[0-9]' /tmp/qemu-agent.out | cut -d' ' -f2-
}
i=0
while [ $i -lt $runs ]; do
  podvm boot --rootfs rootfs -- /bin/sh -c "$guest" 2>>$res/podvm.err | grep '^RESULT' | cut -d' ' -f2- >> $res/podvm.txt
  if [ "$vfsd" != none ]; then qemu_run >> $res/qemu.txt 2>>$res/qemu.err; fi
  cp /tmp/qemu-agent.out $res/qemu-agent.out 2>/dev/null
  i=$((i + 1))
done
tail -5 /tmp/qemu-console.log > $res/qemu-console-tail.txt 2>/dev/null
true
