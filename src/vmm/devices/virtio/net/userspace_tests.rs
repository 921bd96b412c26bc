//! The userspace backend's frame copying, driven with plain guest memory and a fake tap.

use std::cell::Cell;
use std::collections::VecDeque;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;

#[derive(Default)]
struct CountSignals(Cell<u32>);

impl SignalGuest for CountSignals {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

/// A tap that yields queued frames, then EAGAIN, and records what is written to it.
#[derive(Default)]
struct FakeTap {
    incoming: VecDeque<Vec<u8>>,
    written: Vec<Vec<u8>>,
}

impl Read for FakeTap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let frame = self
            .incoming
            .pop_front()
            .ok_or_else(|| std::io::Error::from(ErrorKind::WouldBlock))?;
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }
}

impl Write for FakeTap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("test memory")
}

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// A frame as the tap gives it: a header with `num_buffers` 0, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn received_frames_fill_guest_buffers_with_num_buffers_set() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(
        &[
            raw(0x10_0000, 2048, WRITE, 0),
            raw(0x20_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .expect("chains");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let mut tap = FakeTap::default();
    tap.incoming.push_back(frame(b"first frame"));
    tap.incoming.push_back(frame(b"second"));
    let signal = CountSignals::default();
    let mut rx = Rx::default();

    let stop = rx
        .process(&mut queue, &mem, &mut tap, &signal)
        .expect("process");

    assert_eq!(stop, RxStop::TapEmpty);
    assert_eq!(mock.used().idx().load(), 2);
    let first = mock.used().ring().ref_at(0).expect("used").load();
    assert_eq!(
        first.len(),
        u32::try_from(VNET_HDR_LEN + 11).expect("small")
    );
    let mut bytes = vec![0u8; VNET_HDR_LEN + 11];
    mem.read_slice(&mut bytes, GuestAddress(0x10_0000))
        .expect("read");
    assert_eq!(&bytes[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2], &[1, 0]);
    assert_eq!(&bytes[VNET_HDR_LEN..], b"first frame");
    assert_eq!(signal.0.get(), 1);
}

#[test]
fn a_frame_waits_when_the_guest_has_no_buffer_and_goes_out_once_it_has() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = mock.create_queue().expect("queue");
    let mut tap = FakeTap::default();
    tap.incoming.push_back(frame(b"patient"));
    let signal = CountSignals::default();
    let mut rx = Rx::default();

    let stop = rx
        .process(&mut queue, &mem, &mut tap, &signal)
        .expect("process");
    assert_eq!(stop, RxStop::NoBuffers);
    assert_eq!(signal.0.get(), 0);

    // The driver posts a buffer (a fresh queue view over the same rings sees it).
    mock.add_desc_chains(&[raw(0x10_0000, 2048, WRITE, 0)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let stop = rx
        .process(&mut queue, &mem, &mut tap, &signal)
        .expect("process");
    assert_eq!(stop, RxStop::TapEmpty);
    let mut bytes = vec![0u8; VNET_HDR_LEN + 7];
    mem.read_slice(&mut bytes, GuestAddress(0x10_0000))
        .expect("read");
    assert_eq!(&bytes[VNET_HDR_LEN..], b"patient");
    assert_eq!(signal.0.get(), 1);
}

#[test]
fn transmitted_chains_reach_the_tap_whole_and_are_returned() {
    let mem = memory();
    let header = [0u8; VNET_HDR_LEN];
    mem.write_slice(&header, GuestAddress(0x10_0000))
        .expect("write");
    mem.write_slice(b"hello tap", GuestAddress(0x20_0000))
        .expect("write");
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&[raw(0x10_0000, 12, NEXT, 1), raw(0x20_0000, 9, 0, 0)], 0)
        .expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let mut tap = FakeTap::default();
    let signal = CountSignals::default();

    let sent = transmit(&mut queue, &mem, &mut tap, &signal).expect("transmit");

    assert_eq!(sent, 1);
    assert_eq!(tap.written, [frame(b"hello tap")]);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(signal.0.get(), 1);
}
