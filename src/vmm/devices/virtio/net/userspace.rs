//! The userspace backend, used when /dev/vhost-net is unavailable: the worker thread
//! (`event_handler.rs`) copies frames between the tap and the rx/tx queues with the functions
//! here. No offloads are offered in this mode, so every frame is at most one MTU and the
//! driver's receive buffers (one per frame, no merging) always fit it; the 12-byte virtio-net
//! header passes through unchanged (the tap speaks the same header), except `num_buffers`, set
//! to 1 on receive.

use std::io::{ErrorKind, Read, Write};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::super::SignalGuest;
use super::VNET_HDR_LEN;

/// Largest frame the tap hands over or takes (64 KiB plus the header).
pub(super) const MAX_FRAME: usize = 65_536 + VNET_HDR_LEN;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Errors moving frames.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    /// The queue in guest memory is broken.
    #[error("virtio-net: bad queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A buffer lies outside guest memory.
    #[error("virtio-net: buffer outside guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The tap failed.
    #[error("virtio-net: tap or stream I/O failed: {0}")]
    Tap(std::io::Error),
    /// The interrupt could not be raised.
    #[error("virtio-net: cannot interrupt the guest: {0}")]
    Signal(std::io::Error),
}

/// Receive state: a frame read from the tap that waits for a guest buffer.
pub struct Rx {
    frame: Vec<u8>,
    pending: usize,
}

/// What [`Rx::process`] stopped on.
#[derive(Debug, PartialEq, Eq)]
pub enum RxStop {
    /// The tap has nothing more to read.
    TapEmpty,
    /// A frame waits and the guest has no receive buffer.
    NoBuffers,
}

impl Default for Rx {
    fn default() -> Self {
        Self {
            frame: vec![0; MAX_FRAME],
            pending: 0,
        }
    }
}

impl Rx {
    /// Moves frames from `tap` into the guest's receive buffers until one side runs out.
    pub fn process<R: Read, S: SignalGuest>(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        tap: &mut R,
        signal: &S,
    ) -> Result<RxStop, UserspaceError> {
        let mut delivered = 0;
        let stop = loop {
            if self.pending == 0 {
                match tap.read(&mut self.frame) {
                    Ok(0) => break RxStop::TapEmpty,
                    Ok(n) if n >= VNET_HDR_LEN => self.pending = n,
                    // A runt without a whole header: dropped.
                    Ok(_) => continue,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break RxStop::TapEmpty,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(UserspaceError::Tap(err)),
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break RxStop::NoBuffers;
            };
            let head = chain.head_index();
            self.frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
                .copy_from_slice(&1u16.to_le_bytes());
            let mut written = 0usize;
            for descriptor in chain.writable() {
                let room = usize::try_from(descriptor.len()).unwrap_or(usize::MAX);
                let n = room.min(self.pending - written);
                mem.write_slice(&self.frame[written..written + n], descriptor.addr())?;
                written += n;
                if written == self.pending {
                    break;
                }
            }
            // A frame larger than the buffer arrives truncated; the driver drops it.
            queue.add_used(mem, head, u32::try_from(written).unwrap_or(u32::MAX))?;
            self.pending = 0;
            delivered += 1;
        };
        if delivered > 0 && queue.needs_notification(mem)? {
            signal.signal_used_queue().map_err(UserspaceError::Signal)?;
        }
        Ok(stop)
    }
}

/// Sends every frame the guest queued for transmission to `tap`.
pub fn transmit<W: Write, S: SignalGuest>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    tap: &mut W,
    signal: &S,
) -> Result<usize, UserspaceError> {
    let mut frame = Vec::with_capacity(MAX_FRAME);
    let mut sent = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        frame.clear();
        for descriptor in chain.readable() {
            let len = usize::try_from(descriptor.len()).unwrap_or(usize::MAX);
            if frame.len() + len > MAX_FRAME {
                frame.clear();
                break;
            }
            let start = frame.len();
            frame.resize(start + len, 0);
            mem.read_slice(&mut frame[start..], descriptor.addr())?;
        }
        if frame.len() > VNET_HDR_LEN {
            // The tap takes or drops a frame whole; a full tap queue drops it like a wire.
            match tap.write(&frame) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Err(UserspaceError::Tap(err)),
            }
        }
        queue.add_used(mem, head, 0)?;
        sent += 1;
    }
    if sent > 0 && queue.needs_notification(mem)? {
        signal.signal_used_queue().map_err(UserspaceError::Signal)?;
    }
    Ok(sent)
}

#[cfg(test)]
#[path = "userspace_tests.rs"]
mod tests;
