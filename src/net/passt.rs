//! User-mode networking for pods of an ordinary user: one passt process per pod (Debian's
//! `passt` package), run as the user, in its qemu mode. podvm makes a private directory (mode
//! 0700, mkdtemp) under `$XDG_RUNTIME_DIR` (or the temp dir), starts passt in the foreground
//! with its socket there, waits (bounded) until that socket listens, and the VM's virtio-net
//! device connects to it (the unix-stream backend). passt gets the guest's address and gateway
//! that podvm gives the guest; TCP and UDP to the gateway reach the host's loopback (passt's
//! default gateway mapping). `--port` becomes passt's `-t`/`-u` forwards.
//!
//! passt runs with `--one-off` (it quits when the VM's connection closes, also when podvm is
//! killed) and dies with podvm's thread that started it (PR_SET_PDEATHSIG); dropping the last
//! [`Passt`] handle stops it (SIGTERM, then SIGKILL after a bounded wait) and removes the
//! directory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podvm_protocol::{GuestInterface, GuestNetwork, GuestRoute};

use super::ports::PortMapping;

/// The guest's address on passt's network.
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The prefix length of that network.
pub const PREFIX_LEN: u8 = 24;
/// The gateway: passt itself; connections to it reach the host's loopback.
pub const GATEWAY: &str = "10.0.2.2";
/// The MAC passt answers with (a locally administered unicast address).
const PASST_MAC: &str = "9a:55:9a:55:9a:55";
/// How long passt may take to listen on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long passt may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest socket path a `sockaddr_un` holds (108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The most of passt's log an error quotes.
const LOG_TAIL: u64 = 2048;

/// Errors starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// passt is not installed.
    #[error(
        "pod {uuid}: rootless networking needs passt, which is not installed (no `passt` in \
         PATH or /usr/bin): install Debian's `passt` package (`sudo apt-get install passt`), \
         or run the pod with --net=none"
    )]
    Missing {
        /// The pod.
        uuid: String,
    },
    /// The private directory or the socket path failed.
    #[error("pod {uuid}: cannot make passt's private directory under {base}: {source}")]
    Dir {
        /// The pod.
        uuid: String,
        /// Where.
        base: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket path is too long for a UNIX socket.
    #[error(
        "pod {uuid}: passt's socket path {path} is longer than {MAX_SOCKET_PATH} bytes; set \
         XDG_RUNTIME_DIR to a shorter directory"
    )]
    PathTooLong {
        /// The pod.
        uuid: String,
        /// The path.
        path: PathBuf,
    },
    /// passt could not be started.
    #[error("pod {uuid}: cannot start {program}: {source}")]
    Spawn {
        /// The pod.
        uuid: String,
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// passt exited or did not listen in time.
    #[error("pod {uuid}: passt {what}; its log says: {log}")]
    NotReady {
        /// The pod.
        uuid: String,
        /// What happened.
        what: String,
        /// The end of passt's log.
        log: String,
    },
}

/// A running passt for one pod; stopped (and its directory removed) when dropped.
#[derive(Debug)]
pub struct Passt {
    child: Mutex<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl PartialEq for Passt {
    fn eq(&self, other: &Self) -> bool {
        self.socket == other.socket
    }
}

impl Eq for Passt {}

impl Passt {
    /// The socket the VM's NIC connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            // A passt that died on its own with an error says why (the log goes with the dir).
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    let log = log_tail(&self.dir.join("passt.log"));
                    eprintln!("podvm: passt exited early ({status}); its log says: {log}");
                }
            }
            stop(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks `child` to stop, waits a bounded time, then kills it; reaps it either way.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The guest's side of passt's network: `eth0` with `mac`, the guest address, a default route
/// through the gateway.
pub fn guest_network(mac: &[u8; 6]) -> GuestNetwork {
    GuestNetwork {
        interfaces: vec![GuestInterface {
            mac: podvm_protocol::mac::format_mac(mac),
            name: Some("eth0".into()),
            addresses: vec![format!("{GUEST_ADDRESS}/{PREFIX_LEN}")],
            mtu: None,
        }],
        routes: vec![GuestRoute {
            destination: "0.0.0.0/0".into(),
            gateway: Some(GATEWAY.into()),
        }],
    }
}

/// Starts passt for pod `uuid` with its socket in a fresh private directory under `base`,
/// forwarding `ports`, and waits until it listens.
pub fn start(uuid: &str, base: &Path, ports: &[PortMapping]) -> Result<Passt, PasstError> {
    let program = find_program().ok_or_else(|| PasstError::Missing { uuid: uuid.into() })?;
    let dir_error = |source| PasstError::Dir {
        uuid: uuid.into(),
        base: base.to_path_buf(),
        source,
    };
    let dir = nix::unistd::mkdtemp(&base.join("podvm-passt-XXXXXX"))
        .map_err(|errno| dir_error(errno.into()))?;
    let socket = dir.join("s");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        let _ = std::fs::remove_dir(&dir);
        return Err(PasstError::PathTooLong {
            uuid: uuid.into(),
            path: socket,
        });
    }
    let log = dir.join("passt.log");
    let mut command = Command::new(&program);
    command
        .args(arguments(&socket, &log, has_default_route(), ports))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| PasstError::Spawn {
        uuid: uuid.into(),
        program: program.clone(),
        source,
    });
    let child = match child {
        Ok(child) => child,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
    };
    let passt = Passt {
        child: Mutex::new(child),
        dir,
        socket,
    };
    wait_listening(uuid, &passt, &log)?;
    Ok(passt)
}

/// passt's command line: foreground, one client, IPv4, quiet, its log in `log`, the socket,
/// podvm's guest address, netmask and gateway, its own MAC; without a default route on the
/// host, loopback as the template interface (passt then reaches only the host); the port
/// forwards.
pub fn arguments(
    socket: &Path,
    log: &Path,
    default_route: bool,
    ports: &[PortMapping],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["--foreground", "--one-off", "--ipv4-only", "--quiet"]
        .iter()
        .map(Into::into)
        .collect();
    let mut pair = |flag: &str, value: std::ffi::OsString| {
        args.push(flag.into());
        args.push(value);
    };
    pair("--log-file", log.into());
    pair("--socket", socket.into());
    pair("--address", GUEST_ADDRESS.into());
    pair("--netmask", PREFIX_LEN.to_string().into());
    pair("--gateway", GATEWAY.into());
    pair("--mac-addr", PASST_MAC.into());
    if !default_route {
        pair("--interface", "lo".into());
    }
    for mapping in ports {
        let flag = if mapping.protocol == "udp" {
            "--udp-ports"
        } else {
            "--tcp-ports"
        };
        pair(
            flag,
            format!("{}:{}", mapping.host, mapping.container).into(),
        );
    }
    args
}

/// Where passt's private directory goes: `$XDG_RUNTIME_DIR` when it is this user's and
/// private (mode 0700), else the temp dir (the directory itself is mkdtemp's, mode 0700).
pub fn runtime_base() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| {
            std::fs::symlink_metadata(dir)
                .is_ok_and(|meta| meta.is_dir() && meta.uid() == euid && meta.mode() & 0o077 == 0)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// `passt` in PATH, else /usr/bin/passt.
fn find_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(&path, Path::new("/usr/bin"))
}

/// An executable `passt` in the directories of `path` (a PATH value), else in `fallback`.
fn find_in(path: &std::ffi::OsStr, fallback: &Path) -> Option<PathBuf> {
    std::env::split_paths(path)
        .chain([fallback.to_path_buf()])
        .map(|dir| dir.join("passt"))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Whether the host has an IPv4 default route (`/proc/net/route`, destination 0).
fn has_default_route() -> bool {
    let Ok(file) = File::open("/proc/net/route") else {
        return false;
    };
    BufReader::new(file.take(1 << 20))
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
}

/// Waits until passt's socket listens (it is in `/proc/net/unix` with the listening flag),
/// failing when passt exits or [`START_TIMEOUT`] passes.
fn wait_listening(uuid: &str, passt: &Passt, log: &Path) -> Result<(), PasstError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let not_ready = |what: String| PasstError::NotReady {
        uuid: uuid.into(),
        what,
        log: log_tail(log),
    };
    loop {
        if listening(&passt.socket) {
            return Ok(());
        }
        let exited = match passt.child.lock() {
            Ok(mut child) => child.try_wait().ok().flatten(),
            Err(_) => None,
        };
        if let Some(status) = exited {
            return Err(not_ready(format!("exited at start ({status})")));
        }
        if Instant::now() >= deadline {
            return Err(not_ready(format!(
                "did not listen on {} within {}s",
                passt.socket.display(),
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `__SO_ACCEPTCON`: the flag of a listening socket in `/proc/net/unix`.
const ACCEPTCON: u32 = 0x10000;

/// Whether a listening UNIX socket is bound at `path` (`/proc/net/unix`: `Num RefCount
/// Protocol Flags Type St Inode Path`).
fn listening(path: &Path) -> bool {
    let Ok(file) = File::open("/proc/net/unix") else {
        return false;
    };
    let want = path.as_os_str().to_string_lossy();
    BufReader::new(file.take(64 << 20))
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(7).is_some_and(|p| *p == want)
                && fields
                    .get(3)
                    .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                    .is_some_and(|flags| flags & ACCEPTCON != 0)
        })
}

/// The last [`LOG_TAIL`] bytes of passt's log, on one line.
fn log_tail(log: &Path) -> String {
    let Ok(mut file) = File::open(log) else {
        return "(no log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut text = String::new();
    use std::io::Seek;
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let _ = file.take(LOG_TAIL).read_to_string(&mut text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(empty)".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[std::ffi::OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn passt_is_told_the_guests_address_gateway_and_ports() {
        let ports = [
            PortMapping {
                host: 8080,
                container: 80,
                protocol: "tcp".into(),
            },
            PortMapping {
                host: 5353,
                container: 53,
                protocol: "udp".into(),
            },
        ];
        let args = strings(&arguments(
            Path::new("/r/s"),
            Path::new("/r/l"),
            false,
            &ports,
        ));
        let line = args.join(" ");
        for part in [
            "--foreground --one-off",
            "--socket /r/s",
            "--address 10.0.2.15",
            "--netmask 24",
            "--gateway 10.0.2.2",
            "--interface lo",
            "--tcp-ports 8080:80",
            "--udp-ports 5353:53",
            "--log-file /r/l",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
        let routed = strings(&arguments(Path::new("/r/s"), Path::new("/r/l"), true, &[]));
        assert!(!routed.iter().any(|a| a == "--interface"), "{routed:?}");
    }

    #[test]
    fn a_missing_passt_is_found_missing_and_the_error_names_the_package() {
        let empty = tempfile::tempdir().expect("tempdir");
        let path = std::env::join_paths([empty.path()]).expect("path");
        assert_eq!(find_in(&path, empty.path()), None);
        let text = PasstError::Missing { uuid: "u".into() }.to_string();
        assert!(text.contains("apt-get install passt"), "{text}");
        assert!(text.contains("--net=none"), "{text}");
        // An executable named passt is found, a non-executable one is not.
        let bin = empty.path().join("passt");
        std::fs::write(&bin, "").expect("file");
        assert_eq!(find_in(&path, Path::new("/nonexistent")), None);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_in(&path, Path::new("/nonexistent")), Some(bin));
    }

    #[test]
    fn the_guest_gets_passts_address_and_gateway() {
        let network = guest_network(&[2, 1, 2, 3, 4, 5]);
        assert_eq!(network.interfaces[0].addresses, ["10.0.2.15/24"]);
        assert_eq!(network.interfaces[0].mac, "02:01:02:03:04:05");
        assert_eq!(network.routes[0].gateway.as_deref(), Some(GATEWAY));
    }

    #[test]
    fn a_real_passt_listens_and_stops_with_its_handle() {
        if find_program().is_none() {
            eprintln!("skipped: passt is not installed (Debian package passt)");
            return;
        }
        if nix::unistd::geteuid().is_root() {
            // passt as root changes to nobody, who cannot write to a root-owned temp dir.
            eprintln!("skipped: passt refuses to keep root; covered as uid 4242 by e2e_rootless");
            return;
        }
        let base = tempfile::tempdir().expect("tempdir");
        let passt = start("u", base.path(), &[]).expect("passt starts");
        let pid = passt.child.lock().expect("child").id();
        assert!(listening(passt.socket()));
        let dir = passt.dir.clone();
        drop(passt);
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
