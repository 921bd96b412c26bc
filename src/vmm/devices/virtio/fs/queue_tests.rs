//! FUSE requests through a mock queue in plain memory, answered by a real passthrough server.

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::passthrough::Config;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

#[derive(Default)]
struct CountSignals(Cell<u32>);

impl SignalGuest for CountSignals {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_INIT: u32 = 26;
const REPLY_SIZE: u32 = 4096;

/// A FUSE request: in header (40 bytes) then the arguments.
fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let len = u32::try_from(40 + args.len()).expect("small request");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&opcode.to_le_bytes());
    bytes.extend_from_slice(&unique.to_le_bytes());
    bytes.extend_from_slice(&nodeid.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    bytes.extend_from_slice(args);
    bytes
}

fn init_args() -> Vec<u8> {
    init_args_with(0)
}

/// FUSE_INIT arguments of a 7.31 driver offering the capability `flags`.
fn init_args_with(flags: u32) -> Vec<u8> {
    [7u32, 31, 0x20000, flags]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

/// Queues `requests`, each as a readable descriptor followed by a writable reply buffer.
fn queue_requests(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    requests: &[Vec<u8>],
) {
    queue_requests_from(mem, mock, 0, requests);
}

/// Like [`queue_requests`], for requests numbered from `first` on (the number of requests
/// queued before): request `i` uses descriptors `2i`, `2i + 1` and its own buffers.
fn queue_requests_from(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    first: u16,
    requests: &[Vec<u8>],
) {
    let mut descs = Vec::new();
    for (i, req) in (first..).zip(requests) {
        let req_addr = 0x10_0000 + u64::from(i) * 0x1_0000;
        let reply_addr = req_addr + 0x8000;
        mem.write_slice(req, GuestAddress(req_addr))
            .expect("request");
        let len = u32::try_from(req.len()).expect("small");
        descs.push(RawDescriptor::from(Descriptor::new(
            req_addr,
            len,
            NEXT,
            2 * i + 1,
        )));
        descs.push(RawDescriptor::from(Descriptor::new(
            reply_addr, REPLY_SIZE, WRITE, 0,
        )));
    }
    mock.add_desc_chains(&descs, 2 * first).expect("chains");
}

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// (reply length, error, unique) of the used element `index` and its reply header.
fn reply(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    index: u16,
) -> (u32, i32, u64) {
    let used = mock
        .used()
        .ring()
        .ref_at(usize::from(index))
        .expect("used")
        .load();
    let addr = GuestAddress(0x10_0000 + u64::from(index) * 0x1_0000 + 0x8000);
    let mut header = [0u8; 16];
    mem.read_slice(&mut header, addr).expect("reply header");
    let error = i32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let unique = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (used.len(), error, unique)
}

/// The little-endian u64 at `offset` in the reply buffer of request `index`.
fn reply_u64(mem: &GuestMemoryMmap, index: u16, offset: u64) -> u64 {
    let addr = GuestAddress(0x10_0000 + u64::from(index) * 0x1_0000 + 0x8000 + offset);
    let mut word = [0u8; 8];
    mem.read_slice(&mut word, addr).expect("reply word");
    u64::from_le_bytes(word)
}

/// Offset of fuse_entry_out.nodeid in a LOOKUP reply (after the 16-byte out header).
const ENTRY_NODEID: u64 = 16;
/// Offset of fuse_attr_out.attr.ino in a GETATTR reply (header, attr_valid, nsec + dummy).
const ATTR_OUT_INO: u64 = 16 + 16;

/// A FUSE server for the share at `root` behind the guard (`read_only` as the share's flag).
fn guarded_server(root: &std::path::Path, read_only: bool) -> Server<Guard<PassthroughFs<()>>> {
    let config = Config {
        root_dir: root.to_str().expect("utf-8").to_owned(),
        ..Config::default()
    };
    Server::new(Guard::new(
        PassthroughFs::<()>::new(config).expect("passthrough"),
        read_only,
    ))
}

#[test]
fn init_and_lookups_are_answered_in_guest_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("file"), b"x").expect("file");
    let server = guarded_server(dir.path(), true);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    queue_requests(
        &mem,
        &mock,
        &[
            request(FUSE_INIT, 1, 0, &init_args()),
            request(FUSE_LOOKUP, 2, 1, b"file\0"),
            request(FUSE_LOOKUP, 3, 1, b"missing\0"),
        ],
    );
    let mut queue: Queue = mock.create_queue().expect("queue");
    let signal = CountSignals::default();

    assert_eq!(
        process_queue(&mut queue, &mem, &server, &Syncs::default(), &signal).expect("served"),
        3
    );

    let (len, error, unique) = reply(&mem, &mock, 0);
    assert_eq!((error, unique), (0, 1), "init");
    assert!(len > 16, "init reply has an InitOut");
    let (len, error, unique) = reply(&mem, &mock, 1);
    assert_eq!((error, unique), (0, 2), "lookup file");
    assert_eq!(len, 16 + 128, "out header + entry out");
    let (len, error, _) = reply(&mem, &mock, 2);
    assert_eq!((len, error), (16, -libc::ENOENT), "lookup missing");
    assert_eq!(signal.0.get(), 1);
}

#[test]
fn a_request_outside_guest_memory_is_returned_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = guarded_server(dir.path(), false);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    let descs = [
        RawDescriptor::from(Descriptor::new(0x3f_ff00, 0x1000, NEXT, 1)),
        RawDescriptor::from(Descriptor::new(0x10_0000, REPLY_SIZE, WRITE, 0)),
    ];
    mock.add_desc_chains(&descs, 0).expect("chain");
    let mut queue: Queue = mock.create_queue().expect("queue");
    let handled = process_queue(
        &mut queue,
        &mem,
        &server,
        &Syncs::default(),
        &CountSignals::default(),
    );
    assert_eq!(handled.expect("queue still served"), 1);
    assert_eq!(mock.used().ring().ref_at(0).expect("used").load().len(), 0);
}

/// Attack: the guest holds the node of directory `N` inside the share; the host then moves
/// `N`'s directory out of the share (here into a sibling `outside`). A LOOKUP of `..` on that
/// node would open `outside` on the host (the passthrough resolves names relative to the
/// directory's descriptor) and hand the guest a node outside the share. The reply must be an
/// error, or a node that GETATTR shows to be the share's root, never `outside`.
#[test]
fn dotdot_of_a_directory_moved_out_of_the_share_stays_inside() {
    let dir = tempfile::tempdir().expect("temp dir");
    let share = dir.path().join("share");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(share.join("n")).expect("share/n");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("secret"), b"host secret").expect("sentinel");
    let server = guarded_server(&share, false);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = mock.create_queue().expect("queue");
    let signal = CountSignals::default();
    let mut serve = |first: u16, requests: &[Vec<u8>]| {
        queue_requests_from(&mem, &mock, first, requests);
        let handled =
            process_queue(&mut queue, &mem, &server, &Syncs::default(), &signal).expect("served");
        assert_eq!(handled, requests.len());
    };

    serve(
        0,
        &[
            request(FUSE_INIT, 1, 0, &init_args()),
            request(FUSE_LOOKUP, 2, 1, b"n\0"),
        ],
    );
    let (_, error, _) = reply(&mem, &mock, 1);
    assert_eq!(error, 0, "lookup n");
    let n = reply_u64(&mem, 1, ENTRY_NODEID);

    std::fs::rename(share.join("n"), outside.join("n")).expect("host moves n out");
    serve(2, &[request(FUSE_LOOKUP, 3, n, b"..\0")]);
    let (len, error, unique) = reply(&mem, &mock, 2);
    assert_eq!(unique, 3);
    if error != 0 {
        assert_eq!((len, error), (16, -libc::EINVAL), "refused");
        return;
    }
    let parent = reply_u64(&mem, 2, ENTRY_NODEID);
    serve(3, &[request(FUSE_GETATTR, 4, parent, &[0u8; 16])]);
    let (_, error, _) = reply(&mem, &mock, 3);
    assert_eq!(error, 0, "getattr of the node `..` gave");
    let ino = reply_u64(&mem, 3, ATTR_OUT_INO);
    let outside_ino = std::fs::metadata(&outside).expect("outside").ino();
    let share_ino = std::fs::metadata(&share).expect("share").ino();
    assert_ne!(
        ino, outside_ino,
        "`..` yielded the directory outside the share"
    );
    assert_eq!(ino, share_ino, "`..` is inside the share");
}

/// FUSE capability bits (include/uapi/linux/fuse.h).
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
/// Offsets in an INIT reply (after the 16-byte out header) of fuse_init_out's flags and
/// max_write.
const INIT_OUT_FLAGS: u64 = 16 + 12;
const INIT_OUT_MAX_WRITE: u64 = 16 + 20;

/// A driver that offers big writes gets 1 MiB writes (256 requests fewer per MiB than 4 KiB
/// ones); one that does not keeps the small default.
#[test]
fn init_offers_one_mib_writes_to_a_driver_that_can_take_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (offered, max_write) in [(FUSE_BIG_WRITES | FUSE_MAX_PAGES, 1u32 << 20), (0, 4096)] {
        let server = guarded_server(dir.path(), false);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
        let mock = MockSplitQueue::new(&mem, 16);
        queue_requests(
            &mem,
            &mock,
            &[request(FUSE_INIT, 1, 0, &init_args_with(offered))],
        );
        let mut queue: Queue = mock.create_queue().expect("queue");
        process_queue(
            &mut queue,
            &mem,
            &server,
            &Syncs::default(),
            &CountSignals::default(),
        )
        .expect("served");
        assert_eq!(reply(&mem, &mock, 0).1, 0, "init");
        let word = reply_u64(&mem, 0, INIT_OUT_FLAGS);
        let flags = u32::try_from(word & 0xffff_ffff).expect("low word");
        assert_eq!(flags & offered, offered, "accepted what was offered");
        let word = reply_u64(&mem, 0, INIT_OUT_MAX_WRITE);
        assert_eq!(
            u32::try_from(word & 0xffff_ffff).expect("low word"),
            max_write,
            "offered {offered:#x}"
        );
    }
}

/// Counts the syncs of the share a test's requests asked for; fails them with `fail`.
#[derive(Default)]
struct Syncs {
    count: std::cell::Cell<u32>,
    fail: Option<i32>,
}

impl SyncShare for Syncs {
    fn sync_share(&self) -> std::io::Result<()> {
        self.count.set(self.count.get() + 1);
        match self.fail {
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

const FUSE_SYNCFS: u32 = 50;

/// A guest `sync` (FUSE_SYNCFS) syncs the share's host file system once and gets its result;
/// before, it got ENOSYS and the guest kernel stopped asking, so its `sync` left the data in the
/// host's page cache. The real share root syncs too.
#[test]
fn syncfs_syncs_the_share_and_answers_with_the_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = guarded_server(dir.path(), false);
    for (fail, error) in [(None, 0), (Some(libc::EIO), -libc::EIO)] {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
        let mock = MockSplitQueue::new(&mem, 16);
        queue_requests(&mem, &mock, &[request(FUSE_SYNCFS, 9, 1, &[0u8; 8])]);
        let mut queue: Queue = mock.create_queue().expect("queue");
        let syncs = Syncs {
            fail,
            ..Syncs::default()
        };
        process_queue(&mut queue, &mem, &server, &syncs, &CountSignals::default()).expect("served");
        assert_eq!(syncs.count.get(), 1, "synced once");
        assert_eq!(reply(&mem, &mock, 0), (16, error, 9), "reply header only");
    }
    let root = ShareRoot(std::fs::File::open(dir.path()).expect("root").into());
    root.sync_share()
        .expect("syncfs of the share's file system");
}

/// `used_event` (driver → device, after the avail ring) and `avail_event` (device → driver,
/// after the used ring) of a mock queue of `size` entries.
fn event_addrs(mock: &MockSplitQueue<GuestMemoryMmap>, size: u16) -> (GuestAddress, GuestAddress) {
    let used_event = mock.avail_addr().unchecked_add(4 + 2 * u64::from(size));
    let avail_event = mock.used_addr().unchecked_add(4 + 8 * u64::from(size));
    (used_event, avail_event)
}

/// With EVENT_IDX the device leaves `avail_event` at the next request it has not seen (the
/// driver kicks only past it) and interrupts only when the used index passes the driver's
/// `used_event`; without it, kicks are re-enabled (used flags 0) when the queue is drained.
#[test]
fn notifications_follow_event_idx_and_are_reenabled_when_drained() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = guarded_server(dir.path(), true);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    let (used_event, avail_event) = event_addrs(&mock, 16);
    queue_requests(
        &mem,
        &mock,
        &[
            request(FUSE_INIT, 1, 0, &init_args()),
            request(FUSE_LOOKUP, 2, 1, b"missing\0"),
        ],
    );
    let mut queue: Queue = mock.create_queue().expect("queue");
    queue.set_event_idx(true);
    // The driver wants an interrupt only once the used index passes 5.
    mem.write_obj(5u16, used_event).expect("used_event");
    let signal = CountSignals::default();
    let served = process_queue(&mut queue, &mem, &server, &Syncs::default(), &signal);
    assert_eq!(served.expect("served"), 2);
    assert_eq!(mem.read_obj::<u16>(avail_event).expect("avail_event"), 2);
    assert_eq!(
        signal.0.get(),
        0,
        "used index 2 has not passed used_event 5"
    );
    // Now it wants the next one.
    mem.write_obj(2u16, used_event).expect("used_event");
    queue_requests_from(&mem, &mock, 2, &[request(FUSE_LOOKUP, 3, 1, b"x\0")]);
    let served = process_queue(&mut queue, &mem, &server, &Syncs::default(), &signal);
    assert_eq!(served.expect("served"), 1);
    assert_eq!(mem.read_obj::<u16>(avail_event).expect("avail_event"), 3);
    assert_eq!(signal.0.get(), 1);

    let mock = MockSplitQueue::new(&mem, 16);
    queue_requests(&mem, &mock, &[request(FUSE_INIT, 1, 0, &init_args())]);
    let mut queue: Queue = mock.create_queue().expect("queue");
    let served = process_queue(&mut queue, &mem, &server, &Syncs::default(), &signal);
    assert_eq!(served.expect("served"), 1);
    let flags: u16 = mem.read_obj(mock.used_addr()).expect("used flags");
    assert_eq!(flags, 0, "kicks enabled again");
    assert_eq!(
        signal.0.get(),
        2,
        "without EVENT_IDX every batch interrupts"
    );
}

/// An avail index far ahead of the ring (a broken driver) makes the queue yield nothing while
/// it still says there is more: the call returns instead of spinning.
#[test]
fn a_broken_avail_index_does_not_spin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = guarded_server(dir.path(), true);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    mock.avail().idx().store(1000);
    for event_idx in [false, true] {
        let mut queue: Queue = mock.create_queue().expect("queue");
        queue.set_event_idx(event_idx);
        let served = process_queue(
            &mut queue,
            &mem,
            &server,
            &Syncs::default(),
            &CountSignals::default(),
        );
        assert_eq!(served.expect("returns"), 0);
    }
}

const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITEBACK_CACHE: u32 = 1 << 16;

/// Serves `req` as request number `index` of the queue and returns its reply header.
fn serve_one(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    queue: &mut Queue,
    server: &FsServer,
    index: u16,
    req: Vec<u8>,
) -> (u32, i32, u64) {
    queue_requests_from(mem, mock, index, &[req]);
    let served = process_queue(
        queue,
        mem,
        server,
        &Syncs::default(),
        &CountSignals::default(),
    );
    assert_eq!(served.expect("served"), 1);
    reply(mem, mock, index)
}

/// The device's own configuration takes the writeback cache a driver offers; a file the guest
/// opens write-only can then be read through its handle (the guest kernel fills partial pages
/// that way), because the host file is open read-write.
#[test]
fn the_writeback_cache_is_taken_and_write_only_handles_can_fill_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("file"), b"hello").expect("file");
    let root = dir.path().to_str().expect("utf-8");
    let passthrough = PassthroughFs::new(super::super::passthrough_config(root)).expect("fs");
    let server = Server::new(Guard::new(passthrough, false));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = mock.create_queue().expect("queue");
    let offered = FUSE_WRITEBACK_CACHE | FUSE_BIG_WRITES | FUSE_MAX_PAGES;
    let init = request(FUSE_INIT, 1, 0, &init_args_with(offered));
    assert_eq!(serve_one(&mem, &mock, &mut queue, &server, 0, init).1, 0);
    let flags = reply_u64(&mem, 0, INIT_OUT_FLAGS) & 0xffff_ffff;
    assert_ne!(
        flags & u64::from(FUSE_WRITEBACK_CACHE),
        0,
        "writeback taken"
    );

    let lookup = request(FUSE_LOOKUP, 2, 1, b"file\0");
    assert_eq!(serve_one(&mem, &mock, &mut queue, &server, 1, lookup).1, 0);
    let node = reply_u64(&mem, 1, ENTRY_NODEID);
    let write_only = u32::try_from(libc::O_WRONLY).expect("flag");
    let open_args: Vec<u8> = [write_only, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let open = request(FUSE_OPEN, 3, node, &open_args);
    assert_eq!(serve_one(&mem, &mock, &mut queue, &server, 2, open).1, 0);
    let handle = reply_u64(&mem, 2, 16);
    let mut read_args = Vec::new();
    read_args.extend_from_slice(&handle.to_le_bytes());
    read_args.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_args.extend_from_slice(&5u32.to_le_bytes()); // size
    read_args.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
    let read = request(FUSE_READ, 4, node, &read_args);
    let before = super::super::share_bytes();
    assert_eq!(
        serve_one(&mem, &mock, &mut queue, &server, 3, read),
        (21, 0, 4)
    );
    // (the counters are the process's: other tests may add to them meanwhile)
    let after = super::super::share_bytes();
    assert!(after.read >= before.read + 5, "{before:?} {after:?}");
    let mut data = [0u8; 5];
    let addr = GuestAddress(0x10_0000 + 3 * 0x1_0000 + 0x8000 + 16);
    mem.read_slice(&mut data, addr).expect("read data");
    assert_eq!(&data, b"hello");
}
