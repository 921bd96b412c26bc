//! FUSE requests from a virtio-fs queue: each descriptor chain is one request (device-readable
//! part: in header + arguments) and room for its reply (device-writable part).
//!
//! FUSE_SYNCFS (a guest `sync` or `syncfs`) is answered here, before the FUSE server (which does
//! not know it): the host file system of the share is synced (syncfs(2)) and its result is the
//! reply, so data the guest syncs is on the host's disk when `sync` returns. Unanswered (ENOSYS),
//! the guest kernel would stop asking and its `sync` would return with the data still only in the
//! host's page cache.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::super::SignalGuest;
use super::guard::Guard;

/// The FUSE server of one share.
pub type FsServer = Server<Guard<PassthroughFs>>;

/// Errors that stop a queue from being served.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue in guest memory is broken.
    #[error("virtio-fs: bad queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The interrupt could not be raised.
    #[error("virtio-fs: cannot interrupt the guest: {0}")]
    Signal(std::io::Error),
}

/// The FUSE opcode of SYNCFS (include/uapi/linux/fuse.h; fuse-backend-rs 0.14 does not name it).
const FUSE_SYNCFS: u32 = 50;

/// Makes the host file system of a share durable (what a guest's FUSE_SYNCFS asks).
pub trait SyncShare {
    /// Syncs the share's file system to its disk.
    fn sync_share(&self) -> std::io::Result<()>;
}

/// The share's root directory, to sync its file system with syncfs(2).
#[derive(Debug)]
pub struct ShareRoot(pub OwnedFd);

impl SyncShare for ShareRoot {
    fn sync_share(&self) -> std::io::Result<()> {
        // SAFETY: syncfs takes a descriptor we own and touches no memory of ours.
        if unsafe { libc::syncfs(self.0.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Errors of requests the guest made, rate-limited.
static DROPPED: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-fs");

/// Answers every pending request of `queue` with `server`, then signals the guest if it wants
/// to know. A malformed request (buffers outside guest memory, undecodable header) is returned
/// to the driver with no reply bytes; it does not stop the queue. Returns the requests handled.
///
/// While it works the driver is asked not to kick (VRING_USED_F_NO_NOTIFY, or with EVENT_IDX
/// the avail event left behind), and before it returns it re-enables kicks and looks once more,
/// so requests queued meanwhile are served in the same call without a kick of their own. A
/// pass that finds nothing although the ring says there is more (a broken avail index) ends
/// the call instead of looping.
pub fn process_queue<F, S>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    server: &Server<F>,
    share: &dyn SyncShare,
    signal: &S,
) -> Result<usize, QueueError>
where
    F: FileSystem + Sync,
    S: SignalGuest,
{
    let mut handled = 0;
    loop {
        queue.disable_notification(mem)?;
        let before = handled;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match answer(mem, chain, server, share) {
                Ok(written) => written,
                Err(err) => {
                    DROPPED.log(format_args!("request dropped: {err}"));
                    0
                }
            };
            queue.add_used(mem, head, written)?;
            handled += 1;
        }
        if !queue.enable_notification(mem)? || handled == before {
            break;
        }
    }
    if handled > 0 && queue.needs_notification(mem)? {
        signal.signal_used_queue().map_err(QueueError::Signal)?;
    }
    Ok(handled)
}

/// Decodes one request and writes its reply; returns the reply length.
fn answer<F: FileSystem + Sync>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    server: &Server<F>,
    share: &dyn SyncShare,
) -> Result<u32, String> {
    let mut reader =
        Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
    let mut writer = VirtioFsWriter::new(mem, chain.clone()).map_err(|e| e.to_string())?;
    let header: InHeader = reader.read_obj().map_err(|e| e.to_string())?;
    if header.opcode == FUSE_SYNCFS {
        return answer_syncfs(&mut writer, header.unique, share);
    }
    let reader = Reader::from_descriptor_chain(mem, chain).map_err(|e| e.to_string())?;
    let written = server
        .handle_message(reader, writer.into(), None, None)
        .map_err(|e| e.to_string())?;
    u32::try_from(written).map_err(|_| format!("reply of {written} bytes"))
}

/// Syncs the share and writes the reply header (no body) with its result.
fn answer_syncfs(
    writer: &mut VirtioFsWriter<'_>,
    unique: u64,
    share: &dyn SyncShare,
) -> Result<u32, String> {
    let error = match share.sync_share() {
        Ok(()) => 0,
        Err(err) => -err.raw_os_error().unwrap_or(libc::EIO),
    };
    let len = std::mem::size_of::<OutHeader>();
    let reply = OutHeader {
        len: u32::try_from(len).map_err(|_| "reply header size".to_string())?,
        error,
        unique,
    };
    writer
        .write_all(vm_memory::ByteValued::as_slice(&reply))
        .map_err(|e| e.to_string())?;
    u32::try_from(len).map_err(|_| "reply header size".to_string())
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
