//! What a virtio device is to the transport ([`VirtioDevice`]), what it gets when the driver
//! starts it ([`Activation`]), and the core every device is built on ([`DeviceCore`]): whether it
//! runs, the queue check before it starts, and the worker thread it runs on. A device adds only
//! what is its own: config space, features, its queue handling and its backend.

use std::ops::Range;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::Interrupt;
use super::worker::{Kicks, Serve, Worker, WorkerError};
use crate::vmm::seccomp::ThreadKind;

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, to be accessed only through its checked accessors.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub kicks: Vec<EventFd>,
    /// Raises the device's interrupt.
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

impl Activation {
    /// What the worker of a device that serves its queues itself does: when the driver kicks
    /// queue `i`, `handle(queue i, guest memory, interrupt)`.
    pub fn serve_queues<F>(self, mut handle: F) -> Kicks<impl FnMut(usize) + Send + 'static>
    where
        F: FnMut(&mut Queue, &GuestMemoryMmap, &Interrupt) + Send + 'static,
    {
        let Self {
            mem,
            mut queues,
            kicks,
            interrupt,
            ..
        } = self;
        Kicks::new(kicks, move |index| {
            if let Some(queue) = queues.get_mut(index) {
                handle(queue, &mem, &interrupt);
            }
        })
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready or lies outside guest memory.
    #[error("{device}: queue {queue} is not ready or not inside guest memory")]
    BadQueue {
        /// Which device.
        device: &'static str,
        /// The queue index.
        queue: usize,
    },
    /// The device's worker or backend could not be set up.
    #[error("{device}: {what}: {source}")]
    Backend {
        /// Which device.
        device: &'static str,
        /// What was attempted.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A virtio device behind the MMIO transport: type, features, config space, and what happens
/// when the driver starts (activate) or resets it.
pub trait VirtioDevice: Send {
    /// The virtio device id (4 = entropy, 19 = vsock).
    fn device_type(&self) -> u32;
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; devices with read-only config ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and forgets the queues (driver reset or VM teardown).
    fn reset(&mut self);
}

/// Copies `config[offset..]` into `data`, zero-filling what lies past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

/// Whether the device runs. Guest memory and the queues reach a device only in its
/// [`Activation`], which is handed to the worker: an inactive device has nothing to touch
/// guest memory with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    Inactive,
    Active,
}

/// The part of a virtio device that is the same for every device: its activation state, the
/// check of the driver's queues, the worker thread, and reset.
pub struct DeviceCore {
    name: &'static str,
    worker: Worker,
    state: DeviceState,
}

impl DeviceCore {
    /// The inactive core of device `name`, whose worker thread is called `name` too and
    /// filtered as `kind`. The thread starts now (see [`Worker`]).
    pub fn new(name: &'static str, kind: ThreadKind) -> Result<Self, WorkerError> {
        Self::with_worker_name(name, name.into(), kind)
    }

    /// Like [`new`](Self::new), with the worker thread called `worker_name` (when several
    /// devices share a name).
    pub fn with_worker_name(
        name: &'static str,
        worker_name: String,
        kind: ThreadKind,
    ) -> Result<Self, WorkerError> {
        Ok(Self {
            name,
            worker: Worker::spawn(worker_name, kind)?,
            state: DeviceState::Inactive,
        })
    }

    /// The device's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the device runs.
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.state == DeviceState::Active
    }

    /// Starts the device. First every queue in `required` must be ready and inside guest memory
    /// (else [`ActivateError::BadQueue`] naming the device and the queue, and `start` is not
    /// called); then `start` sets up the device's backend and returns what its worker serves,
    /// which runs on a new thread. On any error the device stays inactive. An active device is
    /// stopped first (as [`reset`](Self::reset) does).
    pub fn activate<S, F>(
        &mut self,
        activation: Activation,
        required: Range<usize>,
        start: F,
    ) -> Result<(), ActivateError>
    where
        S: Serve,
        F: FnOnce(Activation) -> Result<S, ActivateError>,
    {
        self.reset();
        self.check_queues(&activation, required)?;
        let serve = start(activation)?;
        self.worker
            .start(serve)
            .map_err(|source| ActivateError::Backend {
                device: self.name,
                what: "cannot start the worker thread".into(),
                source,
            })?;
        self.state = DeviceState::Active;
        Ok(())
    }

    /// Refuses the first queue of `required` that is missing, not ready or not inside guest
    /// memory.
    fn check_queues(
        &self,
        activation: &Activation,
        required: Range<usize>,
    ) -> Result<(), ActivateError> {
        for index in required {
            let usable = match (activation.queues.get(index), activation.kicks.get(index)) {
                (Some(queue), Some(_kick)) => queue.ready() && queue.is_valid(&activation.mem),
                _ => false,
            };
            if !usable {
                return Err(ActivateError::BadQueue {
                    device: self.name,
                    queue: index,
                });
            }
        }
        Ok(())
    }

    /// Stops the device if it runs: its worker thread stops serving and drops what it served,
    /// and with it go the queues and guest memory. Resetting an inactive device does nothing.
    pub fn reset(&mut self) {
        self.reset_with(|| {});
    }

    /// Like [`reset`](Self::reset), calling `teardown` (e.g. to detach a vhost backend) before
    /// the worker stops; an inactive device does not call it.
    pub fn reset_with(&mut self, teardown: impl FnOnce()) {
        if std::mem::replace(&mut self.state, DeviceState::Inactive) == DeviceState::Active {
            teardown();
            self.worker.stop();
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
