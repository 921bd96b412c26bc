//! A device worker thread: sleeps in epoll on the device's eventfds (queue kicks, backend
//! notifications) and runs the device's handler for each one that fires. No polling: the thread
//! only runs when the guest or a backend signalled something, or when it is told to stop.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Epoll token of the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;

/// A running worker thread; stopping it (or dropping it) joins the thread.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` that calls `handler(i)` whenever `fds[i]` is signalled (after draining
    /// its counter).
    pub fn spawn<F>(name: String, fds: Vec<EventFd>, mut handler: F) -> std::io::Result<Self>
    where
        F: FnMut(usize) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (index, fd) in (0u64..).zip(&fds) {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index),
            )?;
        }
        let stop_in_thread = stop.try_clone()?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            run(&epoll, &fds, &stop_in_thread, &mut handler);
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

fn run<F: FnMut(usize)>(epoll: &Epoll, fds: &[EventFd], stop: &EventFd, handler: &mut F) {
    let mut events = vec![EpollEvent::default(); fds.len() + 1];
    loop {
        let count = match epoll.wait(-1, &mut events) {
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
            let Ok(index) = usize::try_from(event.data()) else {
                continue;
            };
            if let Some(fd) = fds.get(index) {
                // Draining resets the counter; a spurious wake-up only costs one handler call.
                let _ = fd.read();
                handler(index);
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
        let mut worker = Worker::spawn("test-worker".into(), fds, move |index| {
            let _ = tx.send(index);
        })
        .expect("spawn");
        second.write(1).expect("kick");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("woken"), 1);
        worker.stop();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }
}
