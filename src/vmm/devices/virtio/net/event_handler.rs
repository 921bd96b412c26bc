//! What wakes virtio-net's userspace backend: the rx and tx kicks, and the frame port (a tap,
//! or the stream socket to passt) having frames. (With vhost-net the worker only relays
//! vhost's call eventfds.)

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{Serve, Watch};
use super::super::{Activation, Interrupt};
use super::userspace::{transmit, Rx, RxStop, UserspaceError};

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const TAP: u64 = 2;

/// Where the userspace worker reads and writes frames, each behind a virtio-net header: a tap,
/// or a [`StreamPort`](super::stream::StreamPort). Reads and writes do not block.
pub trait FramePort: Read + Write + AsRawFd + Send + 'static {}

impl<T: Read + Write + AsRawFd + Send + 'static> FramePort for T {}

/// What the worker does: moves frames between the port and the rx/tx queues.
pub struct Frames<P> {
    mem: GuestMemoryMmap,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    tap: P,
    interrupt: Interrupt,
    rx: Rx,
    tap_paused: bool,
}

impl<P: FramePort> Frames<P> {
    /// Serves the rx (0) and tx (1) queues of `activation`, which the device core checked, from
    /// `tap` (a tap or another frame port).
    pub fn new(activation: Activation, tap: P) -> Self {
        const CHECKED: &str = "the device core checked that the rx and tx queues exist";
        let Activation {
            mem,
            queues,
            kicks,
            interrupt,
            ..
        } = activation;
        let (mut queues, mut kicks) = (queues.into_iter(), kicks.into_iter());
        Self {
            mem,
            rx_queue: queues.next().expect(CHECKED),
            tx_queue: queues.next().expect(CHECKED),
            rx_kick: kicks.next().expect(CHECKED),
            tx_kick: kicks.next().expect(CHECKED),
            tap,
            interrupt,
            rx: Rx::default(),
            tap_paused: false,
        }
    }

    /// Receives what the tap has; stops watching it while the guest has no buffers (the next
    /// rx kick resumes), so a full receive queue does not spin this thread.
    fn receive(&mut self, watch: &Watch) -> Result<(), UserspaceError> {
        let stop = self.rx.process(
            &mut self.rx_queue,
            &self.mem,
            &mut self.tap,
            &self.interrupt,
        )?;
        let pause = stop == RxStop::NoBuffers;
        if pause != self.tap_paused {
            watch
                .set_paused(&self.tap, TAP, pause)
                .map_err(UserspaceError::Tap)?;
            self.tap_paused = pause;
        }
        Ok(())
    }
}

impl<P: FramePort> Serve for Frames<P> {
    fn watch(&self, watch: &Watch) -> std::io::Result<()> {
        watch.add(&self.rx_kick, RX_KICK)?;
        watch.add(&self.tx_kick, TX_KICK)?;
        watch.add(&self.tap, TAP)
    }

    fn serve(&mut self, token: u64, watch: &Watch) -> ControlFlow<()> {
        let result = match token {
            RX_KICK => {
                let _ = self.rx_kick.read();
                self.receive(watch)
            }
            TX_KICK => {
                let _ = self.tx_kick.read();
                transmit(
                    &mut self.tx_queue,
                    &self.mem,
                    &mut self.tap,
                    &self.interrupt,
                )
                .map(drop)
            }
            _ => self.receive(watch),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                eprintln!("podvm: virtio-net stopped: {err}");
                ControlFlow::Break(())
            }
        }
    }
}
