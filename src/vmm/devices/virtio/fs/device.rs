//! The virtio-fs device: config space (tag + number of request queues) and which queues it
//! needs; activation, the worker and reset are the device core's.

use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use virtio_queue::QueueT;

use super::super::{read_config_bytes, ActivateError, Activation, DeviceCore, VirtioDevice};
use super::guard::Guard;
use super::queue::{FsServer, ShareRoot};
use super::{event_handler, FsShare};
use crate::vmm::seccomp::ThreadKind;

/// virtio device id of a file system device.
pub const DEVICE_TYPE: u32 = 26;
/// Size of the tag field in config space.
pub const TAG_LEN: usize = 36;
/// Queue 0 is the high-priority queue (FORGET, INTERRUPT), queue 1 the one request queue.
const QUEUE_SIZES: [u16; 2] = [128, 1024];
/// VIRTIO_RING_F_INDIRECT_DESC: a request's buffers may sit in one indirect table, so a 1 MiB
/// write takes one ring slot instead of ~260 and more requests fit in the ring at once.
const RING_INDIRECT_DESC: u32 = 28;
/// VIRTIO_RING_F_EVENT_IDX: driver and device say up to which entry they want to be notified,
/// so a busy queue is served without a kick per request and the guest without an interrupt
/// per reply.
const RING_EVENT_IDX: u32 = 29;
/// The feature bits offered (the transport adds VIRTIO_F_VERSION_1).
const FEATURES: u64 = (1 << RING_INDIRECT_DESC) | (1 << RING_EVENT_IDX);

/// Errors while creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The device's worker thread could not be started (or filtered).
    #[error("virtio-fs: {0}")]
    Worker(#[from] super::super::worker::WorkerError),
    /// The tag does not fit the config space.
    #[error("virtio-fs tag {tag:?}: must be 1 to {TAG_LEN} bytes without NUL")]
    Tag {
        /// The tag.
        tag: String,
    },
    /// The shared directory is unusable.
    #[error("virtio-fs share {tag:?}: {dir}: {reason}")]
    Dir {
        /// The tag.
        tag: String,
        /// The directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// The passthrough file system could not be created.
    #[error("virtio-fs share {tag:?}: cannot serve {dir}: {source}")]
    Passthrough {
        /// The tag.
        tag: String,
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One virtio-fs device serving one share.
pub struct Fs {
    config: Vec<u8>,
    server: Arc<FsServer>,
    root: Arc<ShareRoot>,
    core: DeviceCore,
}

impl Fs {
    /// A device serving `share`; fails if the tag is invalid or the directory unusable.
    pub fn new(share: &FsShare) -> Result<Self, FsError> {
        let config = config_space(&share.tag)?;
        let root = checked_root(share)?;
        // Best effort: with the limit it has, the share still works for fewer files.
        let _ = raise_fd_limit();
        let passthrough = PassthroughFs::new(passthrough_config(&root)).map_err(|source| {
            FsError::Passthrough {
                tag: share.tag.clone(),
                dir: root.clone(),
                source,
            }
        })?;
        let root_dir = std::fs::File::open(&root).map_err(|source| FsError::Passthrough {
            tag: share.tag.clone(),
            dir: root.clone(),
            source,
        })?;
        Ok(Self {
            config,
            server: Arc::new(Server::new(Guard::new(passthrough, share.read_only))),
            root: Arc::new(ShareRoot(root_dir.into())),
            core: DeviceCore::with_worker_name(
                "virtio-fs",
                format!("virtio-fs-{}", share.tag),
                ThreadKind::Fs,
            )?,
        })
    }
}

/// The passthrough configuration: no file handles (O_PATH fds only, no open_by_handle_at), no
/// DAX, xattrs on (the guard limits them to `user.*`), killpriv_v2 off, and the writeback cache
/// offered (FUSE_WRITEBACK_CACHE, if the driver asks for it).
///
/// Writeback cache: the guest's writes land in its page cache and reach the host as large
/// writes, in the background or when the guest flushes. What is durable stays the same:
/// fsync(2) in the guest writes the file's dirty pages back before its FUSE_FSYNC makes the
/// host fsync; `sync`/syncfs(2) writes back every dirty page before FUSE_SYNCFS syncs the
/// share's host file system; close(2) writes the file back (FUSE_FLUSH), so a closed file is in
/// the host's page cache as without the cache, and the agent syncs before power-off. Only data
/// a guest that is killed wrote without closing, fsyncing or syncing can now be lost, as on any
/// crash. The passthrough opens write-only files read-write on the host (the guest kernel reads
/// to fill partial pages) and drops O_APPEND (the guest kernel appends); the guard checks the
/// guest's own flags, so neither lets a read-only share or a setuid file be written.
pub fn passthrough_config(root: &str) -> Config {
    Config {
        root_dir: root.to_owned(),
        do_import: true,
        xattr: true,
        inode_file_handles: false,
        killpriv_v2: false,
        writeback: true,
        no_open: false,
        no_opendir: false,
        dax_file_size: None,
        seal_size: false,
        enable_mntid: true,
        use_host_ino: false,
        cache_policy: CachePolicy::Auto,
        ..Config::default()
    }
}

/// Raises this process's RLIMIT_NOFILE to what the kernel allows (`/proc/sys/fs/nr_open`, as
/// virtiofsd does), or failing that (no CAP_SYS_RESOURCE) the soft limit to the hard one, and
/// returns the soft limit in force. The passthrough holds one O_PATH descriptor per inode the
/// guest has looked up and not forgotten, so with the usual soft limit of 1024 a guest walking
/// a tree of a few thousand files got EMFILE ("Too many open files") from the host.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(limit.rlim_max);
    let wanted = nr_open.max(limit.rlim_max);
    for candidate in [wanted, limit.rlim_max] {
        if limit.rlim_cur >= candidate {
            break;
        }
        let raised = libc::rlimit {
            rlim_cur: candidate,
            rlim_max: candidate.max(limit.rlim_max),
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
            break;
        }
    }
    Ok(limit.rlim_cur)
}

/// The share's directory, canonical (symlinks on the way resolved once, here, on the host).
fn checked_root(share: &FsShare) -> Result<String, FsError> {
    let dir_error = |reason: String| FsError::Dir {
        tag: share.tag.clone(),
        dir: share.host_dir.display().to_string(),
        reason,
    };
    let canonical = std::fs::canonicalize(&share.host_dir)
        .map_err(|err| dir_error(format!("cannot resolve it: {err}")))?;
    if !Path::new(&canonical).is_dir() {
        return Err(dir_error("not a directory".into()));
    }
    canonical
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| dir_error("path is not UTF-8".into()))
}

/// The config space for `tag`: the tag NUL-padded to 36 bytes, then num_request_queues (le32 1).
pub fn config_space(tag: &str) -> Result<Vec<u8>, FsError> {
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > TAG_LEN || bytes.contains(&0) {
        return Err(FsError::Tag { tag: tag.into() });
    }
    let mut config = vec![0u8; TAG_LEN];
    config[..bytes.len()].copy_from_slice(bytes);
    let request_queues = u32::try_from(QUEUE_SIZES.len() - 1).expect("two queues");
    config.extend_from_slice(&request_queues.to_le_bytes());
    Ok(config)
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        self.core.name()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let event_idx = activation.acked_features & (1 << RING_EVENT_IDX) != 0;
        for queue in &mut activation.queues {
            queue.set_event_idx(event_idx);
        }
        // The high-priority queue (0) may stay unused, and unready, by the driver.
        self.core
            .activate(activation, 1..QUEUE_SIZES.len(), |activation| {
                Ok(event_handler::serve(
                    activation,
                    self.server.clone(),
                    self.root.clone(),
                ))
            })
    }

    fn reset(&mut self) {
        self.core.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_padded_tag_then_one_request_queue() {
        let config = config_space("rootfs").expect("valid tag");
        assert_eq!(config.len(), TAG_LEN + 4);
        assert_eq!(&config[..6], b"rootfs");
        assert!(config[6..TAG_LEN].iter().all(|b| *b == 0));
        assert_eq!(&config[TAG_LEN..], &1u32.to_le_bytes());
    }

    #[test]
    fn config_reads_at_offsets_and_past_the_end() {
        let share = FsShare {
            tag: "a".repeat(TAG_LEN),
            host_dir: std::env::temp_dir(),
            read_only: true,
        };
        let device = Fs::new(&share).expect("device");
        let mut word = [0xffu8; 4];
        device.read_config(TAG_LEN as u64, &mut word);
        assert_eq!(u32::from_le_bytes(word), 1);
        device.read_config(32, &mut word);
        assert_eq!(&word, b"aaaa");
        device.read_config(TAG_LEN as u64 + 4, &mut word);
        assert_eq!(word, [0; 4]);
        assert_eq!(device.device_type(), 26);
        assert_eq!(device.queue_max_sizes().len(), 2);
        assert_eq!(
            device.features(),
            (1 << 28) | (1 << 29),
            "indirect, event idx"
        );
    }

    /// The descriptor limit ends at least at the hard limit there was (the passthrough needs
    /// one descriptor per inode the guest holds).
    #[test]
    fn the_descriptor_limit_is_raised_to_at_least_the_hard_limit() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) };
        assert_eq!(got, 0);
        let soft = raise_fd_limit().expect("getrlimit");
        assert!(soft >= before.rlim_max, "{soft} < {}", before.rlim_max);
        assert_eq!(raise_fd_limit().expect("again"), soft, "idempotent");
    }

    #[test]
    fn bad_tags_and_directories_are_refused() {
        for tag in ["", "x\0y", &"a".repeat(TAG_LEN + 1)] {
            assert!(
                matches!(config_space(tag), Err(FsError::Tag { .. })),
                "{tag:?}"
            );
        }
        let missing = FsShare {
            tag: "t".into(),
            host_dir: "/nonexistent/podvm-share".into(),
            read_only: false,
        };
        assert!(matches!(Fs::new(&missing), Err(FsError::Dir { .. })));
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let not_dir = FsShare {
            host_dir: file.path().to_owned(),
            ..missing
        };
        let err = Fs::new(&not_dir).err().expect("a file is not a share");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
