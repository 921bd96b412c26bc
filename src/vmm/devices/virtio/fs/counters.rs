//! Bytes the guest read and wrote through the virtio-fs devices of this process, for the pod's
//! accounting (`status --format json`: `share_read_bytes`, `share_written_bytes`).
//!
//! [`Guard`](super::Guard) adds what each READ and WRITE request moved (the bytes the
//! passthrough says it transferred, not the sizes the guest asked for). The counters are of
//! the process: a podvm process runs one VM, and its supervisor reads them live (the control
//! socket's `status`) and once the VM ended. Relaxed atomics: each is a monotonic sum read on
//! its own, no ordering with other memory is needed.

use std::sync::atomic::{AtomicU64, Ordering};

static READ: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// What the guest moved through the shares so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareBytes {
    /// Bytes the guest read from shared files.
    pub read: u64,
    /// Bytes the guest wrote to shared files.
    pub written: u64,
}

/// The totals of every virtio-fs device of this process so far.
pub fn share_bytes() -> ShareBytes {
    ShareBytes {
        read: READ.load(Ordering::Relaxed),
        written: WRITTEN.load(Ordering::Relaxed),
    }
}

/// Counts a READ that gave the guest `bytes`.
pub(super) fn count_read(bytes: usize) {
    READ.fetch_add(widen(bytes), Ordering::Relaxed);
}

/// Counts a WRITE that took `bytes` from the guest.
pub(super) fn count_written(bytes: usize) {
    WRITTEN.fetch_add(widen(bytes), Ordering::Relaxed);
}

fn widen(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}
