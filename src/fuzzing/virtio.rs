//! Descriptor-chain handling of the userspace virtio devices (rng, net, fs) on a split queue
//! that the input lays out in guest memory as a hostile driver would: any queue size,
//! descriptors with any address, length, flags and next index (indirect tables included), any
//! available ring. Oracle: the device writes guest memory only inside buffers the driver
//! marked device-writable and the used ring, and never panics.

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::input::Input;
use super::tree::Scratch;
use crate::vmm::devices::virtio::fs::{passthrough_config, process_queue, Guard, SyncShare};
use crate::vmm::devices::virtio::net::{transmit, Rx};
use crate::vmm::devices::virtio::rng::fill_requests;
use crate::vmm::devices::virtio::SignalGuest;

/// Guest memory size.
pub const MEM_SIZE: u64 = 0x2_0000;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x3000;
const USED_RING: u64 = 0x4000;
/// Where buffers and request bytes go.
pub const DATA: u64 = 0x8000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// Counts interrupts.
#[derive(Default)]
pub struct Signals(Cell<u32>);

impl SignalGuest for Signals {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

/// A queue in fresh guest memory, and a copy of that memory to compare with afterwards.
pub struct Rig {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queue, as the driver configured it.
    pub queue: Queue,
    before: Vec<u8>,
    /// What the device may write, from the tables as the driver left them; `None` when a
    /// writable buffer overlaps a descriptor table (then the device may rewrite the chain it
    /// walks, and anything in guest memory goes).
    allowed: Option<Vec<(u64, u64)>>,
}

impl Rig {
    /// Lays out a queue from the input: size, descriptor table, available ring, then the rest
    /// of the input as the contents of the data area. `None` if the queue is not valid (the
    /// transport does not activate such a queue).
    pub fn decode(input: &mut Input<'_>) -> Option<Rig> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize_of(MEM_SIZE))]).ok()?;
        let size = 1u16 << (input.byte() % 9);
        let count = u16::from(input.byte()).min(size);
        for index in 0..count {
            let shape = input.byte();
            let addr = match shape % 8 {
                // Mostly in the data area; sometimes over its end, or far outside memory.
                0..=5 => DATA + u64::from(input.u16()) % (MEM_SIZE - DATA),
                6 => MEM_SIZE - u64::from(input.byte()),
                _ => input.u64(),
            };
            let len = match (shape >> 3) % 4 {
                0 | 1 => u32::from(input.byte()),
                2 => u32::from(input.u16()),
                _ => input.u32(),
            };
            let flags = u16::from(input.byte())
                & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT);
            let next = u16::from(input.byte());
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&desc, GuestAddress(DESC_TABLE + 16 * u64::from(index)))
                .ok()?;
        }
        let avail = u16::from(input.byte());
        let idx = if avail & 0x80 != 0 {
            input.u16()
        } else {
            avail & 0x7f
        };
        for slot in 0..size.min(128) {
            let head = u16::from(input.byte());
            mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * u64::from(slot)))
                .ok()?;
        }
        mem.write_obj(idx, GuestAddress(AVAIL_RING + 2)).ok()?;
        let event_idx = input.byte() & 1 == 1;
        let data = input.take(usize_of(MEM_SIZE - DATA));
        mem.write_slice(data, GuestAddress(DATA)).ok()?;

        let mut queue = Queue::new(256).ok()?;
        queue.set_size(size);
        queue.set_desc_table_address(Some(low(DESC_TABLE)), Some(0));
        queue.set_avail_ring_address(Some(low(AVAIL_RING)), Some(0));
        queue.set_used_ring_address(Some(low(USED_RING)), Some(0));
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return None;
        }
        let mut before = vec![0u8; usize_of(MEM_SIZE)];
        mem.read_slice(&mut before, GuestAddress(0)).ok()?;
        let allowed = writable(&mem, size);
        Some(Rig {
            mem,
            queue,
            before,
            allowed,
        })
    }

    /// Panics if `device` wrote guest memory outside the used ring and the device-writable
    /// buffers of the descriptor table and of the indirect tables it points to.
    pub fn check(&self, device: &str) {
        let Some(allowed) = &self.allowed else {
            return;
        };
        let mut after = vec![0u8; self.before.len()];
        self.mem
            .read_slice(&mut after, GuestAddress(0))
            .expect("guest memory");
        for (addr, (old, new)) in (0u64..).zip(self.before.iter().zip(&after)) {
            if old != new
                && !allowed
                    .iter()
                    .any(|(start, end)| (*start..*end).contains(&addr))
            {
                panic!("{device} wrote guest memory at {addr:#x}, outside the writable buffers");
            }
        }
    }
}

/// The byte ranges the device may write: the used ring and every device-writable buffer of the
/// descriptor table and of the indirect tables it names. `None` if one of those buffers
/// overlaps a table.
fn writable(mem: &GuestMemoryMmap, size: u16) -> Option<Vec<(u64, u64)>> {
    let used_len = 4 + 8 * u64::from(size) + 2;
    let mut ranges = vec![(USED_RING, USED_RING + used_len)];
    let mut tables = vec![(DESC_TABLE, DESC_TABLE + 16 * u64::from(size))];
    collect_writable(
        mem,
        DESC_TABLE,
        u64::from(size),
        true,
        &mut ranges,
        &mut tables,
    );
    let overlaps = ranges
        .iter()
        .any(|(start, end)| tables.iter().any(|(ts, te)| start < te && ts < end));
    (!overlaps).then_some(ranges)
}

fn collect_writable(
    mem: &GuestMemoryMmap,
    table: u64,
    count: u64,
    top: bool,
    ranges: &mut Vec<(u64, u64)>,
    tables: &mut Vec<(u64, u64)>,
) {
    for index in 0..count {
        let Some(desc) = table.checked_add(16 * index) else {
            break;
        };
        let at = |offset: u64| GuestAddress(desc.saturating_add(offset));
        let (Ok(addr), Ok(len), Ok(flags)) = (
            mem.read_obj::<u64>(at(0)),
            mem.read_obj::<u32>(at(8)),
            mem.read_obj::<u16>(at(12)),
        ) else {
            continue;
        };
        let end = addr.saturating_add(u64::from(len));
        if flags & VRING_DESC_F_WRITE != 0 {
            ranges.push((addr, end));
        }
        if top && flags & VRING_DESC_F_INDIRECT != 0 {
            tables.push((addr, end));
            collect_writable(
                mem,
                addr,
                u64::from(len / 16).min(256),
                false,
                ranges,
                tables,
            );
        }
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn low(addr: u64) -> u32 {
    u32::try_from(addr).unwrap_or(u32::MAX)
}

/// virtio-rng: entropy requests.
pub fn virtio_rng(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mut rig) = Rig::decode(&mut input) else {
        return;
    };
    let _ = fill_requests(&mut rig.queue, &rig.mem, &Signals::default());
    rig.check("virtio-rng");
}

/// A tap that yields the frames it was given, then EAGAIN, and swallows what is written.
struct FakeTap {
    frames: Vec<Vec<u8>>,
}

impl Read for FakeTap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let frame = self
            .frames
            .pop()
            .ok_or_else(|| std::io::Error::from(ErrorKind::WouldBlock))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
}

impl Write for FakeTap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// virtio-net (userspace backend): the first byte picks the receive queue (frames from the tap
/// into guest buffers) or the transmit queue (guest frames to the tap).
pub fn virtio_net(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let mut frames = Vec::new();
    if mode & 1 == 1 {
        for _ in 0..input.byte() % 8 {
            let len = match input.byte() % 4 {
                0 => usize::from(input.byte()),
                1 => usize::from(input.u16()),
                2 => 65_536 + 12,
                _ => 11,
            };
            frames.push(vec![0x5a; len]);
        }
    }
    let Some(mut rig) = Rig::decode(&mut input) else {
        return;
    };
    let mut tap = FakeTap { frames };
    let signals = Signals::default();
    if mode & 1 == 1 {
        let _ = Rx::default().process(&mut rig.queue, &rig.mem, &mut tap, &signals);
        rig.check("virtio-net rx");
    } else {
        let _ = transmit(&mut rig.queue, &rig.mem, &mut tap, &signals);
        rig.check("virtio-net tx");
    }
}

/// virtio-fs: raw requests in arbitrary descriptor chains, answered by the guarded passthrough
/// server of a share (for FUSE requests that make sense, see [`super::virtio_fs`]).
pub fn virtio_fs_queue(data: &[u8]) {
    let scratch = fs_scratch();
    let _input = scratch.reset();
    let mut input = Input::new(data);
    let read_only = input.byte() & 1 == 1;
    let Some(mut rig) = Rig::decode(&mut input) else {
        return;
    };
    let Some(root) = scratch.dir.to_str() else {
        return;
    };
    let Ok(passthrough) = PassthroughFs::<()>::new(passthrough_config(root)) else {
        return;
    };
    if passthrough.import().is_err() {
        return;
    }
    let server = Server::new(Guard::new(passthrough, read_only));
    let _ = process_queue(
        &mut rig.queue,
        &rig.mem,
        &server,
        &NoSync,
        &Signals::default(),
    );
    rig.check("virtio-fs");
    drop(server);
    scratch.check("serving a virtio-fs queue");
}

fn fs_scratch() -> &'static Scratch {
    static SCRATCH: std::sync::OnceLock<Scratch> = std::sync::OnceLock::new();
    SCRATCH.get_or_init(|| Scratch::new("share"))
}

/// A share whose FUSE_SYNCFS succeeds without syncing anything: the fuzzers exercise the
/// request and its reply, not the host's disk.
pub struct NoSync;

impl SyncShare for NoSync {
    fn sync_share(&self) -> std::io::Result<()> {
        Ok(())
    }
}
