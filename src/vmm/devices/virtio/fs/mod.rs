//! virtio-fs (device id 26): shares a host directory with the guest, served in-process by a
//! FUSE server ([`fuse_backend_rs`]) over the device's queues; no virtiofsd, no vhost-user.
//!
//! - `device.rs`: the device (config space with the tag) on the device core.
//! - `queue.rs`: pops FUSE requests from a queue and answers them; needs only guest memory and a
//!   [`SignalGuest`](super::SignalGuest), so unit tests drive it without KVM.
//! - `guard.rs`: the file system the guest talks to: a passthrough of the shared directory
//!   wrapped by [`Guard`], which keeps the guest inside it and enforces read-only shares.
//! - `event_handler.rs`: what wakes the worker thread: the queue kicks.
//! - `counters.rs`: the bytes the guest read and wrote, for the pod's accounting.
//!
//! Confinement: the passthrough server resolves one path component at a time with
//! `openat(O_PATH | O_NOFOLLOW)` relative to a directory it already holds and never follows
//! symlinks (the guest kernel resolves them in the guest's own namespace, so `/etc/shadow` behind
//! a symlink means the guest's file, i.e. a path inside the share). [`Guard`] adds what the
//! passthrough allows on its own: names that are not one component (`..` on any directory,
//! which after a host-side move would lead out of the share), device nodes (mknod of char or
//! block devices, RENAME_WHITEOUT, opening non-regular files on the host), setuid/setgid bits on
//! files the guest creates, chmods or writes, xattrs outside the `user.` namespace
//! (`trusted.overlay.*`, `security.capability`), and every mutation of a read-only share.

mod counters;
mod device;
mod event_handler;
mod guard;
mod queue;

use std::path::PathBuf;

pub use self::counters::{share_bytes, share_in, SharedCounters};
pub use self::device::{Fs, FsError};
#[doc(hidden)]
pub use self::{device::passthrough_config, guard::Guard, queue::process_queue, queue::SyncShare};

/// One shared host directory: what the guest mounts with `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsShare {
    /// The mount tag the guest uses (1 to 36 bytes, no NUL).
    pub tag: String,
    /// The host directory served (absolute).
    pub host_dir: PathBuf,
    /// Refuse every mutation with EROFS on the host side.
    pub read_only: bool,
}
