//! virtio-rng requests: each descriptor chain is one request, its device-writable buffers are
//! filled from the host's getrandom(2). Needs only guest memory and a [`SignalGuest`], so unit
//! tests and the fuzz target drive it without KVM.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::super::SignalGuest;

/// Most bytes handed out for one request; the driver asks again for more.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// Errors while serving entropy requests.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The queue in guest memory is broken.
    #[error("virtio-rng: bad request queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A buffer lies outside guest memory.
    #[error("virtio-rng: request buffer outside guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The host could not provide entropy.
    #[error("virtio-rng: getrandom failed: {0}")]
    Entropy(std::io::Error),
    /// The interrupt could not be raised.
    #[error("virtio-rng: cannot interrupt the guest: {0}")]
    Signal(std::io::Error),
}

/// Fills every pending request of `queue` with entropy and signals the guest if it wants to
/// know. Returns the number of requests served.
pub fn fill_requests<S: SignalGuest>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    signal: &S,
) -> Result<usize, RngError> {
    let mut served = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written: u32 = 0;
        for descriptor in chain {
            if !descriptor.is_write_only() {
                continue;
            }
            let len = descriptor.len().min(MAX_REQUEST_BYTES - written);
            if len == 0 {
                break;
            }
            let mut bytes = vec![0u8; usize::try_from(len).expect("u32 fits in usize")];
            getrandom(&mut bytes).map_err(RngError::Entropy)?;
            mem.write_slice(&bytes, descriptor.addr())?;
            written += len;
        }
        queue.add_used(mem, head, written)?;
        served += 1;
    }
    if served > 0 && queue.needs_notification(mem)? {
        signal.signal_used_queue().map_err(RngError::Signal)?;
    }
    Ok(served)
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable slice `rest`, which outlives the
        // call; getrandom writes at most `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
