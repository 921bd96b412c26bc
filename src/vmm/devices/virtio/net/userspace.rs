//! The userspace backend, used when /dev/vhost-net is unavailable: a worker thread copies frames
//! between the tap and the rx/tx queues. No offloads are offered in this mode, so every frame is
//! at most one MTU and the driver's receive buffers (one per frame, no merging) always fit it;
//! the 12-byte virtio-net header passes through unchanged (the tap speaks the same header),
//! except `num_buffers`, set to 1 on receive.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::{Interrupt, SignalGuest};
use super::device::VNET_HDR_LEN;

/// Largest frame the tap hands over or takes (64 KiB plus the header).
const MAX_FRAME: usize = 65_536 + VNET_HDR_LEN;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const TAP: u64 = 2;
const STOP: u64 = 3;

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
    #[error("virtio-net: tap I/O failed: {0}")]
    Tap(std::io::Error),
    /// The interrupt could not be raised.
    #[error("virtio-net: cannot interrupt the guest: {0}")]
    Signal(std::io::Error),
}

/// The running worker; stopping (or dropping) it joins the thread.
pub struct Handle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
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

/// Starts the worker thread serving `queues` (rx, tx) from `tap`.
pub fn start(
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
    tap: File,
) -> std::io::Result<Handle> {
    let stop = EventFd::new(EFD_NONBLOCK)?;
    let epoll = Epoll::new()?;
    let mut kicks = kicks.into_iter();
    let (Some(rx_kick), Some(tx_kick)) = (kicks.next(), kicks.next()) else {
        return Err(std::io::Error::other(
            "virtio-net needs an rx and a tx queue",
        ));
    };
    let mut queues = queues.into_iter();
    let (Some(rx_queue), Some(tx_queue)) = (queues.next(), queues.next()) else {
        return Err(std::io::Error::other(
            "virtio-net needs an rx and a tx queue",
        ));
    };
    for (fd, token) in [
        (rx_kick.as_raw_fd(), RX_KICK),
        (tx_kick.as_raw_fd(), TX_KICK),
        (tap.as_raw_fd(), TAP),
        (stop.as_raw_fd(), STOP),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let mut worker = Loop {
        epoll,
        mem,
        rx_queue,
        tx_queue,
        rx_kick,
        tx_kick,
        tap,
        interrupt,
        rx: Rx::default(),
        tap_paused: false,
    };
    let stop_in_thread = stop.try_clone()?;
    let thread = std::thread::Builder::new()
        .name("virtio-net".into())
        .spawn(move || {
            if let Err(err) = worker.run(&stop_in_thread) {
                eprintln!("podvm: virtio-net stopped: {err}");
            }
        })?;
    Ok(Handle {
        stop,
        thread: Some(thread),
    })
}

struct Loop {
    epoll: Epoll,
    mem: GuestMemoryMmap,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    tap: File,
    interrupt: Interrupt,
    rx: Rx,
    tap_paused: bool,
}

impl Loop {
    fn run(&mut self, stop: &EventFd) -> Result<(), UserspaceError> {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(UserspaceError::Tap(err)),
            };
            for event in &events[..count] {
                match event.data() {
                    STOP => {
                        let _ = stop.read();
                        return Ok(());
                    }
                    RX_KICK => {
                        let _ = self.rx_kick.read();
                        self.receive()?;
                    }
                    TX_KICK => {
                        let _ = self.tx_kick.read();
                        transmit(
                            &mut self.tx_queue,
                            &self.mem,
                            &mut self.tap,
                            &self.interrupt,
                        )?;
                    }
                    _ => self.receive()?,
                }
            }
        }
    }

    /// Receives what the tap has; stops watching it while the guest has no buffers (the next
    /// rx kick resumes), so a full receive queue does not spin this thread.
    fn receive(&mut self) -> Result<(), UserspaceError> {
        let stop = self.rx.process(
            &mut self.rx_queue,
            &self.mem,
            &mut self.tap,
            &self.interrupt,
        )?;
        let pause = stop == RxStop::NoBuffers;
        if pause != self.tap_paused {
            let events = if pause {
                EventSet::empty()
            } else {
                EventSet::IN
            };
            self.epoll
                .ctl(
                    ControlOperation::Modify,
                    self.tap.as_raw_fd(),
                    EpollEvent::new(events, TAP),
                )
                .map_err(UserspaceError::Tap)?;
            self.tap_paused = pause;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "userspace_tests.rs"]
mod tests;
