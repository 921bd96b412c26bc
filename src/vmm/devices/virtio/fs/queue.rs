//! FUSE requests from a virtio-fs queue: each descriptor chain is one request (device-readable
//! part: in header + arguments) and room for its reply (device-writable part).

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

/// Errors of requests the guest made, rate-limited.
static DROPPED: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio-fs");

/// Answers every pending request of `queue` with `server`, then signals the guest if it wants
/// to know. A malformed request (buffers outside guest memory, undecodable header) is returned
/// to the driver with no reply bytes; it does not stop the queue. Returns the requests handled.
pub fn process_queue<F, S>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    server: &Server<F>,
    signal: &S,
) -> Result<usize, QueueError>
where
    F: FileSystem + Sync,
    S: SignalGuest,
{
    let mut handled = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let written = match answer(mem, chain, server) {
            Ok(written) => written,
            Err(err) => {
                DROPPED.log(format_args!("request dropped: {err}"));
                0
            }
        };
        queue.add_used(mem, head, written)?;
        handled += 1;
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
) -> Result<u32, String> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
    let writer = VirtioFsWriter::new(mem, chain).map_err(|e| e.to_string())?;
    let written = server
        .handle_message(reader, writer.into(), None, None)
        .map_err(|e| e.to_string())?;
    u32::try_from(written).map_err(|_| format!("reply of {written} bytes"))
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
