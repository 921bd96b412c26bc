//! The virtio-rng device: no config space, no features, one request queue.

use super::super::{read_config_bytes, ActivateError, Activation, DeviceCore, VirtioDevice};
use super::event_handler;
use crate::vmm::devices::virtio::worker::WorkerError;
use crate::vmm::seccomp::ThreadKind;

/// virtio device id of an entropy source.
pub const DEVICE_TYPE: u32 = 4;
/// Size of the single request queue.
const QUEUE_SIZES: [u16; 1] = [256];

/// The entropy device.
pub struct Rng {
    core: DeviceCore,
}

impl Rng {
    /// An inactive device (its worker thread waiting); it starts when the driver sets
    /// DRIVER_OK.
    pub fn new() -> Result<Self, WorkerError> {
        Ok(Self {
            core: DeviceCore::new("virtio-rng", ThreadKind::Rng)?,
        })
    }
}

impl VirtioDevice for Rng {
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
        // virtio-rng has no config space.
        read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.core
            .activate(activation, 0..QUEUE_SIZES.len(), |activation| {
                Ok(event_handler::serve(activation))
            })
    }

    fn reset(&mut self) {
        self.core.reset();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::super::super::Interrupt;
    use super::*;

    fn eventfd() -> EventFd {
        EventFd::new(EFD_NONBLOCK).expect("eventfd")
    }

    /// Waits until the worker answered one request on `mock` and raised the interrupt `irq`.
    fn wait_served(mock: &MockSplitQueue<GuestMemoryMmap>, irq: &EventFd) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mock.used().idx().load() == 0 {
            assert!(Instant::now() < deadline, "request not served");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(mock.used().ring().ref_at(0).expect("used").load().len(), 32);
        assert_eq!(irq.read().expect("interrupt raised"), 1);
    }

    #[test]
    fn the_driver_can_reset_and_start_the_device_again_on_new_queues() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
        let write = u16::try_from(VRING_DESC_F_WRITE).expect("a flag bit");
        let mut rng = Rng::new().expect("rng");
        for base in [0x1_0000, 0x2_0000] {
            let mock = MockSplitQueue::create(&mem, GuestAddress(base), 16);
            let request = RawDescriptor::from(Descriptor::new(0x30_0000, 32, write, 0));
            mock.add_desc_chains(&[request], 0).expect("chain");
            let (kick, irq) = (eventfd(), eventfd());
            rng.activate(Activation {
                mem: mem.clone(),
                queues: vec![mock.create_queue().expect("queue")],
                kicks: vec![kick.try_clone().expect("clone")],
                interrupt: Interrupt::new(irq.try_clone().expect("clone")),
                acked_features: 0,
            })
            .expect("activate");
            kick.write(1).expect("kick");
            wait_served(&mock, &irq);
            rng.reset();
            assert!(!rng.core.is_active());
        }
    }

    #[test]
    fn an_unready_queue_is_refused_with_the_device_named() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).expect("memory");
        let mut rng = Rng::new().expect("rng");
        let err = rng
            .activate(Activation {
                mem,
                queues: vec![Queue::new(256).expect("queue")],
                kicks: vec![eventfd()],
                interrupt: Interrupt::new(eventfd()),
                acked_features: 0,
            })
            .expect_err("not ready");
        assert_eq!(
            err.to_string(),
            "virtio-rng: queue 0 is not ready or not inside guest memory"
        );
        assert!(!rng.core.is_active());
    }
}
