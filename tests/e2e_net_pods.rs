//! End-to-end tests of pod networking on the host side with real CNI plugins (Debian's
//! containernetworking-plugins, carried into L1 with iptables): the pod's netns with its veth
//! on the bridge and its tap connected by tc redirect, NAT rules, resolv.conf and hosts entries
//! in the guest, `status` networks, teardown after exit and after `kill -9` + `gc`, and bad
//! input (unknown network, malformed config, busy host port, `--net=host`) leaving nothing.
//! All checks in ONE nested L1 boot.

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use registry_support::Fixtures;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
const IP: &str = "/usr/sbin/ip";
const TC: &str = "/usr/sbin/tc";
const IPTABLES_SAVE: &str = "/usr/sbin/iptables-save";
const IPT: &str = "/usr/sbin/iptables";

/// Shell that waits until `file` says `started`.
fn wait_started(file: &str) -> String {
    format!(
        "for i in $(seq 900); do grep -q '^started' {file} 2>/dev/null && break; sleep 0.2; done"
    )
}

/// Prints what is left of pod `$u`'s network on the L1 host: namespaces, veths on podvm0, NAT
/// rules naming the pod.
fn leftovers(label: &str) -> String {
    format!(
        "echo {label}: netns=$(ls /run/netns 2>/dev/null | grep -c \"$u\") \
         veths=$({IP} -o link show master podvm0 2>/dev/null | wc -l) \
         nat=$({IPTABLES_SAVE} -t nat 2>/dev/null | grep -c \"$u\")"
    )
}

/// An HTTP GET of `/` with busybox nc (HOST PORT follow; `| tail -1` keeps the body's last
/// line). busybox wget segfaults in L1 and in pods here.
const HTTP_GET: &str = "printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 5";

/// Counts pods in the store.
const COUNT_PODS: &str = "find state/pods -mindepth 2 -maxdepth 2 | wc -l";

static RESULTS: E2e = E2e::new("fetch");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot.
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let layout = Fixtures::get().layout("busybox");
    let batch = e2e::batch("e2e-net-pods")?
        .payload_dir(&layout, "busybox-layout")
        .check("fetch", &format!("{PODVM} fetch {IMAGE}"))
        .check(
            "running_pod",
            &format!(
                "{PODVM} run --uuid-file-save n.uuid --net=default --dns 1.2.3.4 --hosts-entry 10.1.2.3=db --port 80:18080 \
                   {IMAGE} --exec /bin/sh -- -c 'cat /etc/resolv.conf /etc/hosts; ping -c 1 -W 1 db 2>&1 | head -1; echo started; sleep 8' >n.out 2>&1 & pid=$!; \
                 {wait}; u=$(cat n.uuid); \
                 echo netns=$(ls /run/netns | grep -c \"podvm-$u\"); \
                 echo links: $({IP} -n podvm-$u -o link | awk '{{print $2}}' | cut -d@ -f1 | tr -d : | sort | tr '\\n' ' '); \
                 echo eth0: $({TC} -n podvm-$u filter show dev eth0 ingress | grep -o 'Redirect to device [a-z0-9]*'); \
                 echo tap0: $({TC} -n podvm-$u filter show dev tap0 ingress | grep -o 'Redirect to device [a-z0-9]*'); \
                 {during}; \
                 echo dnat=$({IPTABLES_SAVE} -t nat | grep \"$u\" | grep -c 18080); \
                 {PODVM} status $u | grep networks=; \
                 {PODVM} status --format json $u | grep -c '\"ifname\": \"eth0\"'; \
                 wait $pid; echo rc=$?; cat n.out; \
                 {after}; echo record=$(ls state/pods/*/$u/net.json 2>/dev/null | wc -l)",
                wait = wait_started("n.out"),
                during = leftovers("during"),
                after = leftovers("after"),
            ),
        )
        .check(
            "kill9_then_gc",
            &format!(
                "{PODVM} run --uuid-file-save k.uuid --port 80:18082 {IMAGE} --exec /bin/sh -- -c 'echo started; sleep 600' >k.out 2>&1 & pid=$!; \
                 {wait}; u=$(cat k.uuid); kill -9 $pid; wait $pid; echo rc=$?; \
                 grep -q '^started' k.out || {{ cat k.out; tail -20 state/pods/*/$u/console.log; }} >&2; \
                 {before}; {PODVM} status $u | grep -E '^(state|networks)='; \
                 {PODVM} run --port 80:18082 {IMAGE} --exec /bin/true 2>&1 | grep -o 'already published by pod [0-9a-f-]*' | sed \"s/$u/KILLED/\"; \
                 {PODVM} gc --grace-period 0s 2>&1 | grep -v '^gc:'; {after}",
                wait = wait_started("k.out"),
                before = leftovers("killed"),
                after = leftovers("gc"),
            ),
        )
        .check(
            "unknown_network",
            &format!(
                "before=$({COUNT_PODS}); {PODVM} run --net default,nosuchnet {IMAGE} --exec /bin/true; echo rc=$?; \
                 echo pods-added=$(( $({COUNT_PODS}) - before )) netns=$(ls /run/netns | wc -l)"
            ),
        )
        .check(
            "malformed_config",
            &format!(
                "mkdir -p netd && echo '{{\"cniVersion\":\"1.0.0\",\"name\":' > netd/10-broken.conf; \
                 before=$({COUNT_PODS}); {PODVM} run --net-config netd {IMAGE} --exec /bin/true; echo rc=$?; \
                 echo pods-added=$(( $({COUNT_PODS}) - before )) netns=$(ls /run/netns | wc -l)"
            ),
        )
        .check(
            "port_in_use",
            &format!(
                "httpd -f -p 18083 & l=$!; sleep 0.5; before=$({COUNT_PODS}); \
                 {PODVM} run --port 80:18083 {IMAGE} --exec /bin/true; echo rc=$?; kill $l; \
                 echo pods-added=$(( $({COUNT_PODS}) - before )) netns=$(ls /run/netns | wc -l) \
                 veths=$({IP} -o link show master podvm0 2>/dev/null | wc -l)"
            ),
        )
        .check(
            "host_and_none",
            &format!(
                "{PODVM} run --net=host {IMAGE} --exec /bin/true; echo rc=$?; \
                 {PODVM} run --net=none --hosts-entry 10.9.8.7=nonet {IMAGE} --exec /bin/sh -- -c \
                   'grep nonet /etc/hosts; ls /etc/resolv.conf 2>&1 | grep -c \"No such\"'; echo rc=$?"
            ),
        )
        .check(
            "httpd_port",
            &format!(
                "mkdir -p l1www && echo served-by-l1 > l1www/index.html; httpd -f -p 18091 -h $PWD/l1www & l=$!; \
                 {PODVM} run --uuid-file-save h.uuid --port 80:18090 {IMAGE} --exec /bin/sh -- -c \
                   'mkdir -p /www && echo served-by-pod > /www/index.html && httpd -p 80 -h /www && echo started; sleep 600' >h.out 2>&1 & hp=$!; \
                 {wait}; u=$(cat h.uuid); ip=$({PODVM} status $u | sed -n 's/^networks=default:ip4=//p'); \
                 for i in $(seq 60); do r=$({get} 172.16.28.1 18090 | tail -1); [ \"$r\" = served-by-pod ] && break; sleep 1; done; echo port: $r; \
                 echo direct: $({get} $ip 80 | tail -1); \
                 {PODVM} run --net=none {IMAGE} --exec /bin/sh -- -c 'echo none-links: $(ls /sys/class/net)'; \
                 {PODVM} run --set-env PEER=$ip {IMAGE} --exec /bin/sh -- -c \
                   'echo peer: $({get} $PEER 80 | tail -1); echo host: $({get} 172.16.28.1 18091 | tail -1); ip route | grep -c default'; \
                 {PODVM} run --net=default-restricted {IMAGE} --exec /bin/sh -- -c \
                   'echo restricted-host: $({get} 172.17.0.1 18091 | tail -1); echo restricted-out: $({get} 172.16.28.1 18091 2>&1 | tail -1); echo default-routes=$(ip route | grep -c default)'; \
                 kill $hp; wait $hp; kill $l; {after}",
                wait = wait_started("h.out"),
                after = leftovers("after"),
                get = HTTP_GET,
            ),
        )
        .check(
            "spoofing",
            &format!(
                "{IPT} -N podvm-spoof-test; {IPT} -I INPUT -i podvm0 -p udp -j podvm-spoof-test; \
                 for p in 18096 18097 18098; do {IPT} -A podvm-spoof-test -p udp --dport $p; done; \
                 {PODVM} run --volume probe,kind=host,source=$PWD/test {IMAGE} --caps-retain=CAP_NET_RAW,CAP_NET_ADMIN \
                   --mount volume=probe,target=/probe --exec /bin/sh -- -c \
                   'ip=$(ip -4 addr show eth0 | awk \"/inet /{{print \\$2}}\" | cut -d/ -f1); mac=$(cat /sys/class/net/eth0/address); \
                    ping -c 1 -W 2 172.16.28.1 >/dev/null; echo guest=$ip,$mac; \
                    for i in 1 2 3; do \
                      /probe/podvm-probe udp-raw $ip 172.16.28.1 18096 own; \
                      /probe/podvm-probe udp-raw 172.16.28.250 172.16.28.1 18097 spoofed-ip; \
                    done 2>&1 | sort | uniq -c; \
                    /probe/podvm-probe set-mac eth0 02:de:ad:be:ef:01 && echo mac-sys=$(cat /sys/class/net/eth0/address); \
                    for i in 1 2 3; do /probe/podvm-probe udp-raw $ip 172.16.28.1 18098 spoofed-mac; done 2>&1 | sort | uniq -c'; \
                 echo rc=$?; \
                 {IPT} -L podvm-spoof-test -v -x -n | awk '/dpt:/ {{print $NF, \"packets=\" $1}}'; \
                 echo neigh-spoofed=$({IP} neigh show 172.16.28.250 dev podvm0 | wc -l); \
                 {IPT} -D INPUT -i podvm0 -p udp -j podvm-spoof-test; {IPT} -F podvm-spoof-test; {IPT} -X podvm-spoof-test"
            ),
        );
    Some(batch)
}

#[test]
fn a_running_pod_has_its_netns_veth_tap_redirect_and_nat() {
    let Some(result) = check("running_pod") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("netns=1"), "{result:?}");
    assert!(out.contains("links: eth0 lo tap0\n"), "{result:?}");
    assert!(out.contains("eth0: Redirect to device tap0"), "{result:?}");
    assert!(out.contains("tap0: Redirect to device eth0"), "{result:?}");
    assert!(out.contains("during: netns=1 veths=1 nat="), "{result:?}");
    assert!(
        !out.contains("during: netns=1 veths=1 nat=0"),
        "masquerade rules: {result:?}"
    );
    assert!(
        out.contains("dnat=") && !out.contains("dnat=0"),
        "{result:?}"
    );
    assert!(
        out.contains("networks=default:ip4=172.16.28."),
        "{result:?}"
    );
}

#[test]
fn the_guest_gets_dns_and_hosts_entries() {
    let Some(result) = check("running_pod") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("rc=0"), "{result:?}");
    assert!(out.contains("nameserver 1.2.3.4"), "{result:?}");
    assert!(out.contains("10.1.2.3\tdb"), "{result:?}");
    assert!(
        out.contains("PING db (10.1.2.3)"),
        "the entry resolves: {result:?}"
    );
}

#[test]
fn an_ended_pod_leaves_no_network_behind() {
    let Some(result) = check("running_pod") else {
        return;
    };
    assert!(
        result
            .stdout
            .contains("after: netns=0 veths=0 nat=0\nrecord=0"),
        "{result:?}"
    );
}

#[test]
fn gc_releases_the_network_of_a_killed_pod() {
    let Some(result) = check("kill9_then_gc") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("rc=137"), "{result:?}");
    assert!(out.contains("killed: netns=1 veths=1"), "{result:?}");
    assert!(out.contains("state=exited"), "{result:?}");
    assert!(out.contains("networks=default:ip4="), "{result:?}");
    assert!(out.contains("gc: netns=0 veths=0 nat=0"), "{result:?}");
    assert!(
        out.contains("already published by pod KILLED"),
        "its port stays taken until gc: {result:?}"
    );
}

#[test]
fn an_unknown_network_is_refused_before_any_pod_exists() {
    let Some(result) = check("unknown_network") else {
        return;
    };
    assert!(result.stdout.contains("rc=125"), "{result:?}");
    assert!(result.stdout.contains("pods-added=0 netns=0"), "{result:?}");
    assert!(
        result.stderr.contains("unknown network \"nosuchnet\""),
        "{result:?}"
    );
}

#[test]
fn a_malformed_config_is_named() {
    let Some(result) = check("malformed_config") else {
        return;
    };
    assert!(result.stdout.contains("rc=125"), "{result:?}");
    assert!(result.stdout.contains("pods-added=0 netns=0"), "{result:?}");
    assert!(result.stderr.contains("netd/10-broken.conf"), "{result:?}");
}

#[test]
fn a_busy_host_port_fails_cleanly() {
    let Some(result) = check("port_in_use") else {
        return;
    };
    assert!(result.stdout.contains("rc=125"), "{result:?}");
    assert!(
        result.stdout.contains("pods-added=0 netns=0 veths=0"),
        "{result:?}"
    );
    assert!(
        result
            .stderr
            .contains("host port 18083/tcp is already in use"),
        "{result:?}"
    );
}

#[test]
fn host_network_is_refused_and_none_has_hosts_entries() {
    let Some(result) = check("host_and_none") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.starts_with("rc=125"), "{result:?}");
    assert!(
        result.stderr.contains("--net=host is not supported"),
        "{result:?}"
    );
    assert!(result.stderr.contains("--port"), "{result:?}");
    assert!(out.contains("10.9.8.7\tnonet"), "{result:?}");
    assert!(
        out.ends_with("1\nrc=0\n"),
        "no resolv.conf without DNS: {result:?}"
    );
}

#[test]
fn a_published_port_reaches_the_pods_server() {
    let Some(result) = check("httpd_port") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("port: served-by-pod\n"),
        "through --port 80:18090: {result:?}"
    );
    assert!(out.contains("direct: served-by-pod"), "{result:?}");
}

#[test]
fn pods_reach_each_other_and_the_host_and_none_has_only_loopback() {
    let Some(result) = check("httpd_port") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("none-links: lo\n"), "{result:?}");
    assert!(out.contains("peer: served-by-pod"), "{result:?}");
    assert!(
        out.contains("host: served-by-l1\n1\n"),
        "default route: {result:?}"
    );
}

#[test]
fn default_restricted_reaches_the_host_only() {
    let Some(result) = check("httpd_port") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("restricted-host: served-by-l1"), "{result:?}");
    assert!(out.contains("default-routes=0"), "{result:?}");
    assert!(
        !out.contains("restricted-host: served-by-l1\nserved-by-l1"),
        "{result:?}"
    );
    assert!(out.contains("after: netns=0 veths=0 nat=0"), "{result:?}");
}

#[test]
fn a_guest_cannot_send_from_another_address_or_mac() {
    // The attack: a guest (root in the pod with CAP_NET_RAW and CAP_NET_ADMIN, as a hostile
    // guest kernel is) sends raw IP packets with a source address it was not given (another
    // pod's, 172.16.28.250), then changes its NIC's MAC and sends from its own address.
    // Host side: the host's INPUT counters see only the frames with the pod's own MAC and IP.
    let Some(result) = check("spoofing") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("rc=0"), "{result:?}");
    assert!(out.contains("mac-sys=02:de:ad:be:ef:01"), "{result:?}");
    for port in ["18096", "18097", "18098"] {
        assert!(
            out.lines()
                .any(|line| line.trim_start().starts_with("3 sent from") && line.ends_with(port)),
            "the probe sent its 3 frames to port {port}: {result:?}"
        );
    }
    let packets = |port: &str| -> u64 {
        out.lines()
            .find_map(|line| line.strip_prefix(&format!("dpt:{port} packets=")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter for port {port}: {result:?}"))
    };
    assert!(
        packets("18096") >= 1,
        "the pod's own frames reach the host (else the test shows nothing): {result:?}"
    );
    assert_eq!(packets("18097"), 0, "spoofed source IP: {result:?}");
    assert_eq!(packets("18098"), 0, "spoofed source MAC: {result:?}");
    assert!(out.contains("neigh-spoofed=0"), "{result:?}");
}
