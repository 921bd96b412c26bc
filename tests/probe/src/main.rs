//! `podvm-probe`: a tiny static program the E2E tests copy into a guest's rootfs to exercise what
//! busybox has no applet for. Every subcommand prints what it saw, one fact per line, and exits
//! non-zero on an unexpected failure, so the test on the host can assert on the output.
//!
//! * `xattr FILE`: set, get, list and remove `user.podvm`; then try `trusted.podvm` and print the
//!   errno it got (virtio-fs shares allow only `user.*`).
//! * `mmap-write FILE SIZE`: create FILE of SIZE bytes through a shared writable mapping
//!   (byte i = i % 251), msync, unmap, then print the checksum read back with read(2).
//! * `sum FILE`: the checksum of FILE (also run on the host side to compare).
//! * `kvm-hold`: create a KVM VM with an in-kernel irqchip and one vCPU that never runs, print
//!   `holding`, and sleep until killed. The nested harness runs it in L1 for the whole batch:
//!   KVM flips static keys (preempt notifiers, inlined in `__schedule`; the APIC's) when the
//!   first VM appears and the last one goes, and int3-based kernel text patching of that hot
//!   path is what most samples of L1's rare livelocks under QEMU TCG show. With one VM held,
//!   they stay set (tests/nested/README.md).
//! * `vsock-sink PORT`: listen on AF_VSOCK (any CID) port PORT, print `listening`, accept one
//!   connection, read it to EOF, print `bytes=N` and close: the host side of a guest agent's
//!   boot session for a VMM other than podvm (a QEMU peer streaming the same workload's output
//!   over vhost-vsock in an A/B run).
//! * `sandbox-demo DIR BUSYBOX_ROOT LAYERS_ROOT`: drives podvm's runtime library directly (a
//!   sandbox, two containers added at different times, exec, signal, wait, stats, stop); see
//!   `sandbox_demo.rs`.
//! * `udp-raw SRC_IP DST_IP PORT PAYLOAD`: send a UDP datagram from any source address through a
//!   raw IP socket (a spoofing guest); see `udp_raw.rs`.
//! * `set-mac IFACE MAC`: give a NIC another MAC (a spoofing guest).

mod sandbox_demo;
mod udp_raw;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The runtime library's sandboxes start their VMM processes from this executable.
    if let Some(code) = podvm::runtime::vmm_main_if_asked() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["xattr", file] => xattr(file),
        ["mmap-write", file, size] => match size.parse::<usize>() {
            Ok(size) => mmap_write(file, size),
            Err(err) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("size {size}: {err}"),
            )),
        },
        ["sum", file] => sum(file).map(|s| println!("sum={s:016x}")),
        ["kvm-hold"] => kvm_hold(),
        ["udp-raw", src, dst, port, payload] => udp_raw::run(src, dst, port, payload),
        ["set-mac", iface, mac] => udp_raw::set_mac(iface, mac),
        ["sandbox-demo", dir, busybox, layers] => sandbox_demo::run(dir, busybox, layers),
        ["vsock-sink", port] => match port.parse::<u32>() {
            Ok(port) => vsock_sink(port),
            Err(err) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port {port}: {err}"),
            )),
        },
        _ => {
            eprintln!(
                "usage: podvm-probe xattr FILE | mmap-write FILE SIZE | sum FILE | kvm-hold | \
                 vsock-sink PORT | sandbox-demo DIR BUSYBOX_ROOT LAYERS_ROOT | \
                 udp-raw SRC_IP DST_IP PORT PAYLOAD | set-mac IFACE MAC"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("podvm-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

fn c_path(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(())
}

fn xattr(file: &str) -> io::Result<()> {
    let path = c_path(file)?;
    let name = c_path("user.podvm")?;
    let value = b"hello-xattr";
    // SAFETY: path and name are NUL-terminated; value outlives the call and its length is given.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret, "setxattr user.podvm")?;
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes; the strings are NUL-terminated.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    check(i32::try_from(len).unwrap_or(-1), "getxattr user.podvm")?;
    println!(
        "get={}",
        String::from_utf8_lossy(&buf[..len.unsigned_abs()])
    );
    // SAFETY: as above.
    let len = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    check(i32::try_from(len).unwrap_or(-1), "listxattr")?;
    let names: Vec<String> = buf[..len.unsigned_abs()]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    println!("list={}", names.join(","));
    // SAFETY: the strings are NUL-terminated.
    let removed = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    check(removed, "removexattr user.podvm")?;
    // SAFETY: as for getxattr above.
    let gone = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    println!("after-remove={}", errno_name(gone));
    let trusted = c_path("trusted.podvm")?;
    // SAFETY: as for setxattr above.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            trusted.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    println!("trusted-set={}", errno_name(ret as isize));
    Ok(())
}

/// "ok" for a non-negative return, else the errno's name.
fn errno_name(ret: isize) -> String {
    if ret >= 0 {
        return "ok".into();
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENODATA) => "ENODATA".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EROFS) => "EROFS".into(),
        other => format!("errno {other:?}"),
    }
}

fn mmap_write(file: &str, size: usize) -> io::Result<()> {
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(file)?;
    handle.set_len(size as u64)?;
    // SAFETY: a fresh shared mapping of the file's whole length; checked for MAP_FAILED below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            handle.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::other(format!(
            "mmap: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: map is valid for size bytes, writable, and nothing else aliases it.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), size) };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    // SAFETY: map/size are the mapping made above.
    check(unsafe { libc::msync(map, size, libc::MS_SYNC) }, "msync")?;
    // SAFETY: as above; bytes is not used after this.
    check(unsafe { libc::munmap(map, size) }, "munmap")?;
    drop(handle);
    println!("mmap-written={size}");
    println!("sum={:016x}", sum(file)?);
    Ok(())
}

/// FNV-1a over the file's bytes, read with read(2).
fn sum(file: &str) -> io::Result<u64> {
    let mut reader = File::open(file)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hash);
        }
        for byte in &buf[..n] {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `_IO(KVMIO, n)` requests used by `kvm-hold`.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_CREATE_IRQCHIP: libc::c_ulong = 0xAE60;

/// Holds a VM (irqchip, one vCPU) open until killed; see the module docs.
fn kvm_hold() -> io::Result<()> {
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm")?;
    let vm = kvm_ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0)?;
    kvm_ioctl(vm, KVM_CREATE_IRQCHIP, 0)?;
    kvm_ioctl(vm, KVM_CREATE_VCPU, 0)?;
    println!("holding");
    loop {
        // SAFETY: pause has no arguments and only returns when a signal is handled.
        unsafe { libc::pause() };
    }
}

/// An ioctl on a KVM descriptor whose result is a descriptor or 0.
fn kvm_ioctl(
    fd: libc::c_int,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> io::Result<libc::c_int> {
    // SAFETY: these KVM requests take an integer argument and touch no memory of ours.
    let result = unsafe { libc::ioctl(fd, request, arg) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

fn vsock_sink(port: u32) -> io::Result<()> {
    // SAFETY: socket() takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket(AF_VSOCK)")?;
    // SAFETY: `fd` is the new socket and nothing else owns it.
    let listener = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value to fill in.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes, alive for the call.
    let ret = unsafe {
        libc::bind(
            listener.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    check(ret, "bind")?;
    // SAFETY: listen() on our socket takes plain integers.
    check(unsafe { libc::listen(listener.as_raw_fd(), 1) }, "listen")?;
    println!("listening");
    // SAFETY: accept() on our listening socket; null address pointers are allowed.
    let conn = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(conn, "accept")?;
    // SAFETY: `conn` is the accepted socket and nothing else owns it.
    let mut stream = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(conn) };
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    println!("bytes={total}");
    Ok(())
}
