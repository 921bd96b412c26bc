//! The configuration ioctls against the real kernel, off the VM: in a private network
//! namespace (one thread's, so nothing on the host changes) with two taps standing in for
//! virtio-net devices. Skipped, with the reason printed, where namespaces or /dev/net/tun are
//! not available (not root).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use super::*;

/// `TUNSETIFF` and `TUNGETIFF`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// A layer-2 tap without packet info.
const TAP_FLAGS: libc::c_short = 0x0002 | 0x1000;

#[repr(C)]
struct TunReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Creates tap `name` in the calling thread's namespace; it lives as long as the file.
fn tap(name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut request = TunReq {
        name: [0; 16],
        flags: TAP_FLAGS,
        pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which `request` is.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    assert!(
        ret >= 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// The current name of the tap behind `file`.
fn tap_name(file: &File) -> String {
    let mut request = TunReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a 40-byte ifreq, which `request` is.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut request) };
    assert!(ret >= 0, "TUNGETIFF: {}", std::io::Error::last_os_error());
    let end = request.name.iter().position(|b| *b == 0).unwrap_or(16);
    String::from_utf8_lossy(&request.name[..end]).into_owned()
}

/// A file of the calling thread's view of /proc/net.
fn proc_net(file: &str) -> String {
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).expect("read /proc/net")
}

/// Runs `body` in a thread with its own network namespace, or skips.
fn in_private_netns(body: impl FnOnce() + Send + 'static) {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipping: no /dev/net/tun");
        return;
    }
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        body();
        Ok(())
    })
    .join()
    .expect("the test body passed");
    if let Err(err) = outcome {
        eprintln!("skipping: cannot create a network namespace: {err}");
    }
}

#[test]
fn loopback_comes_up_with_its_address() {
    in_private_netns(|| {
        configure(None).expect("configure lo");
        let sockets = Sockets::open(false).expect("socket");
        assert!(sockets.is_up(LOOPBACK).expect("flags"));
        let addresses = proc_net("fib_trie");
        assert!(addresses.contains("127.0.0.1"), "{addresses}");
    });
}

#[test]
fn swapped_names_mtu_addresses_and_routes_are_applied() {
    in_private_netns(|| {
        let first = tap("podvma");
        let second = tap("podvmb");
        let sockets = Sockets::open(true).expect("sockets");
        let interfaces = [
            GuestInterface {
                name: Some("podvmb".into()),
                ..GuestInterface::default()
            },
            GuestInterface {
                name: Some("podvma".into()),
                ..GuestInterface::default()
            },
        ];
        let names = rename_all(
            &sockets,
            &interfaces,
            vec!["podvma".into(), "podvmb".into()],
        )
        .expect("swap");
        assert_eq!(names, ["podvmb", "podvma"]);
        assert_eq!(tap_name(&first), "podvmb");
        assert_eq!(tap_name(&second), "podvma");

        let addresses = [
            parse_cidr("10.9.0.2/24").expect("valid"),
            parse_cidr("10.9.1.2/24").expect("valid"),
            parse_cidr("fd00:9::2/64").expect("valid"),
        ];
        configure_interface(&sockets, Some(1400), "podvmb", &addresses).expect("configure");
        assert!(sockets.is_up("podvmb").expect("flags"));
        let trie = proc_net("fib_trie");
        assert!(
            trie.contains("10.9.0.2") && trie.contains("10.9.1.2"),
            "{trie}"
        );
        let v6 = proc_net("if_inet6");
        assert!(v6.contains("fd000009000000000000000000000002"), "{v6}");

        let route = |destination: &str, gateway: Option<&str>| GuestRoute {
            destination: destination.into(),
            gateway: gateway.map(str::to_string),
        };
        add_route(&sockets, &route("10.20.0.0/16", Some("10.9.0.1")), None).expect("v4 route");
        add_route(&sockets, &route("10.30.0.0/16", None), Some("podvmb")).expect("link route");
        add_route(&sockets, &route("fd00:20::/48", Some("fd00:9::1")), None).expect("v6 route");
        let table = proc_net("route");
        // Destination and gateway in /proc/net/route are little-endian hex.
        assert!(table.contains("podvmb\t0000140A\t0100090A"), "{table}");
        assert!(table.contains("podvmb\t00001E0A\t00000000"), "{table}");
        let v6_routes = proc_net("ipv6_route");
        assert!(
            v6_routes.contains("fd000020000000000000000000000000 30"),
            "{v6_routes}"
        );
        assert_eq!(sockets.mtu("podvmb").expect("mtu"), 1400);
    });
}
