//! Host-level tests of `podvm boot`'s network flags that need no guest: a bad MAC, CIDR or
//! gateway and a missing tap network namespace are refused before any VM is built, with
//! messages that name the value.

use std::process::{Command, Output};

fn podvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podvm"))
        .args(args)
        .output()
        .expect("run podvm")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn boot_with(flags: &[&str]) -> Output {
    let mut args = vec!["boot"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/true"]);
    podvm(&args)
}

#[test]
fn a_malformed_mac_is_a_usage_error_naming_it() {
    let output = boot_with(&["--tap", "tap0", "--mac", "02:00:zz:00:00:01"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(text.contains("02:00:zz:00:00:01"), "{text}");
    assert!(text.contains("not a MAC address"), "{text}");
}

#[test]
fn a_multicast_mac_is_refused() {
    let output = boot_with(&["--tap", "tap0", "--mac", "01:00:5e:00:00:01"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("unicast"), "{output:?}");
}

#[test]
fn a_missing_tap_netns_is_named_before_any_vm() {
    let output = boot_with(&[
        "--tap",
        "tap0",
        "--tap-netns",
        "/run/netns/podvm-no-such-ns",
    ]);
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("--tap-netns /run/netns/podvm-no-such-ns"),
        "{text}"
    );
    assert!(text.contains("network namespace file"), "{text}");
}

#[test]
fn guest_addresses_need_a_tap_and_valid_cidrs() {
    let without_tap = boot_with(&["--guest-ip", "10.0.0.2/24"]);
    assert_eq!(without_tap.status.code(), Some(2), "{without_tap:?}");
    assert!(stderr(&without_tap).contains("--tap"), "{without_tap:?}");
    let bad_cidr = boot_with(&["--tap", "tap0", "--guest-ip", "10.0.0.2/40"]);
    assert_eq!(bad_cidr.status.code(), Some(2), "{bad_cidr:?}");
    assert!(stderr(&bad_cidr).contains("10.0.0.2/40"), "{bad_cidr:?}");
    let bad_gateway = boot_with(&[
        "--tap",
        "tap0",
        "--guest-ip",
        "10.0.0.2/24",
        "--guest-gateway",
        "gateway",
    ]);
    assert_eq!(bad_gateway.status.code(), Some(2), "{bad_gateway:?}");
    assert!(
        stderr(&bad_gateway).contains("not an IP address"),
        "{bad_gateway:?}"
    );
}

#[test]
fn boot_help_documents_the_network_flags() {
    let output = podvm(&["boot", "--help"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--tap",
        "--tap-netns",
        "--mac",
        "--guest-ip",
        "--guest-gateway",
        "--guest-mtu",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}
