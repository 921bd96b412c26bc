//! Wire protocol between the podvm host and the guest agent (PID 1 in the VM).
//!
//! # Wire format (version 5)
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       2     magic, the bytes "PV"
//! 2       1     protocol version (currently 5)
//! 3       1     kind: 1 = stdout bytes, 2 = stderr bytes, 3 = stdin bytes,
//!               16 = control message (JSON of [`Control`])
//! 4       4     payload length, little endian, at most [`MAX_PAYLOAD`]
//! 8       n     payload
//! ```
//!
//! Stream data travels raw; everything else is a JSON-encoded [`Control`] value. A frame with a
//! bad magic, an unknown version or kind, an oversized length or a payload that does not decode
//! is an error, never a panic; so is a message sent in the wrong direction
//! ([`Message::check_from_host`], [`Message::check_from_agent`]). After an error the stream
//! cannot be resynchronised: the receiver reports it and closes the connection.
//!
//! # Messages
//!
//! Host to agent: [`Control::Boot`] (first and only once, on the boot session),
//! [`Stream::Stdin`] data, [`Control::StdinClose`], [`Control::Signal`], [`Control::Resize`],
//! [`Control::Exec`] (first and only once, on an exec connection), [`Control::Shutdown`] and,
//! on the boot session, the container requests [`Control::CreateContainer`],
//! [`Control::StartContainer`], [`Control::SignalContainer`] and [`Control::RemoveContainer`].
//! Agent to host: [`Control::Ready`] (or [`Control::App`] on an app session),
//! [`Stream::Stdout`] and [`Stream::Stderr`] data, [`Control::Error`] and, last,
//! [`Control::Exited`]; on the boot session also [`Control::ContainerDone`],
//! [`Control::ContainerError`] and [`Control::ContainerExited`].
//!
//! # Sessions: one vsock connection per process
//!
//! Each connection carries exactly one process (its process group), so messages carry no
//! process id: a `Signal` goes to the process group of the connection's process, `Resize` to
//! its terminal.
//!
//! * **Boot session.** The host listens on AF_VSOCK (any local CID) on a port its kernel picks,
//!   so concurrent VMs never clash, and passes that port on the guest kernel command line as
//!   `podvm.agent_port=<port>` ([`AGENT_PORT_PARAM`]). The agent connects to the host, CID 2
//!   ([`HOST_CID`]), on that port as soon as it has mounted /proc; the host accepts only a
//!   connection from the VM's own CID. The agent sends `Ready`; the host's first frame on this
//!   session is [`Control::Boot`] carrying the [`BootSpec`] (version 4: the host may write it
//!   as soon as it accepted the connection, before `Ready` arrives). The agent waits for it at
//!   most [`BOOT_SPEC_PATIENCE_MS`]; if it does not come, or anything else comes first, or the
//!   spec is invalid (an empty command without `apps`), the agent says so on the console, sends
//!   `Error` and ends the VM. The guest's initramfs therefore holds the agent alone and is the
//!   same for every VM. `Shutdown` on this session stops every process (SIGTERM, SIGKILL after
//!   the grace period) and powers the VM off.
//! * **Other VMMs** (e.g. QEMU in the benchmarks, the agent on a second UART, `/dev/ttyS1`,
//!   when it finds no `podvm.agent_port=`, or on vsock to a plain sink) have no host side that
//!   sends `Boot`: their initramfs carries the spec as JSON at [`BOOT_SPEC_PATH`] and their
//!   kernel command line names it, `podvm.boot_spec=/podvm/boot.json` ([`BOOT_SPEC_PARAM`];
//!   `podvm boot --dump-initramfs` writes both). The agent then reads that file instead of
//!   waiting for `Boot`, and checks it as it checks a `Boot` message.
//! * **Exec sessions** (what `podvm enter` uses). When the boot spec carries an
//!   [`BootSpec::exec_token`], the agent also listens on vsock port [`EXEC_PORT`]. A host
//!   process connects to the guest's CID on that port and sends [`Control::Exec`] as its first
//!   frame; the request must carry the token, else the agent answers `Error` and closes. The
//!   agent answers `Ready`, runs the command (in the root of [`ExecRequest::app`]), relays it
//!   like the boot session and ends with `Exited`.
//! * **Pods of several apps** ([`BootSpec::apps`] not empty; version 3). The boot session then
//!   carries no process of its own: after `Ready` the agent mounts every app's root, opens one
//!   more connection to the same host port per app (an **app session**) whose first frame is
//!   [`Control::App`] naming the app, and starts the apps. Each app session carries that app's
//!   stdout, stderr, `Error`s and its `Exited`; its stdin is closed at once (stdin and
//!   terminals are for single-app pods). On the boot session the host may send `Signal`
//!   (delivered to every app) and `Shutdown`. rkt's rule: when an app ends with a status other
//!   than code 0, the agent sends SIGTERM to every other app, SIGKILL after
//!   [`BootSpec::stop_grace_ms`]. Once every app ended and the host closed its app session,
//!   the agent sends `Exited` on the boot session with the pod's status: that of the first app
//!   that failed, else code 0. Without `apps`, the top-level fields of [`BootSpec`] describe
//!   the one app and it runs on the boot session itself (what `podvm boot` and single-app pods
//!   use, with stdin and terminals).
//! * **Containers** (version 5): processes added to a running VM, each in a root of its own, by
//!   requests on the boot session. A VM booted with [`BootSpec::sandbox`] runs nothing else
//!   until the host asks; requests are also taken in the other modes. The agent answers each
//!   request, in order, with [`Control::ContainerDone`] or a [`Control::ContainerError`] that
//!   names the container, the request ([`ContainerOp`]) and the kind of failure
//!   ([`ContainerErrorKind`]):
//!   - `CreateContainer` ([`ContainerSpec`]): the id must be an appc ACName of at most
//!     [`MAX_CONTAINER_ID`] bytes ([`check_container_id`]), unused by any app or container,
//!     and the VM may hold at most [`MAX_CONTAINERS`] apps and containers. Its root is a
//!     directory of a share the agent mounted at boot ([`BootSpec::shares`]), given relative
//!     to the share; a path with `..`, `.` or an absolute component is refused, and it is
//!     resolved beneath the share without following any symlink. The agent binds it at
//!     `/opt/stage2/<id>/rootfs` with proc, sys, dev and /tmp inside, as for apps.
//!   - `StartContainer`: the agent opens the container's session, a connection to the host
//!     like an app session (first frame [`Control::App`] with the id), and starts its process
//!     there ([`ProcessSpec`]); the session then carries its stdout, stderr, stdin (when
//!     [`ProcessSpec::stdin`]; else stdin is closed at once), signals and resizes, `Error`s and
//!     its `Exited`. A process that cannot start answers `ContainerError` and still ends (127
//!     or 126), like any other.
//!   - When the process ended and its output was sent, the agent sends
//!     [`Control::ContainerExited`] on the boot session.
//!   - `SignalContainer` signals the process group of a running container.
//!   - `RemoveContainer` of a container that is not running unmounts its root and forgets it.
//!   - Exec sessions run in a container's root when [`ExecRequest::app`] names its id.
//!
//!   In a sandbox, `Shutdown` stops every container (SIGTERM, SIGKILL after the grace
//!   period); once all ended and their sessions closed, the agent sends `Exited` with code 0
//!   on the boot session and powers off. Containers are not under rkt's rule of apps.
//!
//! To end a session the agent sends its last frame and shuts down its write side; the host reads
//! to EOF and closes, which tells the agent everything arrived (for the boot session: that it
//! may power off).
//!
//! # Exit codes
//!
//! The agent reports `Exited` with [`EXIT_NOT_FOUND`] (127) when the command does not exist and
//! [`EXIT_CANNOT_EXEC`] (126) when it cannot be started: not executable, or the requested user
//! or group does not exist in the app root's /etc/passwd or /etc/group (an `Error` frame before
//! it says which).
//!
//! # OOM kills
//!
//! `Exited` may carry `oom_kills`, how many of the process's own processes the guest kernel's
//! OOM killer killed while it ran (the agent counts them in the app's cgroup, see the agent's
//! `oom` module). The field is left out when it is 0 and read as 0 when absent, so agents and
//! hosts from before it still understand every frame of a process the OOM killer spared.

pub mod mac;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 5;
/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"PV";
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Where the boot spec lives inside the initramfs of a VMM other than podvm's (one that cannot
/// send [`Control::Boot`]; see the sessions section).
pub const BOOT_SPEC_PATH: &str = "/podvm/boot.json";
/// Kernel command line parameter naming a boot spec file in the initramfs, for VMMs that
/// cannot send [`Control::Boot`] (see the sessions section).
pub const BOOT_SPEC_PARAM: &str = "podvm.boot_spec";
/// How long the agent waits for [`Control::Boot`] after it sent `Ready`, in milliseconds.
pub const BOOT_SPEC_PATIENCE_MS: u64 = 30_000;
/// Kernel command line parameter that tells the agent the host's vsock port,
/// e.g. `podvm.agent_port=1234` (see the transport section above).
pub const AGENT_PORT_PARAM: &str = "podvm.agent_port";
/// The vsock CID of the host as seen from the guest (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// The guest vsock port the agent listens on for exec sessions.
pub const EXEC_PORT: u32 = 5150;
/// Exit code reported when the requested command does not exist (as shells do).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code reported when the command exists but cannot be executed, or when the requested
/// user or group is unknown.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Grace period between SIGTERM and SIGKILL when a `Shutdown` names none.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Longest container id, in bytes.
pub const MAX_CONTAINER_ID: usize = 128;
/// Most apps and containers one VM holds at a time.
pub const MAX_CONTAINERS: usize = 64;

/// Errors while encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error("agent channel I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The frame did not start with the magic bytes.
    #[error("bad frame magic {0:02x?}: the peer is not speaking the podvm protocol")]
    BadMagic([u8; 2]),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this side speaks {VERSION}); rebuild host and agent together")]
    BadVersion(u8),
    /// The kind byte names no message kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload length exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    Oversized(usize),
    /// A control payload was not valid JSON for [`Control`].
    #[error("malformed control message: {0}")]
    BadControl(#[from] serde_json::Error),
    /// A valid message that this side must never receive.
    #[error("unexpected message {0}: it travels the other way")]
    WrongDirection(String),
}

/// Which standard stream a chunk of bytes belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard input of the app (host to guest).
    Stdin,
    /// Standard output of the app.
    Stdout,
    /// Standard error of the app.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// What the agent runs at boot. Exactly one of: a `command` (one app on the boot session),
/// `apps` (a pod of several apps), or `sandbox` (no workload until containers are created).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries, on top of the agent's defaults.
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    pub workdir: Option<String>,
    /// Run the command chrooted into a virtio-fs share instead of the initramfs (absent in
    /// specs from older hosts).
    #[serde(default)]
    pub rootfs: Option<RootfsSpec>,
    /// User to run as: a name from the app root's /etc/passwd or a number; root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Group to run as: a name from the app root's /etc/group or a number; the user's primary
    /// group when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Give the app a terminal (a pty) instead of pipes; its output then arrives as stdout.
    #[serde(default)]
    pub tty: bool,
    /// Secret that exec requests must present; without it the agent accepts no exec sessions.
    #[serde(default)]
    pub exec_token: Option<String>,
    /// Network interfaces and routes the agent configures before starting the app; absent:
    /// the guest has loopback only.
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// The apps of a pod of several apps, each on its own app session (see the sessions
    /// section); when not empty, `command`, `env`, `workdir`, `rootfs`, `user`, `group` and
    /// `tty` are unused.
    #[serde(default)]
    pub apps: Vec<AppSpec>,
    /// When one app of several fails, how long the others get between SIGTERM and SIGKILL, in
    /// milliseconds; [`DEFAULT_GRACE_MS`] when absent.
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
    /// The pod's volumes, each a virtio-fs share the agent mounts once at
    /// `/podvm/volumes/<name>` before the apps' roots bind it in ([`RootfsSpec::mounts`]).
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Resource limits of the single app ([`BootSpec::command`]).
    #[serde(default)]
    pub limits: AppLimits,
    /// Run no workload of its own: containers come by request and the VM runs until
    /// `Shutdown` (see the containers section); `command` and `apps` must be empty.
    #[serde(default)]
    pub sandbox: bool,
    /// Shares that hold containers' roots, each mounted once at boot at
    /// `/podvm/shares/<tag>`.
    #[serde(default)]
    pub shares: Vec<ShareSpec>,
    /// Capabilities and seccomp filter of the single app ([`BootSpec::command`]) and of the
    /// exec sessions in its root.
    #[serde(default)]
    pub security: Security,
    /// Groups the single app's process is in besides its user's (rkt's
    /// `--supplementary-gids`).
    #[serde(default)]
    pub supplementary_gids: Vec<u32>,
}

/// An app's resource limits inside the VM (its appc isolators): the agent runs the app in its
/// own cgroup v2 `/sys/fs/cgroup/app-<name>` with these set; none set: no cgroup of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLimits {
    /// `memory.max` in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU (`cpu.max` = millis x 100 us per 100 ms).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// rkt's `--cpu-shares` (cgroup v1 shares, 2 to 262144), as `cpu.weight`.
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// rkt's `--oom-score-adj` (-1000 to 1000), written to the process's `oom_score_adj`
    /// before it execs; not a cgroup setting ([`AppLimits::is_empty`] leaves it out).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl AppLimits {
    /// Whether no cgroup limit is set (then the app needs no cgroup of its own).
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_millis.is_none() && self.cpu_shares.is_none()
    }
}

/// A pod volume shared by the host over virtio-fs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The volume's name, which mounts refer to.
    pub name: String,
    /// The virtio-fs tag to mount.
    pub tag: String,
    /// Mount it read-only (the host refuses writes too).
    #[serde(default)]
    pub read_only: bool,
}

/// A volume mounted inside an app's root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The volume ([`VolumeSpec::name`]).
    pub volume: String,
    /// Absolute path inside the app's root; created when missing.
    pub target: String,
    /// Read-only here even if the volume is writable.
    #[serde(default)]
    pub read_only: bool,
}

/// One app of a pod of several apps: the per-app part of a [`BootSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The app's name, unique in the pod; names its app session and its exec target.
    pub name: String,
    /// Program and arguments, as in [`BootSpec::command`].
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The app's root (its `app` should be the app's name); the agent's own root when absent.
    #[serde(default)]
    pub rootfs: Option<RootfsSpec>,
    /// User, as in [`BootSpec::user`].
    #[serde(default)]
    pub user: Option<String>,
    /// Group, as in [`BootSpec::group`].
    #[serde(default)]
    pub group: Option<String>,
    /// Resource limits, as in [`BootSpec::limits`].
    #[serde(default)]
    pub limits: AppLimits,
    /// Capabilities and seccomp filter, as in [`BootSpec::security`].
    #[serde(default)]
    pub security: Security,
    /// Supplementary groups, as in [`BootSpec::supplementary_gids`].
    #[serde(default)]
    pub supplementary_gids: Vec<u32>,
}

impl AppSpec {
    /// The app's process, as a container's is described.
    pub fn process(&self) -> ProcessSpec {
        ProcessSpec {
            command: self.command.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            limits: self.limits,
            tty: false,
            stdin: false,
            security: self.security.clone(),
            supplementary_gids: self.supplementary_gids.clone(),
        }
    }
}

/// A process to run in a container (an app's is [`AppSpec::process`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments, as in [`BootSpec::command`].
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container's root; `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// User, as in [`BootSpec::user`] (looked up in the container's root).
    #[serde(default)]
    pub user: Option<String>,
    /// Group, as in [`BootSpec::group`].
    #[serde(default)]
    pub group: Option<String>,
    /// Resource limits: its own cgroup `app-<id>`, as for apps.
    #[serde(default)]
    pub limits: AppLimits,
    /// Run on a pty (its output then arrives as stdout).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for the host to write on the container's session; else it is closed at
    /// once, as for apps.
    #[serde(default)]
    pub stdin: bool,
    /// Capabilities and seccomp filter, as in [`BootSpec::security`].
    #[serde(default)]
    pub security: Security,
    /// Supplementary groups, as in [`BootSpec::supplementary_gids`].
    #[serde(default)]
    pub supplementary_gids: Vec<u32>,
}

/// What an app's processes may do (rkt's capability and seccomp isolators), applied by the
/// agent between fork and exec to the app and to the exec sessions in its root. The default
/// restricts nothing: the host decides the policy (rkt's defaults) and sends it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// The capabilities kept in the bounding set, by name (`CAP_CHOWN`, ...); a process run as
    /// root has exactly these as permitted and effective, one run as another user none (as in
    /// rkt). All capabilities when absent.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// The seccomp filter, installed last before the exec (with no_new_privs); none when absent.
    #[serde(default)]
    pub seccomp: Option<SeccompSpec>,
}

/// A seccomp filter over system call numbers of the guest's architecture (x86_64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompSpec {
    /// Whether [`SeccompSpec::syscalls`] are the only ones allowed or the ones refused.
    pub mode: SeccompMode,
    /// System call numbers.
    pub syscalls: Vec<i64>,
    /// The errno a refused call fails with; absent: the process is killed (SIGSYS), as rkt does.
    #[serde(default)]
    pub errno: Option<u32>,
}

/// How a seccomp filter treats its system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Only the listed calls are allowed (`os/linux/seccomp-retain-set`).
    Retain,
    /// The listed calls are refused (`os/linux/seccomp-remove-set`).
    Remove,
}

/// A virtio-fs share the agent mounts at boot for containers' roots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// The virtio-fs tag; also the share's directory name, `/podvm/shares/<tag>`.
    pub tag: String,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Where a container's root is: a directory inside a share mounted at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRootfs {
    /// The share ([`ShareSpec::tag`]).
    pub share: String,
    /// The directory, relative to the share's root (e.g. `web/rootfs`; empty: the share's
    /// root itself); no `..`, `.` or absolute components, no symlinks on the way.
    pub path: String,
    /// The container's root is read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A container to create in a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Its id ([`check_container_id`]); names its session, its cgroup, its root's mount point
    /// and its exec target.
    pub id: String,
    /// Its root.
    pub rootfs: ContainerRootfs,
    /// Its process, started by [`Control::StartContainer`].
    pub process: ProcessSpec,
}

/// Which container request an answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerOp {
    /// [`Control::CreateContainer`].
    Create,
    /// [`Control::StartContainer`].
    Start,
    /// [`Control::SignalContainer`].
    Signal,
    /// [`Control::RemoveContainer`].
    Remove,
}

/// Why a container request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerErrorKind {
    /// The id is not a valid container id.
    BadId,
    /// The root location is invalid: unknown share, escaping path, symlink, not a directory.
    BadRootfs,
    /// The process cannot be run: an empty command, or it did not start (127 / 126 follows).
    BadProcess,
    /// No such signal.
    BadSignal,
    /// An app or container already has this id.
    Exists,
    /// No container has this id.
    NotFound,
    /// The VM holds [`MAX_CONTAINERS`] already.
    TooMany,
    /// The container is not in a state that allows the request (start twice, signal one that
    /// is not running, remove one that runs, remove an app).
    WrongState,
    /// The agent failed to do it (a mount, the session's connection).
    Failed,
}

/// Why a string is not a container id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Nothing.
    #[error("it is empty")]
    Empty,
    /// Longer than [`MAX_CONTAINER_ID`].
    #[error("it is longer than {MAX_CONTAINER_ID} bytes")]
    TooLong,
    /// A character other than `a-z`, `0-9` and `-`.
    #[error("it contains a character other than a-z, 0-9 and '-'")]
    BadChar,
    /// A `-` at either end or next to another.
    #[error("a '-' must stand between two letters or digits")]
    BadDash,
}

/// Checks a container id: an appc ACName (`^[a-z0-9]+(-[a-z0-9]+)*$`) of at most
/// [`MAX_CONTAINER_ID`] bytes, so it can name a directory, a cgroup and a session.
pub fn check_container_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_CONTAINER_ID {
        return Err(IdError::TooLong);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(IdError::BadChar);
    }
    if id.starts_with('-') || id.ends_with('-') || id.contains("--") {
        return Err(IdError::BadDash);
    }
    Ok(())
}

/// The guest's network as the host decided it (from CNI results): the agent brings up `lo`,
/// then each interface (matched by MAC address), its addresses and MTU, then the routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// Interfaces, in the order of the VM's virtio-net devices.
    pub interfaces: Vec<GuestInterface>,
    /// Routes, added after all interfaces are up.
    #[serde(default)]
    pub routes: Vec<GuestRoute>,
}

/// One guest network interface (a virtio-net device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// MAC address, `aa:bb:cc:dd:ee:ff`; the agent finds the interface by it.
    pub mac: String,
    /// Name to give the interface (e.g. `eth0`); the kernel's when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Addresses in CIDR notation, e.g. `10.88.0.5/16`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// MTU; the device's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// One guest route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// Destination in CIDR notation; `0.0.0.0/0` is the default route.
    pub destination: String,
    /// Next hop; a link-scope route when absent.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// An app root filesystem shared by the host over virtio-fs. The agent mounts it at
/// `/opt/stage2/<app>/rootfs` (rkt's layout) with proc, sys, dev, /tmp inside, and chroots the
/// command into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The virtio-fs tag to mount.
    pub tag: String,
    /// The app's root is read-only (rkt's `--readonly-rootfs`).
    #[serde(default)]
    pub read_only: bool,
    /// The host takes writes on the share (a pod's own upper dir): the agent sets the root up
    /// (mount points, /etc/hosts, /etc/resolv.conf) before making it read-only. Otherwise a
    /// read-only root is mounted read-only at once (the host refuses writes too).
    #[serde(default)]
    pub share_writable: bool,
    /// The app name in the mount path; "app" when empty.
    #[serde(default)]
    pub app: String,
    /// Hostname the app sees; the app name when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Contents of /etc/resolv.conf written into the rootfs (only when it has none).
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Extra /etc/hosts lines (`IP NAME...`, rkt's `--hosts-entry`), after the defaults.
    #[serde(default)]
    pub hosts_entries: Vec<String>,
    /// Volumes bound into this root (of [`BootSpec::volumes`]), in order.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
}

/// A request to run a command in a running VM (the first frame of an exec session).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The VM's exec secret ([`BootSpec::exec_token`]).
    pub token: String,
    /// Program and arguments, as in [`BootSpec::command`].
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// User, as in [`BootSpec::user`].
    #[serde(default)]
    pub user: Option<String>,
    /// Group, as in [`BootSpec::group`].
    #[serde(default)]
    pub group: Option<String>,
    /// Run on a pty.
    #[serde(default)]
    pub tty: bool,
    /// Groups the process is in besides its user's, as in [`BootSpec::supplementary_gids`]
    /// (left out of the frame when empty: older agents get the frame they knew).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplementary_gids: Vec<u32>,
    /// The app or container whose root the command runs in (its [`RootfsSpec::app`],
    /// [`AppSpec::name`] or [`ContainerSpec::id`]); the pod's first app when absent.
    #[serde(default)]
    pub app: Option<String>,
}

/// Control messages, carried as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Agent to host: the agent is up and about to start the process.
    Ready {
        /// The agent's version string.
        agent_version: String,
    },
    /// Agent to host: the first frame of an app session; it carries this app.
    App {
        /// The app's name ([`AppSpec::name`]).
        name: String,
    },
    /// Agent to host: the process ended.
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// Processes of its own that the guest kernel's OOM killer killed while it ran (it, or
        /// any process it started): counted in its cgroup's `memory.events` when it has limits.
        /// Absent (0) from older agents and when there were none, so the frame of a process
        /// the OOM killer spared is what it always was.
        #[serde(default, skip_serializing_if = "is_zero")]
        oom_kills: u64,
    },
    /// Agent to host: the agent could not do what was asked; `message` says what and why.
    Error {
        /// Human-readable reason.
        message: String,
    },
    /// Host to agent: no more standard input; the app's stdin is closed.
    StdinClose,
    /// Host to agent: deliver a signal to the session's process group.
    Signal {
        /// The signal number (e.g. 15 for SIGTERM).
        signo: i32,
    },
    /// Host to agent: the terminal changed size (sessions with a tty).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Host to agent: run a command (first frame of an exec session).
    Exec(ExecRequest),
    /// Host to agent: what the VM runs (first frame of the boot session).
    Boot(Box<BootSpec>),
    /// Host to agent, boot session: create a container (its root is prepared, its process
    /// waits for `StartContainer`).
    CreateContainer(Box<ContainerSpec>),
    /// Host to agent, boot session: start a created container's process on its session.
    StartContainer {
        /// The container.
        id: String,
    },
    /// Host to agent, boot session: deliver a signal to a running container's process group.
    SignalContainer {
        /// The container.
        id: String,
        /// The signal number.
        signo: i32,
    },
    /// Host to agent, boot session: forget a container that is not running; its root is
    /// unmounted.
    RemoveContainer {
        /// The container.
        id: String,
    },
    /// Agent to host, boot session: a container request succeeded.
    ContainerDone {
        /// The container.
        id: String,
        /// The request.
        op: ContainerOp,
    },
    /// Agent to host, boot session: a container request failed.
    ContainerError {
        /// The container named by the request.
        id: String,
        /// The request.
        op: ContainerOp,
        /// What kind of failure.
        kind: ContainerErrorKind,
        /// What failed and why, naming the container.
        message: String,
    },
    /// Agent to host, boot session: a container's process ended and its output was sent.
    ContainerExited {
        /// The container.
        id: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Host to agent: stop every process (SIGTERM, then SIGKILL after `grace_ms`) and power off.
    Shutdown {
        /// Milliseconds between SIGTERM and SIGKILL.
        grace_ms: u64,
    },
}

impl Control {
    /// Whether the host sends this message (else the agent does).
    pub fn is_from_host(&self) -> bool {
        matches!(
            self,
            Control::StdinClose
                | Control::Signal { .. }
                | Control::Resize { .. }
                | Control::Exec(_)
                | Control::Boot(_)
                | Control::Shutdown { .. }
                | Control::CreateContainer(_)
                | Control::StartContainer { .. }
                | Control::SignalContainer { .. }
                | Control::RemoveContainer { .. }
        )
    }

    /// A short name for diagnostics (never the payload: an exec request and a boot spec hold
    /// the exec token).
    pub fn name(&self) -> &'static str {
        match self {
            Control::Ready { .. } => "ready",
            Control::App { .. } => "app",
            Control::Exited { .. } => "exited",
            Control::Error { .. } => "error",
            Control::StdinClose => "stdin_close",
            Control::Signal { .. } => "signal",
            Control::Resize { .. } => "resize",
            Control::Exec(_) => "exec",
            Control::Boot(_) => "boot",
            Control::CreateContainer(_) => "create_container",
            Control::StartContainer { .. } => "start_container",
            Control::SignalContainer { .. } => "signal_container",
            Control::RemoveContainer { .. } => "remove_container",
            Control::ContainerDone { .. } => "container_done",
            Control::ContainerError { .. } => "container_error",
            Control::ContainerExited { .. } => "container_exited",
            Control::Shutdown { .. } => "shutdown",
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Bytes of one of the app's standard streams.
    Data(Stream, Vec<u8>),
    /// A control message.
    Control(Control),
}

const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_STDIN: u8 = 3;
const KIND_CONTROL: u8 = 16;

impl Message {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let (kind, payload) = match self {
            Message::Data(stream, bytes) => (stream_kind(*stream), bytes.clone()),
            Message::Control(control) => (KIND_CONTROL, serde_json::to_vec(control)?),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(ProtocolError::Oversized(payload.len()));
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.push(VERSION);
        frame.push(kind);
        let len =
            u32::try_from(payload.len()).map_err(|_| ProtocolError::Oversized(payload.len()))?;
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    /// Writes the message as one frame.
    pub fn write_to(&self, out: &mut impl Write) -> Result<(), ProtocolError> {
        out.write_all(&self.encode()?)?;
        Ok(())
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream before a frame starts.
    pub fn read_from(input: &mut impl Read) -> Result<Option<Message>, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        if !read_exact_or_eof(input, &mut header)? {
            return Ok(None);
        }
        let (kind, len) = parse_header(&header)?;
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload)?;
        decode_payload(kind, payload).map(Some)
    }

    /// Whether the host sends this message (stdin data and host controls).
    pub fn is_from_host(&self) -> bool {
        match self {
            Message::Data(stream, _) => *stream == Stream::Stdin,
            Message::Control(control) => control.is_from_host(),
        }
    }

    /// The message as the agent accepts it: an error if only the agent may send it.
    pub fn check_from_host(self) -> Result<Self, ProtocolError> {
        if self.is_from_host() {
            Ok(self)
        } else {
            Err(ProtocolError::WrongDirection(self.name()))
        }
    }

    /// The message as the host accepts it: an error if only the host may send it.
    pub fn check_from_agent(self) -> Result<Self, ProtocolError> {
        if self.is_from_host() {
            Err(ProtocolError::WrongDirection(self.name()))
        } else {
            Ok(self)
        }
    }

    fn name(&self) -> String {
        match self {
            Message::Data(stream, _) => format!("{stream:?} data"),
            Message::Control(control) => control.name().to_string(),
        }
    }
}

/// Incremental decoder for byte streams that arrive in arbitrary chunks (e.g. a UART).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the decoder drops its buffer: the stream cannot be resynchronised.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buffer[..HEADER_LEN]);
        let (kind, len) = match parse_header(&header) {
            Ok(parsed) => parsed,
            Err(err) => {
                self.buffer.clear();
                return Err(err);
            }
        };
        if self.buffer.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buffer[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buffer.drain(..HEADER_LEN + len);
        let decoded = decode_payload(kind, payload);
        if decoded.is_err() {
            self.buffer.clear();
        }
        decoded.map(Some)
    }

    /// Number of buffered bytes not yet decoded.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// Whether a counter is zero (such fields are left out of the JSON).
fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn stream_kind(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => KIND_STDOUT,
        Stream::Stderr => KIND_STDERR,
        Stream::Stdin => KIND_STDIN,
    }
}

fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(u8, usize), ProtocolError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(ProtocolError::BadVersion(header[2]));
    }
    let kind = header[3];
    if !matches!(kind, KIND_STDOUT | KIND_STDERR | KIND_STDIN | KIND_CONTROL) {
        return Err(ProtocolError::UnknownKind(kind));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::Oversized(len));
    }
    Ok((kind, len))
}

fn decode_payload(kind: u8, payload: Vec<u8>) -> Result<Message, ProtocolError> {
    Ok(match kind {
        KIND_STDOUT => Message::Data(Stream::Stdout, payload),
        KIND_STDERR => Message::Data(Stream::Stderr, payload),
        KIND_STDIN => Message::Data(Stream::Stdin, payload),
        KIND_CONTROL => Message::Control(serde_json::from_slice(&payload)?),
        other => return Err(ProtocolError::UnknownKind(other)),
    })
}

/// Fills `buf` completely; returns false if the stream ended before the first byte.
fn read_exact_or_eof(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(message: Message) {
        let frame = message.encode().expect("encode");
        let decoded = Message::read_from(&mut frame.as_slice()).expect("decode");
        assert_eq!(decoded, Some(message));
    }

    fn all_kinds() -> Vec<Message> {
        vec![
            Message::Data(Stream::Stdout, b"hello\n".to_vec()),
            Message::Data(Stream::Stderr, vec![0, 255, 10]),
            Message::Data(Stream::Stdin, vec![]),
            Message::Control(Control::Ready {
                agent_version: "0.1".into(),
            }),
            Message::Control(Control::Exited {
                status: ExitStatus::Signal(9),
                oom_kills: 0,
            }),
            Message::Control(Control::Exited {
                status: ExitStatus::Code(137),
                oom_kills: 2,
            }),
            Message::Control(Control::Error {
                message: "nope".into(),
            }),
            Message::Control(Control::StdinClose),
            Message::Control(Control::Signal { signo: 15 }),
            Message::Control(Control::Resize { rows: 24, cols: 80 }),
            Message::Control(Control::Exec(ExecRequest {
                token: "t".into(),
                command: vec!["id".into()],
                env: vec!["A=1".into()],
                workdir: Some("/tmp".into()),
                user: Some("app".into()),
                group: Some("7".into()),
                tty: true,
                app: Some("db".into()),
                supplementary_gids: vec![10],
            })),
            Message::Control(Control::App { name: "web".into() }),
            Message::Control(Control::Shutdown { grace_ms: 5 }),
            Message::Control(Control::CreateContainer(Box::new(ContainerSpec {
                id: "web-1".into(),
                rootfs: ContainerRootfs {
                    share: "sandbox".into(),
                    path: "web-1/rootfs".into(),
                    read_only: true,
                },
                process: ProcessSpec {
                    command: vec!["httpd".into(), "-f".into()],
                    env: vec!["A=1".into()],
                    workdir: Some("/srv".into()),
                    user: Some("www".into()),
                    group: Some("7".into()),
                    limits: AppLimits {
                        memory_bytes: Some(1 << 20),
                        cpu_millis: Some(500),
                        cpu_shares: Some(512),
                        oom_score_adj: Some(-500),
                    },
                    tty: true,
                    stdin: true,
                    security: Security {
                        capabilities: Some(vec!["CAP_CHOWN".into()]),
                        seccomp: Some(SeccompSpec {
                            mode: SeccompMode::Remove,
                            syscalls: vec![4, 262, 332],
                            errno: Some(54),
                        }),
                    },
                    supplementary_gids: vec![10, 27],
                },
            }))),
            Message::Control(Control::StartContainer { id: "web-1".into() }),
            Message::Control(Control::SignalContainer {
                id: "web-1".into(),
                signo: 15,
            }),
            Message::Control(Control::RemoveContainer { id: "web-1".into() }),
            Message::Control(Control::ContainerDone {
                id: "web-1".into(),
                op: ContainerOp::Create,
            }),
            Message::Control(Control::ContainerError {
                id: "db".into(),
                op: ContainerOp::Start,
                kind: ContainerErrorKind::NotFound,
                message: "container db: no such container".into(),
            }),
            Message::Control(Control::ContainerExited {
                id: "web-1".into(),
                status: ExitStatus::Code(3),
            }),
            Message::Control(Control::Boot(Box::new(BootSpec {
                command: vec!["sh".into(), "-c".into(), "true".into()],
                exec_token: Some("t".into()),
                apps: vec![AppSpec {
                    name: "web".into(),
                    command: vec!["httpd".into()],
                    ..AppSpec::default()
                }],
                ..BootSpec::default()
            }))),
        ]
    }

    #[test]
    fn frames_roundtrip() {
        for message in all_kinds() {
            roundtrip(message);
        }
    }

    #[test]
    fn directions_are_checked() {
        for message in all_kinds() {
            let from_host = message.is_from_host();
            assert_eq!(message.clone().check_from_host().is_ok(), from_host);
            let err = message.check_from_agent();
            assert_eq!(err.is_err(), from_host);
            if let Err(err) = err {
                assert!(err.to_string().contains("other way"), "{err}");
            }
        }
    }

    #[test]
    fn decoder_handles_split_input() {
        let mut bytes = Vec::new();
        for message in all_kinds() {
            bytes.extend(message.encode().expect("encode"));
        }
        let mut decoder = FrameDecoder::new();
        let mut seen = Vec::new();
        for byte in bytes {
            decoder.push(&[byte]);
            while let Some(message) = decoder.next_message().expect("valid") {
                seen.push(message);
            }
        }
        assert_eq!(seen, all_kinds());
        assert_eq!(decoder.pending(), 0);
    }

    fn control_frame(json: &str) -> Vec<u8> {
        let mut frame = vec![b'P', b'V', VERSION, 0x10];
        frame.extend((json.len() as u32).to_le_bytes());
        frame.extend(json.as_bytes());
        frame
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"XX\x02\x01\0\0\0\0".to_vec(), "magic"),
            (b"PV\x01\x01\0\0\0\0".to_vec(), "version 1"),
            (b"PV\x02\x01\0\0\0\0".to_vec(), "version 2"),
            (b"PV\x03\x01\0\0\0\0".to_vec(), "version 3"),
            (b"PV\x04\x01\0\0\0\0".to_vec(), "version 4"),
            (b"PV\x09\x01\0\0\0\0".to_vec(), "version"),
            (b"PV\x05\x63\0\0\0\0".to_vec(), "kind"),
            (b"PV\x05\x01\xff\xff\xff\x7f".to_vec(), "exceeds"),
            (b"PV\x05\x10\x03\0\0\0{x}".to_vec(), "malformed"),
            (b"PV\x05\x10\x05\0\0\0{}".to_vec(), "I/O"),
            (control_frame(r#"{"type":"zz"}"#), "malformed"),
            (
                control_frame(r#"{"type":"signal","signo":"x"}"#),
                "malformed",
            ),
            (
                control_frame(r#"{"type":"resize","rows":70000,"cols":1}"#),
                "malformed",
            ),
        ];
        for (bytes, expected) in cases {
            let err = Message::read_from(&mut bytes.as_slice()).expect_err("must fail");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    /// Deterministic xorshift PRNG for the fuzz-style tests.
    struct Rng(u32);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            self.next() as usize % bound.max(1)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| (self.next() >> 7) as u8).collect()
        }
    }

    /// Feeds `bytes` to both decoders; they must agree, never panic, and never ask for more
    /// input than the frame announced (no hang on a huge length).
    fn decode_all(bytes: &[u8]) {
        let mut decoder = FrameDecoder::new();
        decoder.push(bytes);
        let mut from_decoder = Vec::new();
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => from_decoder.push(Ok(message)),
                Ok(None) => break,
                Err(err) => {
                    from_decoder.push(Err(err.to_string()));
                    assert_eq!(decoder.pending(), 0, "the buffer is dropped after an error");
                    break;
                }
            }
        }
        assert!(decoder.pending() < HEADER_LEN + MAX_PAYLOAD);
        let mut reader = bytes;
        for expected in from_decoder {
            let got = Message::read_from(&mut reader).map_err(|err| err.to_string());
            match (expected, got) {
                (Ok(a), Ok(Some(b))) => assert_eq!(a, b),
                (Err(_), Err(_)) => return,
                (a, b) => panic!("decoders disagree: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x1234_5678);
        for _ in 0..2000 {
            let len = rng.below(64);
            decode_all(&rng.bytes(len));
            // Random bytes behind a valid header prefix reach the payload decoders too.
            let mut framed = b"PV\x05".to_vec();
            framed.push([1, 2, 3, 16][rng.below(4)]);
            let payload_len = rng.below(40);
            let payload = rng.bytes(payload_len);
            framed.extend((payload.len() as u32).to_le_bytes());
            framed.extend(payload);
            decode_all(&framed);
        }
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut rng = Rng(0xdead_beef);
        let frames: Vec<Vec<u8>> = all_kinds()
            .iter()
            .map(|message| message.encode().expect("encode"))
            .collect();
        for _ in 0..5000 {
            let mut frame = frames[rng.below(frames.len())].clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(frame.len());
                frame[at] = rng.bytes(1)[0];
            }
            decode_all(&frame);
        }
    }

    #[test]
    fn truncated_frames_wait_or_fail_cleanly() {
        for message in all_kinds() {
            let frame = message.encode().expect("encode");
            for cut in 1..frame.len() {
                let mut decoder = FrameDecoder::new();
                decoder.push(&frame[..cut]);
                assert!(matches!(decoder.next_message(), Ok(None)), "cut at {cut}");
                let err = Message::read_from(&mut &frame[..cut]).expect_err("truncated");
                assert!(matches!(err, ProtocolError::Io(_)), "{err}");
            }
        }
    }

    #[test]
    fn huge_lengths_fail_at_once() {
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX, 1 << 31] {
            let mut frame = b"PV\x05\x01".to_vec();
            frame.extend(len.to_le_bytes());
            let mut decoder = FrameDecoder::new();
            decoder.push(&frame);
            let err = decoder.next_message().expect_err("oversized");
            assert!(matches!(err, ProtocolError::Oversized(_)), "{err}");
        }
        let big = Message::Data(Stream::Stdout, vec![0; MAX_PAYLOAD + 1]);
        assert!(matches!(big.encode(), Err(ProtocolError::Oversized(_))));
    }

    #[test]
    fn every_wrong_version_is_refused() {
        for version in (0..=255u8).filter(|v| *v != VERSION) {
            let frame = [b'P', b'V', version, 1, 0, 0, 0, 0];
            let err = Message::read_from(&mut frame.as_slice()).expect_err("version");
            assert!(matches!(err, ProtocolError::BadVersion(v) if v == version));
        }
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn old_boot_specs_still_parse() {
        let spec: BootSpec =
            serde_json::from_str(r#"{"command":["sh"],"env":[],"workdir":null}"#).expect("parse");
        assert_eq!(spec.user, None);
        assert!(!spec.tty);
        assert!(spec.apps.is_empty());
    }

    #[test]
    fn pod_specs_roundtrip() {
        let spec = BootSpec {
            apps: vec![AppSpec {
                name: "web".into(),
                command: vec!["httpd".into()],
                rootfs: Some(RootfsSpec {
                    tag: "rootfs-web".into(),
                    app: "web".into(),
                    mounts: vec![MountSpec {
                        volume: "data".into(),
                        target: "/srv".into(),
                        read_only: false,
                    }],
                    ..RootfsSpec::default()
                }),
                ..AppSpec::default()
            }],
            stop_grace_ms: Some(1500),
            volumes: vec![VolumeSpec {
                name: "data".into(),
                tag: "vol-0".into(),
                read_only: true,
            }],
            ..BootSpec::default()
        };
        let json = serde_json::to_string(&spec).expect("encode");
        assert_eq!(
            serde_json::from_str::<BootSpec>(&json).expect("decode"),
            spec
        );
        let app: AppSpec =
            serde_json::from_str(r#"{"name":"a","command":["true"]}"#).expect("minimal");
        assert_eq!(app.rootfs, None);
    }

    #[test]
    fn oom_kills_are_left_out_when_none_and_read_as_none_when_absent() {
        let spared = Control::Exited {
            status: ExitStatus::Code(0),
            oom_kills: 0,
        };
        let json = serde_json::to_string(&spared).expect("encode");
        assert_eq!(
            json, r#"{"type":"exited","status":{"Code":0}}"#,
            "as before"
        );
        let old: Control = serde_json::from_str(r#"{"type":"exited","status":{"Signal":9}}"#)
            .expect("an older agent's frame");
        assert_eq!(
            old,
            Control::Exited {
                status: ExitStatus::Signal(9),
                oom_kills: 0
            }
        );
        let killed: Control =
            serde_json::from_str(r#"{"type":"exited","status":{"Code":137},"oom_kills":1}"#)
                .expect("decode");
        assert!(matches!(killed, Control::Exited { oom_kills: 1, .. }));
    }
}
