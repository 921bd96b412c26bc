//! The virtio-rng device and its request queue handling.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::super::worker::Worker;
use super::super::{read_config_bytes, ActivateError, Activation, SignalGuest, VirtioDevice};
use super::event_handler;

/// virtio device id of an entropy source.
pub const DEVICE_TYPE: u32 = 4;
/// Size of the single request queue.
const QUEUE_SIZES: [u16; 1] = [256];
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

enum DeviceState {
    Inactive,
    Active(Worker),
}

/// The entropy device.
pub struct Rng {
    state: DeviceState,
}

impl Rng {
    /// An inactive device; it starts when the driver sets DRIVER_OK.
    pub fn new() -> Self {
        Self {
            state: DeviceState::Inactive,
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            mut queues,
            mut kicks,
            interrupt,
            ..
        } = activation;
        let (Some(queue), Some(kick)) = (queues.pop(), kicks.pop()) else {
            return Err(ActivateError::BadQueue {
                device: self.name(),
                queue: 0,
            });
        };
        if !queue.ready() || !queue.is_valid(&mem) {
            return Err(ActivateError::BadQueue {
                device: self.name(),
                queue: 0,
            });
        }
        let worker = event_handler::start(mem, queue, kick, interrupt).map_err(|source| {
            ActivateError::Backend {
                device: self.name(),
                what: "cannot start the worker thread".into(),
                source,
            }
        })?;
        self.state = DeviceState::Active(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let DeviceState::Active(mut worker) =
            std::mem::replace(&mut self.state, DeviceState::Inactive)
        {
            worker.stop();
        }
    }
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
#[path = "device_tests.rs"]
mod tests;
