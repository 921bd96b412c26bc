//! Opening a tap device by name (TUNSETIFF on /dev/net/tun), optionally inside a network
//! namespace, and setting its virtio-net header size and offloads.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// The tun/tap control device.
const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;
/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ` = `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// A layer-2 (ethernet) device.
const IFF_TAP: libc::c_short = 0x0002;
/// No extra packet information before each frame.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Each frame starts with a virtio-net header.
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offload bits for `TUNSETOFFLOAD` (what the tap may hand to the guest).
pub mod offload {
    /// Partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation offload over IPv4.
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation offload over IPv6.
    pub const TSO6: u32 = 0x04;
}

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("tap name {name:?} is not a valid interface name (1 to {MAX_NAME_LEN} bytes, no '/', NUL or spaces)")]
    Name {
        /// The name given.
        name: String,
    },
    /// The network namespace file could not be opened or entered.
    #[error("cannot enter network namespace {path} (for tap {tap}): {source}; check that the netns file exists (e.g. /run/netns/NAME)")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The tap.
        tap: String,
        /// Why.
        source: std::io::Error,
    },
    /// /dev/net/tun could not be opened.
    #[error("cannot open {TUN_PATH} for tap {tap}{netns}: {source}; load the tun module (`modprobe tun`)")]
    Open {
        /// The tap.
        tap: String,
        /// " in netns PATH" or empty.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// An ioctl on the tap failed.
    #[error("tap {tap}{netns}: {what} failed: {source}")]
    Ioctl {
        /// The tap.
        tap: String,
        /// " in netns PATH" or empty.
        netns: String,
        /// Which ioctl.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The helper thread that enters the namespace could not run.
    #[error("cannot start a thread to open tap {tap}: {source}")]
    Thread {
        /// The tap.
        tap: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An open tap device: frames read and written carry a 12-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    netns: Option<PathBuf>,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (the rest of the union unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (or creates) tap `name`, inside the network namespace file `netns` if given.
    ///
    /// Only a short-lived helper thread enters the namespace; the tap fd it opens keeps
    /// belonging to that namespace while every podvm thread stays where it was.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = match netns {
            None => open_here(name, None)?,
            Some(path) => {
                let (name_owned, path_owned) = (name.to_string(), path.to_path_buf());
                std::thread::Builder::new()
                    .name("podvm-tap-open".into())
                    .spawn(move || {
                        enter_netns(&path_owned, &name_owned)?;
                        open_here(&name_owned, Some(&path_owned))
                    })
                    .map_err(|source| TapError::Thread {
                        tap: name.to_string(),
                        source,
                    })?
                    .join()
                    .map_err(|_| TapError::Thread {
                        tap: name.to_string(),
                        source: std::io::Error::other("the thread panicked"),
                    })??
            }
        };
        let tap = Self {
            file,
            name: name.to_string(),
            netns: netns.map(Path::to_path_buf),
        };
        tap.set_vnet_hdr_size(super::VNET_HDR_LEN)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's file (for VHOST_NET_SET_BACKEND).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Tells the tap which offloads the guest accepts (bits of [`offload`]).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is an open tap.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        self.check(ret, "TUNSETOFFLOAD")
    }

    fn set_vnet_hdr_size(&self, size: usize) -> Result<(), TapError> {
        let size = libc::c_int::try_from(size).expect("a virtio-net header is a few bytes");
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which lives across the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        self.check(ret, "TUNSETVNETHDRSZ")
    }

    fn check(&self, ret: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if ret < 0 {
            return Err(TapError::Ioctl {
                tap: self.name.clone(),
                netns: in_netns(self.netns.as_deref()),
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// " in netns PATH", or empty without a namespace (for messages).
fn in_netns(netns: Option<&Path>) -> String {
    netns.map_or_else(String::new, |path| format!(" in netns {}", path.display()))
}

/// Checks that `name` can be an interface name.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if bad {
        return Err(TapError::Name {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path, tap: &str) -> Result<(), TapError> {
    let netns_error = |source| TapError::Netns {
        path: path.to_path_buf(),
        tap: tap.to_string(),
        source,
    };
    let file = File::open(path).map_err(netns_error)?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|errno| netns_error(std::io::Error::from(errno)))
}

/// Opens /dev/net/tun and attaches it to tap `name` in the calling thread's namespace.
fn open_here(name: &str, netns: Option<&Path>) -> Result<File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|source| TapError::Open {
            tap: name.to_string(),
            netns: in_netns(netns),
            source,
        })?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq; IfReq has its size (40 bytes) and
    // layout for the fields the kernel uses, and lives across the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    if ret < 0 {
        return Err(TapError::Ioctl {
            tap: name.to_string(),
            netns: in_netns(netns),
            what: "TUNSETIFF (attach to the tap; is the name used by a non-tap interface?)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for good in ["tap0", "veth-a_b.1", "abcdefghijklmno"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", ".", "..", "a:b"] {
            let err = validate_name(bad).expect_err(bad);
            assert!(
                err.to_string().contains("not a valid interface name"),
                "{err}"
            );
        }
    }

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    /// A thread parked in a fresh network namespace, reachable as /proc/.../ns/net.
    struct PrivateNetns {
        path: PathBuf,
        ask: std::sync::mpsc::Sender<String>,
        answer: std::sync::mpsc::Receiver<bool>,
    }

    impl PrivateNetns {
        /// `None` (with the reason printed) when this host cannot make one (not root).
        fn new() -> Option<Self> {
            let (ask, questions) = std::sync::mpsc::channel::<String>();
            let (answers, answer) = std::sync::mpsc::channel();
            let (ready_tx, ready) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET).map(|()| {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
                });
                let _ = ready_tx.send(made);
                // Answers "does interface NAME exist here?" until the test drops its sender.
                for name in questions {
                    let _ = answers.send(interface_exists_here(&name));
                }
            });
            match ready.recv().expect("thread reports") {
                Ok(path) => Some(Self { path, ask, answer }),
                Err(err) => {
                    eprintln!("skipping: cannot create a network namespace: {err}");
                    None
                }
            }
        }

        fn has(&self, name: &str) -> bool {
            self.ask.send(name.to_string()).expect("thread alive");
            self.answer.recv().expect("thread answers")
        }
    }

    /// Whether the calling thread's network namespace has interface `name`.
    fn interface_exists_here(name: &str) -> bool {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
        dev.lines()
            .any(|line| line.trim_start().starts_with(&format!("{name}:")))
    }

    #[test]
    fn a_tap_opened_in_a_netns_lives_there_and_not_in_ours() {
        if !Path::new(TUN_PATH).exists() {
            eprintln!("skipping: no {TUN_PATH}");
            return;
        }
        let Some(netns) = PrivateNetns::new() else {
            return;
        };
        let tap = Tap::open("podvmtest1", Some(&netns.path)).expect("open in the namespace");
        assert!(netns.has("podvmtest1"));
        assert!(!interface_exists_here("podvmtest1"));
        tap.set_offload(offload::CSUM | offload::TSO4)
            .expect("offloads");
        drop(tap);
        // Not persistent: the tap went with its only fd.
        assert!(!netns.has("podvmtest1"));
    }

    #[test]
    fn a_missing_netns_names_the_path_and_the_tap() {
        let err = Tap::open("podvmtest0", Some(Path::new("/nonexistent/netns/x")))
            .expect_err("no such namespace file");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/netns/x"), "{text}");
        assert!(text.contains("podvmtest0"), "{text}");
    }
}
