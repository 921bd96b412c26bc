//! The MMIO register state machine, driven like a Linux driver would, without KVM.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::vmm::devices::virtio::{ActivateError, SignalGuest};

/// What the fake device saw: (queue size, desc, avail, used) per activation, and resets.
#[derive(Default)]
struct Seen {
    activations: Vec<Vec<(u16, u64, u64, u64)>>,
    acked: u64,
    resets: u32,
}

struct FakeDevice(Arc<Mutex<Seen>>);

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> &'static str {
        "fake"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 128]
    }
    fn features(&self) -> u64 {
        1 << 3
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&[1, 2, 3, 4, 5, 6], offset, data);
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut seen = self.0.lock().expect("lock");
        seen.acked = activation.acked_features;
        seen.activations.push(
            activation
                .queues
                .iter()
                .map(|q| (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()))
                .collect(),
        );
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().expect("lock").resets += 1;
    }
}

struct Rig {
    transport: MmioTransport,
    seen: Arc<Mutex<Seen>>,
    irqfd: EventFd,
    kicks: Vec<EventFd>,
}

fn rig() -> Rig {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory");
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let transport = MmioTransport::new(
        Box::new(FakeDevice(seen.clone())),
        mem,
        Interrupt::new(irqfd.try_clone().expect("clone")),
        kicks
            .iter()
            .map(|k| k.try_clone().expect("clone"))
            .collect(),
    );
    Rig {
        transport,
        seen,
        irqfd,
        kicks,
    }
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Status bits up to FEATURES_OK, accepting `features`.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    write32(t, reg::STATUS, status::ACKNOWLEDGE);
    write32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(t, reg::DRIVER_FEATURES_SEL, 0);
    write32(t, reg::DRIVER_FEATURES, low(features));
    write32(t, reg::DRIVER_FEATURES_SEL, 1);
    write32(t, reg::DRIVER_FEATURES, high(features));
    write32(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    read32(t, reg::STATUS)
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    write32(t, reg::QUEUE_SEL, index);
    write32(t, reg::QUEUE_NUM, size);
    write32(t, reg::QUEUE_DESC_LOW, low(base));
    write32(t, reg::QUEUE_DESC_HIGH, high(base));
    write32(t, reg::QUEUE_DRIVER_LOW, low(base + 0x1000));
    write32(t, reg::QUEUE_DRIVER_HIGH, 0);
    write32(t, reg::QUEUE_DEVICE_LOW, low(base + 0x2000));
    write32(t, reg::QUEUE_DEVICE_HIGH, 0);
    write32(t, reg::QUEUE_READY, 1);
}

const FULL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let mut r = rig();
    let t = &mut r.transport;
    assert_eq!(read32(t, reg::MAGIC), 0x7472_6976);
    assert_eq!(read32(t, reg::VERSION), 2);
    assert_eq!(read32(t, reg::DEVICE_ID), 42);
    assert_eq!(read32(t, reg::VENDOR_ID), VENDOR_ID);
}

#[test]
fn features_are_paged_and_include_version_1() {
    let mut r = rig();
    let t = &mut r.transport;
    write32(t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(read32(t, reg::DEVICE_FEATURES), 1 << 3);
    write32(t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read32(t, reg::DEVICE_FEATURES),
        1,
        "VIRTIO_F_VERSION_1 is bit 32"
    );
    write32(t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(read32(t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn unknown_features_are_refused_at_features_ok() {
    let mut r = rig();
    let status = negotiate(&mut r.transport, (1 << 32) | (1 << 5));
    assert_eq!(status & status::FEATURES_OK, 0);
}

#[test]
fn driver_ok_activates_with_the_programmed_queues() {
    let mut r = rig();
    let t = &mut r.transport;
    assert_eq!(
        negotiate(t, (1 << 32) | (1 << 3)) & status::FEATURES_OK,
        status::FEATURES_OK
    );
    write32(t, reg::QUEUE_SEL, 1);
    assert_eq!(read32(t, reg::QUEUE_NUM_MAX), 128);
    setup_queue(t, 0, 32, 0x1_0000);
    setup_queue(t, 1, 128, 0x2_0000);
    assert!(r.seen.lock().expect("lock").activations.is_empty());
    write32(t, reg::STATUS, FULL);
    assert_eq!(read32(t, reg::STATUS), FULL);
    let seen = r.seen.lock().expect("lock");
    assert_eq!(seen.acked, (1 << 32) | (1 << 3));
    assert_eq!(
        seen.activations,
        vec![vec![
            (32, 0x1_0000, 0x1_1000, 0x1_2000),
            (128, 0x2_0000, 0x2_1000, 0x2_2000)
        ]]
    );
}

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let mut r = rig();
    let t = &mut r.transport;
    negotiate(t, 1 << 32);
    setup_queue(t, 0, 32, 0x1_0000);
    write32(t, reg::STATUS, FULL);
    write32(t, reg::QUEUE_SEL, 0);
    write32(t, reg::QUEUE_NUM, 16);
    write32(t, reg::STATUS, FULL);
    assert_eq!(
        r.seen.lock().expect("lock").activations.len(),
        1,
        "no second activation"
    );
    assert_eq!(
        read32(t, reg::QUEUE_READY),
        1,
        "QueueReady still reads back"
    );
}

#[test]
fn driver_ok_without_features_ok_does_not_activate() {
    let mut r = rig();
    let t = &mut r.transport;
    write32(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(r.seen.lock().expect("lock").activations.is_empty());
}

#[test]
fn status_zero_resets_device_and_registers() {
    let mut r = rig();
    let t = &mut r.transport;
    negotiate(t, 1 << 32);
    setup_queue(t, 0, 32, 0x1_0000);
    write32(t, reg::STATUS, FULL);
    write32(t, reg::STATUS, 0);
    assert_eq!(read32(t, reg::STATUS), 0);
    write32(t, reg::QUEUE_SEL, 0);
    assert_eq!(read32(t, reg::QUEUE_READY), 0);
    assert_eq!(r.seen.lock().expect("lock").resets, 1);
    // The driver can start over.
    negotiate(t, 1 << 32);
    setup_queue(t, 0, 64, 0x3_0000);
    write32(t, reg::STATUS, FULL);
    let seen = r.seen.lock().expect("lock");
    assert_eq!(seen.activations.len(), 2);
    assert_eq!(seen.activations[1][0], (64, 0x3_0000, 0x3_1000, 0x3_2000));
}

#[test]
fn notify_kicks_the_queue_eventfd() {
    let mut r = rig();
    write32(&mut r.transport, reg::QUEUE_NOTIFY, 1);
    assert_eq!(r.kicks[1].read().expect("kicked"), 1);
    assert!(r.kicks[0].read().is_err(), "queue 0 not kicked");
    write32(&mut r.transport, reg::QUEUE_NOTIFY, 7);
}

#[test]
fn interrupt_status_and_ack() {
    let mut r = rig();
    r.transport.interrupt.signal_used_queue().expect("signal");
    assert_eq!(r.irqfd.read().expect("irq"), 1);
    assert_eq!(read32(&mut r.transport, reg::INTERRUPT_STATUS), 1);
    write32(&mut r.transport, reg::INTERRUPT_ACK, 1);
    assert_eq!(read32(&mut r.transport, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_reads_any_width_and_pads_with_zeros() {
    let mut r = rig();
    let mut byte = [0u8; 1];
    r.transport.read(reg::CONFIG + 2, &mut byte);
    assert_eq!(byte, [3]);
    let mut word = [0xffu8; 4];
    r.transport.read(reg::CONFIG + 4, &mut word);
    assert_eq!(word, [5, 6, 0, 0]);
}

#[test]
fn odd_width_register_access_is_harmless() {
    let mut r = rig();
    let mut two = [0xffu8; 2];
    r.transport.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    r.transport.write(reg::STATUS, &[1]);
    assert_eq!(read32(&mut r.transport, reg::STATUS), 0);
}

#[test]
fn bus_routes_by_window_and_unclaimed_reads_float_high() {
    let mut bus = MmioBus::new();
    bus.insert(0xd000_1000, rig().transport);
    let mut data = [0u8; 4];
    bus.read(0xd000_1000 + reg::DEVICE_ID, &mut data);
    assert_eq!(u32::from_le_bytes(data), 42);
    bus.read(0xd000_0000 + reg::DEVICE_ID, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.read(0xd000_2000, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.write(0xd000_1000 + reg::STATUS, &1u32.to_le_bytes());
    bus.read(0xd000_1000 + reg::STATUS, &mut data);
    assert_eq!(u32::from_le_bytes(data), 1);
}

#[test]
fn cmdline_entry_format() {
    assert_eq!(
        super::super::cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}
