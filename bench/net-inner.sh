#!/bin/sh
# Runs inside L1 (see net.sh): podvm (vhost-net, then the userspace backend), QEMU microvm with
# vhost-net and a veth netns download the same file from busybox httpd in L1, interleaved;
# appends centiseconds to results/{vhost,userspace,qemu,veth}.txt.
runs=$1; mib=$2; qemu=$3
res=/payload/results; mkdir -p $res
cd /payload
. ./l1-lib.sh
ip=/usr/sbin/ip
mac=02:00:00:00:02:02
mkdir -p www && dd if=/dev/urandom of=www/blob bs=1M count=$mib 2>/dev/null
$ip tuntap add dev tap0 mode tap && $ip addr add 10.0.2.1/24 dev tap0 && $ip link set tap0 up
$ip netns add peer && $ip link add v0 type veth peer name v1 && $ip link set v1 netns peer
$ip addr add 10.0.4.1/24 dev v0 && $ip link set v0 up
nsenter --net=/run/netns/peer $ip addr add 10.0.4.2/24 dev v1
nsenter --net=/run/netns/peer $ip link set v1 up; nsenter --net=/run/netns/peer $ip link set lo up
httpd -p 8080 -h /payload/www
# The timed download, with the centisecond clock of l1-lib.sh (the same in L1 and in the guest).
fetch='now() { cut -d" " -f1 /proc/uptime | tr -d .; }; t0=$(now); wget -q -O /dev/null http://HOST:8080/blob && echo "RESULT $(( $(now) - t0 ))"'
guest=$(echo "$fetch" | sed s/HOST/10.0.2.1/)
veth=$(echo "$fetch" | sed s/HOST/10.0.4.1/)
boot="podvm boot --initrd-dir rootfs --tap tap0 --mac $mac --guest-ip 10.0.2.2/24"
# QEMU boots podvm's initramfs (agent + boot spec with the same network) from the same tap.
cmdline="$($boot --dump-initramfs /tmp/initrd-net.cpio -- /bin/sh -c "$guest") 8250.nr_uarts=2"
qemu_run() {
  rm -f /tmp/qemu-agent.out
  # acpi=off: QEMU then announces its virtio-mmio devices on the kernel command line, as podvm does.
  timeout 600 $qemu -M microvm,isa-serial=on,rtc=off,acpi=off -enable-kvm -cpu host -smp 1 -m 256 \
    -nodefaults -no-user-config -nographic -no-reboot -serial file:/tmp/qemu-console.log \
    -chardev file,id=agent,path=/tmp/qemu-agent.out -device isa-serial,chardev=agent,iobase=0x2f8,irq=3 \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=on \
    -device virtio-net-device,netdev=n0,mac=$mac \
    -kernel lib/podvm/vmlinux -initrd /tmp/initrd-net.cpio -append "$cmdline"
  grep -ao 'RESULT [0-9]*' /tmp/qemu-agent.out | cut -d' ' -f2
}
i=0
while [ $i -lt $runs ]; do
  $boot -- /bin/sh -c "$guest" 2>>$res/vhost.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/vhost.txt
  PODVM_NET_BACKEND=userspace $boot -- /bin/sh -c "$guest" 2>>$res/userspace.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/userspace.txt
  if [ "$qemu" != none ]; then qemu_run >> $res/qemu.txt 2>>$res/qemu.err; fi
  nsenter --net=/run/netns/peer sh -c "$veth" 2>>$res/veth.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/veth.txt
  i=$((i + 1))
done
tail -5 /tmp/qemu-console.log > $res/qemu-console-tail.txt 2>/dev/null
true
