//! virtio-rng queue handling driven with plain guest memory (no KVM).

use std::cell::Cell;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

#[derive(Default)]
struct CountSignals(Cell<u32>);

impl SignalGuest for CountSignals {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("test memory")
}

const WRITE: u16 = VRING_DESC_F_WRITE as u16;

fn raw(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

#[test]
fn fills_a_writable_buffer_with_random_bytes_and_signals() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&[raw(0x10_0000, 4096, WRITE)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let signal = CountSignals::default();

    assert_eq!(fill_requests(&mut queue, &mem, &signal).expect("fill"), 1);

    let used = mock.used().ring().ref_at(0).expect("used elem").load();
    assert_eq!(used.len(), 4096);
    assert_eq!(used.id(), 0);
    assert_eq!(mock.used().idx().load(), 1);
    let mut bytes = vec![0u8; 4096];
    mem.read_slice(&mut bytes, GuestAddress(0x10_0000))
        .expect("read");
    assert!(
        bytes.iter().filter(|b| **b == 0).count() < 100,
        "not random"
    );
    assert_eq!(signal.0.get(), 1);
}

#[test]
fn read_only_descriptors_get_nothing() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&[raw(0x10_0000, 64, 0)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    fill_requests(&mut queue, &mem, &CountSignals::default()).expect("fill");
    assert_eq!(mock.used().ring().ref_at(0).expect("elem").load().len(), 0);
    let mut bytes = [1u8; 64];
    mem.read_slice(&mut bytes, GuestAddress(0x10_0000))
        .expect("read");
    assert_eq!(bytes, [0u8; 64], "guest memory untouched");
}

#[test]
fn large_requests_are_capped() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&[raw(0x10_0000, 0x20_0000, WRITE)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    fill_requests(&mut queue, &mem, &CountSignals::default()).expect("fill");
    let used = mock.used().ring().ref_at(0).expect("elem").load();
    assert_eq!(used.len(), MAX_REQUEST_BYTES);
}

#[test]
fn buffer_outside_guest_memory_is_an_error() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&[raw(0x3f_ff00, 0x1000, WRITE)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let err = fill_requests(&mut queue, &mem, &CountSignals::default());
    assert!(matches!(err, Err(RngError::Memory(_))), "{err:?}");
}

#[test]
fn nothing_pending_means_no_interrupt() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = mock.create_queue().expect("queue");
    let signal = CountSignals::default();
    assert_eq!(fill_requests(&mut queue, &mem, &signal).expect("fill"), 0);
    assert_eq!(signal.0.get(), 0);
    assert!(queue.ready());
}
