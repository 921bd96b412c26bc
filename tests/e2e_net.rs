//! End-to-end tests of guest networking: `podvm boot --tap ...` gives the guest a virtio-net NIC
//! (vhost-net on an L1 tap) that the agent configures before the command runs. All checks run in
//! ONE nested L1 boot (or directly on a host with real KVM). L1 is the "host": it owns the tap's
//! other end (10.0.2.1/24), serves pages with busybox httpd and fetches the guest's.

mod support;

use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// iproute2's `ip` (busybox's has no `tuntap` and no `netns`), carried into L1.
const IP: &str = "/usr/sbin/ip";
/// The guest's MAC on tap0.
const MAC: &str = "02:00:00:aa:bb:01";

/// A busybox root tree for `--initrd-dir`, tap0 with L1's address, and the files L1 serves.
const SETUP: &str = "set -e; mkdir -p rootfs/bin rootfs/etc rootfs/tmp && cp lib/podvm/busybox rootfs/bin/busybox; \
     for a in $(rootfs/bin/busybox --list); do [ -e rootfs/bin/$a ] || ln -s busybox rootfs/bin/$a; done; \
     /usr/sbin/ip tuntap add dev tap0 mode tap; ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up; \
     mkdir -p www; echo served-by-l1 > www/index.html; head -c 3000000 /dev/urandom > www/big; \
     md5sum < www/big | cut -d' ' -f1 > www/big.md5; echo setup-ready";

/// `podvm boot` with one NIC on tap0.
fn boot_tap0() -> String {
    format!(
        "podvm boot --initrd-dir rootfs --tap tap0 --mac {MAC} --guest-ip 10.0.2.2/24 \
         --guest-ip fd00:2::2/64 --guest-gateway 10.0.2.1 --guest-mtu 1400"
    )
}

/// In the guest: what the agent configured.
const GUEST_INFO: &str = "#!/bin/sh\n\
     cat /sys/class/net/eth0/address\n\
     ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*'\n\
     ip -6 addr show dev eth0 | grep -o 'inet6 fd00:2::2/64'\n\
     cat /sys/class/net/eth0/mtu\n\
     ip route | grep -o 'default via [0-9.]*'\n\
     ip -4 addr show dev lo | grep -o 'inet 127.0.0.1/8'\n\
     ls /sys/class/net | tr '\\n' ' '; echo\n\
     cut -c1-33 /sys/class/net/eth0/device/features\n";

// busybox 1.35's wget crashes with -T: timeouts come from `timeout` instead.

/// In the guest: ping L1, fetch its page and a 3 MB file (checksummed on the guest).
const GUEST_CLIENT: &str = "#!/bin/sh\n\
     ping -c 2 -W 5 10.0.2.1 > /tmp/ping && echo ping-ok || cat /tmp/ping\n\
     timeout 20 wget -q -O - http://10.0.2.1:8080/index.html\n\
     timeout 60 wget -q -O /tmp/big http://10.0.2.1:8080/big && md5sum < /tmp/big | cut -d' ' -f1\n";

/// In the guest: serve a page and a 3 MB file until killed.
const GUEST_SERVER: &str = "#!/bin/sh\n\
     mkdir -p /www && echo served-by-guest > /www/index.html\n\
     head -c 3000000 /dev/urandom > /www/big && md5sum < /www/big | cut -d' ' -f1 > /www/big.md5\n\
     httpd -p 80 -h /www && echo guest-httpd-started >&2\n\
     sleep 600\n";

/// L1: the guest fetches from L1's httpd.
const CLIENT_CHECK: &str = "httpd -f -p 10.0.2.1:8080 -h $PWD/www & h=$!; \
     BOOT -- /bin/podvm-net-client; echo rc=$?; cat www/big.md5; kill $h";

/// L1: L1 fetches from the guest's httpd while the VM runs in the background.
const SERVER_CHECK: &str = "BOOT -- /bin/podvm-net-server & p=$!; \
     for i in $(seq 120); do timeout 5 wget -q -O page http://10.0.2.2/index.html 2>/dev/null && break; sleep 1; done; \
     cat page; timeout 60 wget -q -O big http://10.0.2.2/big && timeout 5 wget -q -O - http://10.0.2.2/big.md5 && md5sum < big | cut -d' ' -f1; \
     kill $p; wait $p; echo podvm-stopped";

/// L1: a tap inside a network namespace; podvm opens it from there, and stays in L1's netns.
const NETNS_CHECK: &str = "set -e; /usr/sbin/ip netns add podvmns; \
     nsenter --net=/run/netns/podvmns /usr/sbin/ip tuntap add dev tapns mode tap; \
     nsenter --net=/run/netns/podvmns /usr/sbin/ip addr add 10.0.3.1/24 dev tapns; \
     nsenter --net=/run/netns/podvmns /usr/sbin/ip link set tapns up; set +e; \
     podvm boot --initrd-dir rootfs --tap tapns --tap-netns /run/netns/podvmns --mac 02:00:00:00:03:02 \
       --guest-ip 10.0.3.2/24 -- /bin/sh -c 'ping -c 2 -W 5 10.0.3.1 >/dev/null && echo ping-in-netns-ok'; \
     echo rc=$?; [ -e /sys/class/net/tapns ] && echo tapns-visible-in-l1 || echo tapns-only-in-netns";

static RESULTS: E2e = E2e::new("setup");

/// The result of check `name`, or `None` (test skipped) when artifacts are missing.
fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    let boot = boot_tap0();
    let batch = e2e::batch("e2e-net")?
        .host_tool(IP)
        .payload_executable("rootfs/bin/podvm-net-info", GUEST_INFO)
        .payload_executable("rootfs/bin/podvm-net-client", GUEST_CLIENT)
        .payload_executable("rootfs/bin/podvm-net-server", GUEST_SERVER)
        .check("setup", SETUP)
        .check("info", &format!("{boot} -- /bin/podvm-net-info"))
        .check(
            "userspace_features",
            &format!("PODVM_NET_BACKEND=userspace {boot} -- cut -c1-33 /sys/class/net/eth0/device/features"),
        )
        .check("client", &CLIENT_CHECK.replace("BOOT", &boot))
        .check("server", &SERVER_CHECK.replace("BOOT", &boot))
        .check("netns", NETNS_CHECK)
        .check(
            "userspace_client",
            &CLIENT_CHECK.replace("BOOT", &format!("PODVM_NET_BACKEND=userspace {boot}")),
        )
        .check(
            "userspace_server",
            &SERVER_CHECK.replace("BOOT", &format!("PODVM_NET_BACKEND=userspace {boot}")),
        )
        .check(
            "new_tap",
            "podvm boot --initrd-dir rootfs --tap tapnew --mac 02:00:00:00:04:02 -- \
             /bin/sh -c 'cat /sys/class/net/eth0/address /sys/class/net/eth0/operstate'; \
             echo rc=$?; [ -e /sys/class/net/tapnew ] && echo tapnew-left || echo tapnew-gone",
        )
        .check(
            "no_nic",
            "podvm boot --initrd-dir rootfs -- /bin/sh -c \
             \"ls /sys/class/net | tr '\\n' ' '; echo; ip -4 addr show dev lo | grep -o 'inet 127.0.0.1/8'\"",
        );
    Some(batch)
}

#[test]
fn the_agent_configures_eth0_by_mac_with_addresses_mtu_route_and_lo() {
    let Some(result) = check("info") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            MAC,
            "inet 10.0.2.2/24",
            "inet6 fd00:2::2/64",
            "1400",
            "default via 10.0.2.1",
            "inet 127.0.0.1/8",
            "eth0 lo ",
            VHOST_FEATURES,
        ],
        "{result:?}"
    );
}

/// Negotiated feature bits 0..=32 as the guest's sysfs shows them with vhost-net: CSUM,
/// GUEST_CSUM, MAC, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF, INDIRECT_DESC, EVENT_IDX, VERSION_1.
const VHOST_FEATURES: &str = "110001011001100100000000000011001";
/// The same with the userspace backend: MAC and VERSION_1 only.
const USERSPACE_FEATURES: &str = "000001000000000000000000000000001";

#[test]
fn the_userspace_backend_offers_no_offloads() {
    let Some(result) = check("userspace_features") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), USERSPACE_FEATURES, "{result:?}");
}

#[test]
fn the_guest_pings_and_downloads_from_the_host_side_of_the_tap() {
    assert_client_traffic("client");
}

#[test]
fn without_vhost_net_the_userspace_backend_carries_the_same_traffic() {
    assert_client_traffic("userspace_client");
    assert_server_traffic("userspace_server");
}

/// The guest pinged L1 and fetched its page and big file intact.
fn assert_client_traffic(name: &str) {
    let Some(result) = check(name) else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{result:?}");
    assert_eq!(lines[0], "ping-ok", "{result:?}");
    assert_eq!(lines[1], "served-by-l1", "{result:?}");
    assert_eq!(lines[3], "rc=0", "{result:?}");
    // The 3 MB file arrived intact: the guest's checksum equals L1's.
    assert_eq!(lines[2], lines[4], "{result:?}");
    assert_eq!(lines[2].len(), 32, "{result:?}");
}

#[test]
fn the_host_downloads_from_an_httpd_in_the_guest() {
    assert_server_traffic("server");
}

/// L1 fetched the guest's page and big file intact.
fn assert_server_traffic(name: &str) {
    let Some(result) = check(name) else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{result:?}");
    assert_eq!(lines[0], "served-by-guest", "{result:?}");
    // The guest's checksum of its file equals L1's checksum of what it received.
    assert_eq!(lines[1], lines[2], "{result:?}");
    assert_eq!(lines[1].len(), 32, "{result:?}");
    assert_eq!(lines[3], "podvm-stopped", "{result:?}");
}

#[test]
fn a_tap_in_a_network_namespace_is_used_without_moving_podvm() {
    let Some(result) = check("netns") else {
        return;
    };
    assert_eq!(
        result.stdout.lines().collect::<Vec<_>>(),
        ["ping-in-netns-ok", "rc=0", "tapns-only-in-netns"],
        "{result:?}"
    );
}

#[test]
fn a_tap_that_does_not_exist_is_created_for_the_vm_and_goes_with_it() {
    let Some(result) = check("new_tap") else {
        return;
    };
    assert_eq!(
        result.stdout.lines().collect::<Vec<_>>(),
        ["02:00:00:00:04:02", "up", "rc=0", "tapnew-gone"],
        "{result:?}"
    );
}

#[test]
fn without_a_nic_the_guest_has_only_loopback_and_it_is_up() {
    let Some(result) = check("no_nic") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(
        result.stdout.lines().collect::<Vec<_>>(),
        ["lo ", "inet 127.0.0.1/8"],
        "{result:?}"
    );
}
