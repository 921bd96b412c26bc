//! The virtio-fs request path through the guard: a sequence of FUSE requests decoded from the
//! input (opcodes the guest kernel sends, names that climb, inodes and handles from earlier
//! replies), each queued as a well-formed descriptor chain and served by the guarded
//! passthrough server of a share. Oracle: nothing outside the share changes (a sentinel tree
//! beside it), no device node appears in the share, no file but the host's own setuid file
//! carries S_ISUID or S_ISGID (setgid directories are allowed), that file keeps one name and
//! its content while it keeps its bits, and no reply is written outside its buffer.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::input::Input;
use super::tree::Scratch;
use super::virtio::{NoSync, Signals};
use crate::vmm::devices::virtio::fs::{passthrough_config, process_queue, Guard};

const MEM_SIZE: u64 = 0x4_0000;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const REQUEST: u64 = 0x8000;
const REPLY: u64 = 0x2_0000;
const REPLY_SIZE: u32 = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
/// Requests per input.
const MAX_REQUESTS: usize = 48;
const FUSE_INIT: u32 = 26;

/// Names the requests use.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"..",
    b".",
    b"sentinel",
    b"d",
    b"f",
    b"",
    b"x/y",
    b"c",
    b"s",
];

/// (opcode, size of its fixed argument struct, offsets of inode fields, offsets of handle
/// fields, number of names after the struct).
type Op = (u32, usize, &'static [usize], &'static [usize], usize);

/// The opcodes a guest kernel sends (FUSE 7.31), with their argument layouts.
const OPS: &[Op] = &[
    (1, 0, &[], &[], 1),          // LOOKUP
    (2, 8, &[], &[], 0),          // FORGET
    (3, 16, &[], &[8], 0),        // GETATTR
    (4, 88, &[], &[8], 0),        // SETATTR
    (5, 0, &[], &[], 0),          // READLINK
    (6, 0, &[], &[], 2),          // SYMLINK
    (8, 16, &[], &[], 1),         // MKNOD
    (9, 8, &[], &[], 1),          // MKDIR
    (10, 0, &[], &[], 1),         // UNLINK
    (11, 0, &[], &[], 1),         // RMDIR
    (12, 8, &[0], &[], 2),        // RENAME
    (13, 8, &[0], &[], 1),        // LINK
    (14, 8, &[], &[], 0),         // OPEN
    (15, 40, &[], &[0], 0),       // READ
    (16, 40, &[], &[0], 0),       // WRITE (data follows)
    (17, 0, &[], &[], 0),         // STATFS
    (18, 24, &[], &[0], 0),       // RELEASE
    (20, 16, &[], &[0], 0),       // FSYNC
    (21, 8, &[], &[], 2),         // SETXATTR (name, value)
    (22, 8, &[], &[], 1),         // GETXATTR
    (23, 8, &[], &[], 0),         // LISTXATTR
    (24, 0, &[], &[], 1),         // REMOVEXATTR
    (25, 24, &[], &[0], 0),       // FLUSH
    (27, 8, &[], &[], 0),         // OPENDIR
    (28, 40, &[], &[0], 0),       // READDIR
    (29, 24, &[], &[0], 0),       // RELEASEDIR
    (34, 8, &[], &[], 0),         // ACCESS
    (35, 16, &[], &[], 1),        // CREATE
    (42, 16, &[8], &[], 0),       // BATCH_FORGET (count 1, then one forget_one)
    (43, 32, &[], &[0], 0),       // FALLOCATE
    (44, 40, &[], &[0], 0),       // READDIRPLUS
    (45, 16, &[0], &[], 2),       // RENAME2
    (46, 24, &[], &[0], 0),       // LSEEK
    (47, 56, &[16], &[0, 24], 0), // COPY_FILE_RANGE
    (51, 16, &[], &[], 1),        // TMPFILE
];

/// Serves the requests decoded from the input; the first byte makes the share read-only.
pub fn virtio_fs(data: &[u8]) {
    let scratch = scratch();
    let _input = scratch.reset();
    let host_setuid = populate(&scratch.dir);
    let mut input = Input::new(data);
    let read_only = input.byte() & 1 == 1;
    let init_flags = input.u32();
    {
        let Some(mut session) = Session::new(&scratch.dir, read_only) else {
            return;
        };
        let mut init = Vec::new();
        for word in [7u32, 31, 0x2_0000, init_flags] {
            init.extend_from_slice(&word.to_le_bytes());
        }
        session.send(FUSE_INIT, 0, &init);
        let mut count = 0;
        while !input.is_empty() && count < MAX_REQUESTS {
            count += 1;
            let (opcode, args) = session.decode(&mut input);
            let nodeid = session.pick_inode(&mut input);
            session.send(opcode, nodeid, &args);
        }
    }
    scratch.check("serving virtio-fs requests");
    check_no_devices(&scratch.dir);
    check_privileged_files(&scratch.dir, host_setuid);
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch::new("share"))
}

/// Content of the host's setuid file in the share.
const SETUID_CONTENT: &[u8] = b"#!/bin/sh\nhost setuid program\n";

/// A share with a file, a directory, a symlink that climbs out and a setuid-root file the host
/// put there (as in a shared volume); returns that file's inode number.
fn populate(share: &Path) -> Option<u64> {
    let _ = fs::write(share.join("f"), b"share file\n");
    let _ = fs::create_dir(share.join("d"));
    let _ = std::os::unix::fs::symlink("../sentinel", share.join("d/up"));
    let setuid = share.join("s");
    fs::write(&setuid, SETUID_CONTENT).ok()?;
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).ok()?;
    Some(fs::symlink_metadata(&setuid).ok()?.ino())
}

/// Panics if a non-directory in the share carries S_ISUID or S_ISGID, unless it is the host's
/// own setuid file (inode `host_setuid`) with one name and its content unchanged: the guest
/// could neither make a privileged file, nor rewrite or hard-link the host's without the guard
/// clearing its bits first.
fn check_privileged_files(dir: &Path, host_setuid: Option<u64>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            check_privileged_files(&entry.path(), host_setuid);
            continue;
        }
        if meta.mode() & (libc::S_ISUID | libc::S_ISGID) == 0 {
            continue;
        }
        let path = entry.path();
        assert_eq!(
            Some(meta.ino()),
            host_setuid,
            "the guest left a setuid/setgid file on the host: {}",
            path.display()
        );
        assert_eq!(meta.nlink(), 1, "the host's setuid file got a second name");
        assert_eq!(
            fs::read(&path).ok().as_deref(),
            Some(SETUID_CONTENT),
            "the host's setuid file was rewritten and kept its bits: {}",
            path.display()
        );
    }
}

/// Panics if a block or char device node exists in the share.
fn check_no_devices(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let kind = meta.file_type();
        assert!(
            !kind.is_block_device() && !kind.is_char_device() || meta.rdev() == 0,
            "the guest made a device node on the host: {}",
            entry.path().display()
        );
        if kind.is_dir() {
            check_no_devices(&entry.path());
        }
    }
}

/// One mounted share: guest memory with one queue, the server, and what replies told.
struct Session {
    mem: GuestMemoryMmap,
    queue: Queue,
    server: Server<Guard<PassthroughFs>>,
    next: u16,
    unique: u64,
    inodes: Vec<u64>,
    handles: Vec<u64>,
}

impl Session {
    fn new(share: &Path, read_only: bool) -> Option<Session> {
        let passthrough = PassthroughFs::new(passthrough_config(share.to_str()?)).ok()?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).ok()?;
        let mut queue = Queue::new(QUEUE_SIZE).ok()?;
        queue.set_desc_table_address(Some(0x1000), Some(0));
        queue.set_avail_ring_address(Some(0x2000), Some(0));
        queue.set_used_ring_address(Some(0x3000), Some(0));
        queue.set_ready(true);
        Some(Session {
            mem,
            queue,
            server: Server::new(Guard::new(passthrough, read_only)),
            next: 0,
            unique: 0,
            inodes: vec![1],
            handles: vec![0],
        })
    }

    fn pick_inode(&self, input: &mut Input<'_>) -> u64 {
        let choice = usize::from(input.byte());
        match choice {
            0xff => u64::from(input.u32()),
            _ => self.inodes[choice % self.inodes.len()],
        }
    }

    fn pick_handle(&self, input: &mut Input<'_>) -> u64 {
        self.handles[usize::from(input.byte()) % self.handles.len()]
    }

    /// The next request: an opcode and its arguments.
    fn decode(&self, input: &mut Input<'_>) -> (u32, Vec<u8>) {
        let (opcode, fixed, inode_fields, handle_fields, names) = input.pick(OPS);
        let mut args = input.fixed(fixed);
        for offset in inode_fields {
            let inode = self.pick_inode(input);
            args[*offset..*offset + 8].copy_from_slice(&inode.to_le_bytes());
        }
        for offset in handle_fields {
            let handle = self.pick_handle(input);
            args[*offset..*offset + 8].copy_from_slice(&handle.to_le_bytes());
        }
        if opcode == 42 {
            args[..4].copy_from_slice(&1u32.to_le_bytes());
        }
        if opcode == 16 || opcode == 21 {
            // WRITE and SETXATTR: the size field is the length of the data that follows.
            let len = input.byte();
            let data = input.take(usize::from(len));
            let size_at = if opcode == 16 { 16 } else { 0 };
            let len = u32::try_from(data.len()).unwrap_or(0);
            args[size_at..size_at + 4].copy_from_slice(&len.to_le_bytes());
            for _ in 0..names.min(1) {
                args.extend_from_slice(&name(input));
            }
            args.extend_from_slice(data);
            return (opcode, args);
        }
        for _ in 0..names {
            args.extend_from_slice(&name(input));
        }
        (opcode, args)
    }

    /// Queues one request with room for its reply, serves it, and remembers the inodes and
    /// file handles the reply names.
    fn send(&mut self, opcode: u32, nodeid: u64, args: &[u8]) {
        self.unique += 1;
        let Ok(len) = u32::try_from(40 + args.len()) else {
            return;
        };
        let mut request = Vec::with_capacity(40 + args.len());
        request.extend_from_slice(&len.to_le_bytes());
        request.extend_from_slice(&opcode.to_le_bytes());
        request.extend_from_slice(&self.unique.to_le_bytes());
        request.extend_from_slice(&nodeid.to_le_bytes());
        request.extend_from_slice(&[0u8; 16]);
        request.extend_from_slice(args);
        if self
            .mem
            .write_slice(&request, GuestAddress(REQUEST))
            .is_err()
        {
            return;
        }
        let head = (self.next % QUEUE_SIZE) * 2 % QUEUE_SIZE;
        self.write_desc(head, REQUEST, len, 1, (head + 1) % QUEUE_SIZE);
        self.write_desc((head + 1) % QUEUE_SIZE, REPLY, REPLY_SIZE, 2, 0);
        let slot = u64::from(self.next % QUEUE_SIZE);
        let _ = self
            .mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * slot));
        self.next = self.next.wrapping_add(1);
        let _ = self.mem.write_obj(self.next, GuestAddress(AVAIL_RING + 2));
        let canary = [0xa5u8; 64];
        let _ = self
            .mem
            .write_slice(&canary, GuestAddress(REPLY + u64::from(REPLY_SIZE)));
        let _ = self.mem.write_slice(&[0u8; 16], GuestAddress(REPLY));
        if process_queue(
            &mut self.queue,
            &self.mem,
            &self.server,
            &NoSync,
            &Signals::default(),
        )
        .is_err()
        {
            return;
        }
        let mut after = [0u8; 64];
        let _ = self
            .mem
            .read_slice(&mut after, GuestAddress(REPLY + u64::from(REPLY_SIZE)));
        assert_eq!(after, canary, "a reply overran its buffer");
        self.learn(opcode);
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&len.to_le_bytes());
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        desc[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self
            .mem
            .write_slice(&desc, GuestAddress(DESC_TABLE + 16 * u64::from(index)));
    }

    /// Inodes from entry replies, handles from open replies.
    fn learn(&mut self, opcode: u32) {
        let Ok(error) = self.mem.read_obj::<i32>(GuestAddress(REPLY + 4)) else {
            return;
        };
        if error != 0 {
            return;
        }
        let word = |offset: u64| self.mem.read_obj::<u64>(GuestAddress(REPLY + offset)).ok();
        match opcode {
            1 | 6 | 8 | 9 | 13 => self.inodes.extend(word(16)),
            35 | 51 => {
                self.inodes.extend(word(16));
                self.handles.extend(word(16 + 128));
            }
            14 | 27 => self.handles.extend(word(16)),
            _ => {}
        }
        self.inodes.truncate(64);
        self.handles.truncate(64);
    }
}

fn name(input: &mut Input<'_>) -> Vec<u8> {
    let mut name = input.pick(NAMES).to_vec();
    name.push(0);
    name
}

#[allow(dead_code)]
const _: () = assert!(MEM_SIZE > REPLY + REPLY_SIZE as u64 + 64);
#[allow(dead_code)]
const _: () = assert!(USED_RING + 4 + 8 * QUEUE_SIZE as u64 + 2 < REQUEST);
