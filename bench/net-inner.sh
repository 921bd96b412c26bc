#!/bin/sh
# Runs inside L1 (see net.sh): the guest (vhost-net, then userspace backend) and a veth netns
# download the same file from busybox httpd in L1, interleaved; appends centiseconds to
# results/{vhost,userspace,veth}.txt.
runs=$1; mib=$2
res=/payload/results; mkdir -p $res
cd /payload
ip=/usr/sbin/ip
mkdir -p www && dd if=/dev/urandom of=www/blob bs=1M count=$mib 2>/dev/null
$ip tuntap add dev tap0 mode tap && $ip addr add 10.0.2.1/24 dev tap0 && $ip link set tap0 up
$ip netns add peer && $ip link add v0 type veth peer name v1 && $ip link set v1 netns peer
$ip addr add 10.0.4.1/24 dev v0 && $ip link set v0 up
nsenter --net=/run/netns/peer $ip addr add 10.0.4.2/24 dev v1
nsenter --net=/run/netns/peer $ip link set v1 up; nsenter --net=/run/netns/peer $ip link set lo up
httpd -p 8080 -h /payload/www
# Centisecond clock from /proc/uptime (busybox date has no %N), the same in L1 and in the guest.
fetch='now() { cut -d" " -f1 /proc/uptime | tr -d .; }; t0=$(now); wget -q -O /dev/null http://HOST:8080/blob && echo "RESULT $(( $(now) - t0 ))"'
guest=$(echo "$fetch" | sed s/HOST/10.0.2.1/)
veth=$(echo "$fetch" | sed s/HOST/10.0.4.1/)
boot="podvm boot --initrd-dir rootfs --tap tap0 --mac 02:00:00:00:02:02 --guest-ip 10.0.2.2/24"
i=0
while [ $i -lt $runs ]; do
  $boot -- /bin/sh -c "$guest" 2>>$res/vhost.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/vhost.txt
  PODVM_NET_BACKEND=userspace $boot -- /bin/sh -c "$guest" 2>>$res/userspace.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/userspace.txt
  nsenter --net=/run/netns/peer sh -c "$veth" 2>>$res/veth.err | grep -a '^RESULT' | cut -d' ' -f2 >> $res/veth.txt
  i=$((i + 1))
done
true
