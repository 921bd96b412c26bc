//! A device worker thread: sleeps in epoll on the fds its [`Serve`] watches (queue kicks, backend
//! notifications, a tap) and serves each one that fires. No polling: the thread only runs when
//! the guest or a backend signalled something, or when it is told to stop.
//!
//! Devices do not spawn workers themselves: the device core
//! ([`DeviceCore`](super::device::DeviceCore)) starts one at activation and stops it at reset.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Epoll token of the stop eventfd; the tokens of a [`Serve`] are below it.
const STOP_TOKEN: u64 = u64::MAX;

/// What a worker thread does: which fds wake it and what happens when one fires. Only the
/// worker holds it, so guest memory and queues inside it are reachable from that thread alone.
pub trait Serve: Send + 'static {
    /// Adds the fds to wake on to `watch`, each with its own token.
    fn watch(&self, watch: &Watch) -> std::io::Result<()>;
    /// The fd added with `token` is ready. `Break` ends the thread (say why before returning it).
    fn serve(&mut self, token: u64, watch: &Watch) -> ControlFlow<()>;
}

/// For devices whose worker does one of several things (e.g. per backend).
impl Serve for Box<dyn Serve> {
    fn watch(&self, watch: &Watch) -> std::io::Result<()> {
        (**self).watch(watch)
    }

    fn serve(&mut self, token: u64, watch: &Watch) -> ControlFlow<()> {
        (**self).serve(token, watch)
    }
}

/// The fds a worker sleeps on.
pub struct Watch {
    epoll: Epoll,
    count: Cell<usize>,
}

impl Watch {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            count: Cell::new(0),
        })
    }

    /// Wakes the worker with `token` whenever `fd` is readable.
    pub fn add(&self, fd: &impl AsRawFd, token: u64) -> std::io::Result<()> {
        debug_assert_ne!(token, STOP_TOKEN, "the stop token is the worker's own");
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.count.set(self.count.get() + 1);
        Ok(())
    }

    /// Stops waking for `fd` (added with `token`) while `paused`, e.g. while what it has cannot be
    /// taken; waking resumes once it is called with `paused` false.
    pub fn set_paused(&self, fd: &impl AsRawFd, token: u64, paused: bool) -> std::io::Result<()> {
        let events = if paused {
            EventSet::empty()
        } else {
            EventSet::IN
        };
        self.epoll.ctl(
            ControlOperation::Modify,
            fd.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }
}

/// Serves eventfds (queue kicks, vhost call eventfds): drains the counter of the one that fired,
/// then calls `handler(i)` with its index.
pub struct Kicks<F> {
    fds: Vec<EventFd>,
    handler: F,
}

impl<F: FnMut(usize) + Send + 'static> Kicks<F> {
    /// Calls `handler(i)` whenever `fds[i]` is signalled.
    pub fn new(fds: Vec<EventFd>, handler: F) -> Self {
        Self { fds, handler }
    }
}

impl<F: FnMut(usize) + Send + 'static> Serve for Kicks<F> {
    fn watch(&self, watch: &Watch) -> std::io::Result<()> {
        for (token, fd) in (0u64..).zip(&self.fds) {
            watch.add(fd, token)?;
        }
        Ok(())
    }

    fn serve(&mut self, token: u64, _watch: &Watch) -> ControlFlow<()> {
        let index = usize::try_from(token).unwrap_or(usize::MAX);
        if let Some(fd) = self.fds.get(index) {
            // Draining resets the counter; a spurious wake-up only costs one handler call.
            let _ = fd.read();
            (self.handler)(index);
        }
        ControlFlow::Continue(())
    }
}

/// A running worker thread; stopping it (or dropping it) joins the thread.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` serving what `serve` watches until it is stopped or `serve` breaks.
    pub fn spawn<S: Serve>(name: String, mut serve: S) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let watch = Watch::new()?;
        watch.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        serve.watch(&watch)?;
        let stop_in_thread = stop.try_clone()?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            run(&watch, &stop_in_thread, &mut serve);
        })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Tells the thread to stop and waits for it.
    pub fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // If the write fails the eventfd counter is saturated, which also wakes the thread.
            let _ = self.stop.write(1);
            let _ = handle.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<S: Serve>(watch: &Watch, stop: &EventFd, serve: &mut S) {
    let mut events = vec![EpollEvent::default(); watch.count.get() + 1];
    loop {
        let count = match watch.epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("podvm: device worker stopped: epoll_wait failed: {err}");
                return;
            }
        };
        for event in &events[..count] {
            if event.data() == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            if serve.serve(event.data(), watch).is_break() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn handler_runs_for_the_fd_that_fired_and_stop_joins() {
        let fds: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let second = fds[1].try_clone().expect("clone");
        let (tx, rx) = mpsc::channel();
        let kicks = Kicks::new(fds, move |index| {
            let _ = tx.send(index);
        });
        let mut worker = Worker::spawn("test-worker".into(), kicks).expect("spawn");
        second.write(1).expect("kick");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("woken"), 1);
        worker.stop();
        // Joined: the thread is gone and took the handler (and its sender) with it.
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    }

    /// Counts wake-ups of a level-triggered fd it pauses after the first one.
    struct PauseAfterOne {
        fd: EventFd,
        woken: mpsc::Sender<()>,
    }

    impl Serve for PauseAfterOne {
        fn watch(&self, watch: &Watch) -> std::io::Result<()> {
            watch.add(&self.fd, 7)
        }

        fn serve(&mut self, token: u64, watch: &Watch) -> ControlFlow<()> {
            assert_eq!(token, 7);
            // Not drained: without the pause this would wake the thread again and again.
            let _ = self.woken.send(());
            watch.set_paused(&self.fd, 7, true).expect("pause");
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn a_paused_fd_no_longer_wakes_the_worker() {
        let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        fd.write(1).expect("ready");
        let (woken, wakes) = mpsc::channel();
        let serve = PauseAfterOne {
            fd: fd.try_clone().expect("clone"),
            woken,
        };
        let _worker = Worker::spawn("test-pause".into(), serve).expect("spawn");
        wakes
            .recv_timeout(Duration::from_secs(5))
            .expect("woken once");
        assert!(wakes.recv_timeout(Duration::from_millis(100)).is_err());
    }

    /// Ends the thread at the first wake-up.
    struct Quit(EventFd);

    impl Serve for Quit {
        fn watch(&self, watch: &Watch) -> std::io::Result<()> {
            watch.add(&self.0, 0)
        }

        fn serve(&mut self, _token: u64, _watch: &Watch) -> ControlFlow<()> {
            ControlFlow::Break(())
        }
    }

    #[test]
    fn a_serve_that_breaks_ends_the_thread_and_stop_still_returns() {
        let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut worker =
            Worker::spawn("test-quit".into(), Quit(fd.try_clone().expect("clone"))).expect("spawn");
        fd.write(1).expect("kick");
        let handle = worker.handle.as_ref().expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() {
            assert!(std::time::Instant::now() < deadline, "thread did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.stop();
    }
}
