//! The vhost-vsock device: CID, config space, and handing the queues to the kernel.

use std::sync::Arc;

use vhost::vhost_kern::vsock::Vsock as VhostVsockBackend;
use vhost::vsock::VhostVsock;
use vhost::VhostBackend;
use vm_memory::GuestMemoryMmap;

use super::super::worker::Serve;
use super::super::{
    read_config_bytes, vhost_setup, ActivateError, Activation, DeviceCore, VirtioDevice,
};
use crate::vmm::seccomp::ThreadKind;

/// virtio device id of a socket device.
pub const DEVICE_TYPE: u32 = 19;
/// rx, tx and event queues.
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// The queues vhost serves (rx and tx); the event queue (2) stays here.
const VHOST_QUEUES: usize = 2;
/// The lowest CID a guest may have (0, 1 and 2 are reserved for hypervisor, local and host).
const FIRST_GUEST_CID: u32 = 3;
/// How many random CIDs to try before giving up.
const CID_ATTEMPTS: usize = 32;

/// Errors while creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The device's worker thread could not be started (or filtered).
    #[error("virtio-vsock: {0}")]
    Worker(#[from] super::super::worker::WorkerError),
    /// /dev/vhost-vsock is missing or not usable.
    #[error(
        "cannot set up vhost-vsock ({what}): {source}; load the vhost_vsock module \
         (`modprobe vhost_vsock`) and make /dev/vhost-vsock accessible"
    )]
    Vhost {
        /// What was attempted.
        what: &'static str,
        /// Why.
        source: vhost::Error,
    },
    /// Every CID tried was taken by another VM.
    #[error("no free vsock guest CID after {CID_ATTEMPTS} random tries")]
    NoFreeCid,
    /// No randomness to pick a CID.
    #[error("cannot pick a random vsock guest CID: {0}")]
    Random(std::io::Error),
}

/// The vsock device backed by vhost-vsock.
pub struct Vsock {
    cid: u32,
    backend: VhostVsockBackend<Arc<GuestMemoryMmap>>,
    core: DeviceCore,
}

impl Vsock {
    /// Opens /dev/vhost-vsock for this VM and claims a free guest CID.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, VsockError> {
        let vhost = |what| move |source| VsockError::Vhost { what, source };
        let backend = VhostVsockBackend::new(Arc::new(mem.clone()))
            .map_err(vhost("open /dev/vhost-vsock"))?;
        backend.set_owner().map_err(vhost("VHOST_SET_OWNER"))?;
        let cid = claim_cid(&backend)?;
        Ok(Self {
            cid,
            backend,
            core: DeviceCore::new("virtio-vsock", ThreadKind::Vsock)?,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u32 {
        self.cid
    }
}

/// Hands rx and tx to vhost and lets it run; returns what the worker does (relay vhost's
/// interrupts).
fn start(
    backend: &VhostVsockBackend<Arc<GuestMemoryMmap>>,
    name: &'static str,
    activation: Activation,
) -> Result<impl Serve, ActivateError> {
    let (calls, interrupt) = vhost_setup::start_vrings(backend, name, activation, VHOST_QUEUES)?;
    backend
        .start()
        .map_err(vhost_setup::backend_error(name, "VHOST_VSOCK_SET_RUNNING"))?;
    Ok(vhost_setup::relay_calls(name, calls, interrupt))
}

/// Claims a random free CID with VHOST_VSOCK_SET_GUEST_CID, retrying when another VM has it.
fn claim_cid(backend: &VhostVsockBackend<Arc<GuestMemoryMmap>>) -> Result<u32, VsockError> {
    for _ in 0..CID_ATTEMPTS {
        let mut bytes = [0u8; 4];
        super::super::rng::getrandom(&mut bytes).map_err(VsockError::Random)?;
        // Keep CIDs positive as signed 32-bit numbers; some tools print them that way.
        let cid = FIRST_GUEST_CID + u32::from_le_bytes(bytes) % (0x7fff_0000 - FIRST_GUEST_CID);
        match backend.set_guest_cid(u64::from(cid)) {
            Ok(()) => return Ok(cid),
            Err(vhost::Error::IoctlError(err)) if err.raw_os_error() == Some(libc::EADDRINUSE) => {}
            Err(source) => {
                return Err(VsockError::Vhost {
                    what: "VHOST_VSOCK_SET_GUEST_CID",
                    source,
                })
            }
        }
    }
    Err(VsockError::NoFreeCid)
}

impl VirtioDevice for Vsock {
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
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&u64::from(self.cid).to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let name = self.core.name();
        // The event queue stays here, unused: only rx and tx must be ready.
        self.core
            .activate(activation, 0..VHOST_QUEUES, |activation| {
                start(&self.backend, name, activation)
            })
    }

    fn reset(&mut self) {
        self.core.reset_with(|| {
            if let Err(err) = self.backend.stop() {
                eprintln!("podvm: virtio-vsock: cannot stop vhost: {err}");
            }
        });
    }
}
