//! The virtio-mmio transport, version 2: the register file the driver programs, the device
//! status state machine, and the bus that routes vCPU MMIO exits to each device's window.
//!
//! Register map (offsets into the 4 KiB window, all registers 32-bit little endian):
//!
//! ```text
//! 0x000 MagicValue "virt"     0x004 Version (2)        0x008 DeviceID       0x00c VendorID
//! 0x010 DeviceFeatures        0x014 DeviceFeaturesSel  0x020 DriverFeatures 0x024 DriverFeaturesSel
//! 0x030 QueueSel              0x034 QueueNumMax        0x038 QueueNum       0x044 QueueReady
//! 0x050 QueueNotify (ioeventfd, never reaches this code from a real guest)
//! 0x060 InterruptStatus       0x064 InterruptACK       0x070 Status
//! 0x080/0x084 QueueDesc       0x090/0x094 QueueDriver  0x0a0/0x0a4 QueueDevice
//! 0x0fc ConfigGeneration      0x100.. device config space
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vmm::devices::DeviceError;

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version this implements.
pub const VERSION: u32 = 2;
/// Vendor id reported to the driver ("PVM\0").
pub const VENDOR_ID: u32 = 0x004d_5650;

/// Register offsets.
pub mod reg {
    /// MagicValue.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (available ring).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow (used ring).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device config space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (the transport itself only acts on some; the tests drive all).
#[allow(dead_code)]
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready; the device may use the queues.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// One device behind its register file.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    kicks: Vec<EventFd>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// A transport for `device`; `kicks` holds one eventfd per queue (signalled on QueueNotify).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
        kicks: Vec<EventFd>,
    ) -> Self {
        let queues = fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            kicks,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn queue_for_read(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_select).ok()?)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues may only be configured before the driver says DRIVER_OK.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    /// Serves a driver read at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let value = if data.len() == 4 {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data.fill(0);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => low(self.device_features()),
                1 => high(self.device_features()),
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queue_for_read()
                .map_or(0, |queue| u32::from(queue.max_size())),
            reg::QUEUE_READY => self
                .queue_for_read()
                .map_or(0, |queue| u32::from(queue.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    /// Serves a driver write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER_OK == 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            reg::QUEUE_READY => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            reg::QUEUE_DESC_HIGH => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.selected_queue() {
            set(queue);
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        self.acked_features = (self.acked_features & !mask) | (u64::from(value) << shift);
    }

    /// A notification that reached user space (no ioeventfd, e.g. in tests): forward it to the
    /// queue's kick eventfd as the ioeventfd would.
    fn notify(&mut self, queue: u32) {
        if let Some(kick) = usize::try_from(queue)
            .ok()
            .and_then(|index| self.kicks.get(index))
        {
            let _ = kick.write(1);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 && self.acked_features & !self.device_features() != 0 {
            // The driver accepted features the device does not offer: refuse FEATURES_OK.
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let kicks: std::io::Result<Vec<EventFd>> =
            self.kicks.iter().map(EventFd::try_clone).collect();
        let result = kicks
            .map_err(|source| super::ActivateError::Backend {
                device: self.device.name(),
                what: "cannot clone the queue eventfds".into(),
                source,
            })
            .and_then(|kicks| {
                // The device owns the queues from now on; the registers keep copies.
                let copies = self.queues.iter().map(register_copy).collect();
                let queues = std::mem::replace(&mut self.queues, copies);
                self.device.activate(Activation {
                    mem: self.mem.clone(),
                    queues,
                    kicks,
                    interrupt: self.interrupt.clone(),
                    acked_features: self.acked_features,
                })
            });
        if let Err(err) = result {
            ACTIVATION.log(format_args!("not started: {err}"));
            self.status |= status::DEVICE_NEEDS_RESET;
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = fresh_queues(self.device.as_ref());
        self.interrupt.clear();
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
    }

    /// Stops the device (VM teardown).
    pub fn shutdown(&mut self) {
        self.device.reset();
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|max| Queue::new(*max).expect("device queue sizes are powers of two up to 32768"))
        .collect()
}

/// A queue with the same driver-programmed registers, for reads after activation.
fn register_copy(queue: &Queue) -> Queue {
    let mut copy = Queue::new(queue.max_size()).expect("the original had a valid max size");
    copy.set_size(queue.size());
    copy.set_ready(queue.ready());
    copy.set_desc_table_address(
        Some(low(queue.desc_table())),
        Some(high(queue.desc_table())),
    );
    copy.set_avail_ring_address(
        Some(low(queue.avail_ring())),
        Some(high(queue.avail_ring())),
    );
    copy.set_used_ring_address(Some(low(queue.used_ring())), Some(high(queue.used_ring())));
    copy
}

fn low(value: u64) -> u32 {
    u32::try_from(value & 0xffff_ffff).expect("masked to 32 bits")
}

fn high(value: u64) -> u32 {
    u32::try_from(value >> 32).expect("shifted to 32 bits")
}

/// Routes MMIO exits to the device whose window contains the address.
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
    cmdline: Vec<String>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wires `device` as the next device: its window and GSI, the irqfd and one ioeventfd per
    /// queue on QueueNotify (matching the queue index the driver writes).
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), DeviceError> {
        let index = u32::try_from(self.devices.len()).expect("a handful of devices");
        let (base, gsi) = (super::window_base(index), super::gsi(index));
        let name = device.name();
        let eventfd = || {
            EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
                device: name,
                source,
            })
        };
        let irqfd = eventfd()?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|source| DeviceError::Irqfd {
                device: name,
                gsi,
                source,
            })?;
        let mut kicks = Vec::new();
        for queue in 0..u32::try_from(device.queue_max_sizes().len()).unwrap_or(0) {
            let kick = eventfd()?;
            let addr = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
            vm.register_ioevent(&kick, &addr, queue)
                .map_err(|source| DeviceError::Ioeventfd {
                    device: name,
                    queue,
                    source,
                })?;
            kicks.push(kick);
        }
        let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd), kicks);
        self.devices.push((base, Arc::new(Mutex::new(transport))));
        self.cmdline.push(super::cmdline_entry(base, gsi));
        Ok(())
    }

    /// Puts a ready-made transport at `base` (for tests without KVM).
    #[cfg(test)]
    fn insert(&mut self, base: u64, transport: MmioTransport) {
        self.devices.push((base, Arc::new(Mutex::new(transport))));
    }

    /// The kernel command line entries that announce the attached devices.
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }

    fn find(&self, addr: u64) -> Option<(u64, MutexGuard<'_, MmioTransport>)> {
        self.devices
            .iter()
            .find(|(base, _)| (*base..*base + super::MMIO_WINDOW).contains(&addr))
            .map(|(base, transport)| {
                // A panicking holder aborts the process (panic = "abort"): poison is harmless.
                let guard = transport.lock().unwrap_or_else(|p| p.into_inner());
                (addr - base, guard)
            })
    }

    /// Handles a guest MMIO read; unclaimed addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, mut transport)) => transport.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Handles a guest MMIO write; writes to unclaimed addresses are ignored.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, mut transport)) = self.find(addr) {
            transport.write(offset, data);
        }
    }

    /// Stops every device (VM teardown).
    pub fn shutdown(&self) {
        for (base, _) in &self.devices {
            if let Some((_, mut transport)) = self.find(*base) {
                transport.shutdown();
            }
        }
    }
}

/// Failed activations (the guest can reset and activate a device at will), rate-limited.
static ACTIVATION: crate::vmm::ratelog::RateLimitedLog =
    crate::vmm::ratelog::RateLimitedLog::new("virtio device");

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
