//! Bytes the guest read and wrote through the virtio-fs devices of a VM, for the pod's
//! accounting (`status --format json`: `share_read_bytes`, `share_written_bytes`).
//!
//! [`Guard`](super::Guard) adds what each READ and WRITE request moved (the bytes the
//! passthrough says it transferred, not the sizes the guest asked for). The VMM runs in a
//! process of its own while its supervisor answers `status`, so the counters live in a
//! [`SharedCounters`] page: a memfd the supervisor makes and seals against resizing (a VMM
//! taken over by its guest can change the numbers, never make the supervisor's reads fault),
//! maps, and hands to the VMM process, which maps it too and counts into it ([`share_in`]).
//! The supervisor reads it live and once the VM ended, even when the VMM was killed. Without
//! a page (the library's unit tests) the counters are this process's own. Relaxed atomics:
//! each is a monotonic sum read on its own, no ordering with other memory is needed.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static READ: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
/// The page this process counts into and reads from, once it has one.
static SHARED: OnceLock<SharedCounters> = OnceLock::new();

/// The page's size: the two counters, padded to a page.
const PAGE_BYTES: usize = 4096;

/// Errors making or mapping the shared page.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// A system call on the page failed.
    #[error("cannot {what} the share counters' page: {source}")]
    Page {
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The page handed over is not one this supervisor made (wrong size).
    #[error("the share counters' page has {0} bytes, not {PAGE_BYTES}")]
    Size(u64),
}

fn page_error(what: &'static str) -> impl FnOnce(std::io::Error) -> CountersError {
    move |source| CountersError::Page { what, source }
}

/// What the guest moved through the shares so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareBytes {
    /// Bytes the guest read from shared files.
    pub read: u64,
    /// Bytes the guest wrote to shared files.
    pub written: u64,
}

/// The two counters in a shared mapping of a sealed memfd (see the module docs).
#[derive(Debug)]
pub struct SharedCounters {
    map: NonNull<[AtomicU64; 2]>,
    file: File,
}

// SAFETY: the mapping is only accessed through atomics and lives as long as the value (it is
// unmapped in Drop); the file is Send and Sync.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: shared access is atomic only.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// A new zeroed page, sealed against shrinking and growing (the supervisor's side).
    pub fn create() -> Result<Self, CountersError> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let fd = memfd_create(
            c"podvm-share-counters",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| page_error("make")(e.into()))?;
        let file = File::from(fd);
        file.set_len(PAGE_BYTES as u64)
            .map_err(page_error("size"))?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| page_error("seal")(e.into()))?;
        Self::map(file)
    }

    /// Maps a page made by [`SharedCounters::create`] (the VMM process's side): it must have
    /// the page's size and be sealed against shrinking.
    pub fn map(file: File) -> Result<Self, CountersError> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let len = file.metadata().map_err(page_error("stat"))?.len();
        if len != PAGE_BYTES as u64 {
            return Err(CountersError::Size(len));
        }
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|e| page_error("read the seals of")(e.into()))?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(page_error("check")(std::io::Error::other(
                "it is not sealed against shrinking",
            )));
        }
        // SAFETY: a new shared mapping of PAGE_BYTES of a file of that size, which cannot
        // shrink (sealed); no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(page_error("map")(std::io::Error::last_os_error()));
        }
        let map = NonNull::new(ptr.cast::<[AtomicU64; 2]>())
            .ok_or_else(|| page_error("map")(std::io::Error::other("a null mapping")))?;
        Ok(Self { map, file })
    }

    /// The memfd, to hand to the VMM process.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn counters(&self) -> &[AtomicU64; 2] {
        // SAFETY: the mapping is page-aligned, at least 16 bytes, valid until Drop, and only
        // accessed atomically (AtomicU64 has the layout of u64).
        unsafe { self.map.as_ref() }
    }

    /// The counts so far.
    pub fn read(&self) -> ShareBytes {
        let [read, written] = self.counters();
        ShareBytes {
            read: read.load(Ordering::Relaxed),
            written: written.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference to it outlives self.
        unsafe { libc::munmap(self.map.as_ptr().cast(), PAGE_BYTES) };
    }
}

/// Makes `page` this process's counters (a process runs or supervises one VM). Refused when
/// it already has a page: the second page is handed back.
pub fn share_in(page: SharedCounters) -> Result<(), SharedCounters> {
    SHARED.set(page)
}

/// The totals of the virtio-fs devices of this process's VM so far.
pub fn share_bytes() -> ShareBytes {
    match SHARED.get() {
        Some(page) => page.read(),
        None => ShareBytes {
            read: READ.load(Ordering::Relaxed),
            written: WRITTEN.load(Ordering::Relaxed),
        },
    }
}

/// Counts a READ that gave the guest `bytes`.
pub(super) fn count_read(bytes: usize) {
    counter(0, &READ).fetch_add(widen(bytes), Ordering::Relaxed);
}

/// Counts a WRITE that took `bytes` from the guest.
pub(super) fn count_written(bytes: usize) {
    counter(1, &WRITTEN).fetch_add(widen(bytes), Ordering::Relaxed);
}

/// Counter `index` of the shared page, or `own` without one.
fn counter(index: usize, own: &'static AtomicU64) -> &'static AtomicU64 {
    match SHARED.get() {
        Some(page) => &page.counters()[index],
        None => own,
    }
}

fn widen(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_through_one_mapping_are_read_through_another() {
        let supervisor = SharedCounters::create().expect("page");
        let file = supervisor.file().try_clone().expect("dup");
        let vmm = SharedCounters::map(file).expect("map");
        vmm.counters()[0].fetch_add(5, Ordering::Relaxed);
        vmm.counters()[1].fetch_add(7, Ordering::Relaxed);
        assert_eq!(
            supervisor.read(),
            ShareBytes {
                read: 5,
                written: 7
            }
        );
        assert!(
            supervisor.file().set_len(0).is_err(),
            "sealed against shrinking"
        );
    }

    #[test]
    fn a_file_of_another_size_is_refused() {
        let file = tempfile::tempfile().expect("file");
        file.set_len(16).expect("size");
        assert!(matches!(
            SharedCounters::map(file),
            Err(CountersError::Size(16))
        ));
    }
}
