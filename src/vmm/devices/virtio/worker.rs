//! A device worker thread: sleeps in epoll on the fds its [`Serve`] watches (queue kicks, backend
//! notifications, a tap) and serves each one that fires. No polling: the thread only runs when
//! the guest or a backend signalled something, or when it is told to stop.
//!
//! Devices do not spawn workers themselves: the device core
//! ([`DeviceCore`](super::device::DeviceCore)) starts its thread with the device (before the
//! guest runs, so that it is never a child of a filtered vCPU thread), which installs its
//! seccomp filter ([`crate::vmm::seccomp`]) and then waits; activation hands it what to serve
//! and reset takes it back.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::seccomp::{self, ThreadKind};

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

/// Why a device's worker thread could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread, or a descriptor it needs, could not be created.
    #[error("cannot start the worker thread {thread}: {source}")]
    Start {
        /// The thread's name.
        thread: String,
        /// Why.
        source: std::io::Error,
    },
    /// The thread could not install its seccomp filter (it ended at once: fail closed).
    #[error(transparent)]
    Seccomp(#[from] crate::vmm::seccomp::SeccompError),
}

/// What a worker thread is handed at each activation: its epoll set and what it serves.
struct Job {
    watch: Watch,
    serve: Box<dyn Serve>,
    /// This job's own stop: a stop can never be taken for another job's.
    stop: EventFd,
}

/// A device's worker thread. It starts with the device, before the guest runs, installs the
/// seccomp filter of its kind, then waits for activations: each one is served until it is
/// stopped or its [`Serve`] breaks. Dropping the worker ends the thread and joins it.
pub struct Worker {
    name: String,
    /// The stop of the job being served, if any.
    stop: Option<EventFd>,
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<()>,
    serving: bool,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name`, filtered as `kind`; returns once the filter is in.
    pub fn spawn(name: String, kind: ThreadKind) -> Result<Self, WorkerError> {
        let start_error = |source| WorkerError::Start {
            thread: name.clone(),
            source,
        };
        let (jobs, jobs_in_thread) = mpsc::channel::<Job>();
        let (done_in_thread, done) = mpsc::channel();
        let (ready_in_thread, ready) = mpsc::channel();
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let installed = seccomp::install(kind, &thread_name);
                let ok = installed.is_ok();
                let _ = ready_in_thread.send(installed);
                if ok {
                    serve_jobs(&jobs_in_thread, &done_in_thread);
                }
            })
            .map_err(start_error)?;
        let installed = ready.recv().unwrap_or_else(|_| {
            Err(seccomp::SeccompError::Install {
                thread: name.clone(),
                source: seccompiler::Error::EmptyFilter,
            })
        });
        if let Err(err) = installed {
            let _ = handle.join();
            return Err(err.into());
        }
        Ok(Self {
            name,
            stop: None,
            jobs: Some(jobs),
            done,
            serving: false,
            handle: Some(handle),
        })
    }

    /// Stops what the thread serves now, if anything, then has it serve `serve` until it is
    /// stopped or `serve` breaks.
    pub fn start<S: Serve>(&mut self, serve: S) -> std::io::Result<()> {
        self.stop();
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let watch = Watch::new()?;
        watch.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        serve.watch(&watch)?;
        let job = Job {
            watch,
            serve: Box::new(serve),
            stop: stop.try_clone()?,
        };
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(std::io::Error::other(format!(
                "the worker thread {} has ended",
                self.name
            )));
        }
        self.serving = true;
        self.stop = Some(stop);
        Ok(())
    }

    /// Stops what the thread serves and waits until it has dropped it (and with it the queues
    /// and guest memory); the thread stays, waiting for the next activation.
    pub fn stop(&mut self) {
        let stop = self.stop.take();
        if std::mem::take(&mut self.serving) {
            // If the write fails the eventfd counter is saturated, which also wakes the thread.
            // A job that ended on its own has reported done already; its stop goes unread.
            if let Some(stop) = stop {
                let _ = stop.write(1);
            }
            // An error means the thread is gone, and what it served with it.
            let _ = self.done.recv();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
        // Closing the channel ends the thread's wait for jobs.
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The thread's life after its filter is in: each job is served to its end, dropped, and
/// reported done.
fn serve_jobs(jobs: &mpsc::Receiver<Job>, done: &mpsc::Sender<()>) {
    let mut first = true;
    for job in jobs {
        if std::mem::take(&mut first) {
            #[cfg(feature = "seccomp-test-trigger")]
            seccomp::trigger::fire(seccomp::trigger::Site::Worker);
        }
        let Job {
            watch,
            mut serve,
            stop,
        } = job;
        run(&watch, &stop, serve.as_mut());
        drop(serve);
        drop(watch);
        let _ = done.send(());
    }
}

fn run(watch: &Watch, stop: &EventFd, serve: &mut dyn Serve) {
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
        let mut worker = spawn("test-worker");
        worker.start(kicks).expect("start");
        second.write(1).expect("kick");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("woken"), 1);
        worker.stop();
        // Stopped: the thread dropped the handler (and its sender) before stop returned.
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
        let mut worker = spawn("test-pause");
        worker.start(serve).expect("start");
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
    fn a_serve_that_breaks_ends_its_job_and_the_thread_serves_the_next_one() {
        let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut worker = spawn("test-quit");
        worker
            .start(Quit(fd.try_clone().expect("clone")))
            .expect("start");
        fd.write(1).expect("kick");
        // The job ended on its own: done is reported, and stop returns at once.
        worker
            .done
            .recv_timeout(Duration::from_secs(5))
            .expect("done");
        worker.serving = false;
        let (tx, rx) = mpsc::channel();
        let again = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let kick = again.try_clone().expect("clone");
        worker
            .start(Kicks::new(vec![again], move |index| {
                let _ = tx.send(index);
            }))
            .expect("start again");
        kick.write(1).expect("kick");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("woken"), 0);
        drop(worker);
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    }

    /// Watches one fd that never fires: served until stopped.
    struct Idle(EventFd);

    impl Serve for Idle {
        fn watch(&self, watch: &Watch) -> std::io::Result<()> {
            watch.add(&self.0, 0)
        }

        fn serve(&mut self, _token: u64, _watch: &Watch) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn a_stop_right_after_a_start_stops_that_job() {
        // A stop written before the thread took the job from its channel must stop that job (a
        // device reset right after its activation); it once was taken for a stale one and the
        // job, and the stop waiting for it, ran forever.
        let (finished, cycles) = mpsc::channel();
        std::thread::spawn(move || {
            let mut worker = spawn("test-restart");
            for cycle in 0..500 {
                let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
                worker.start(Idle(fd)).expect("start");
                worker.stop();
                let _ = finished.send(cycle);
            }
        });
        for cycle in 0..500 {
            assert_eq!(
                cycles.recv_timeout(Duration::from_secs(20)),
                Ok(cycle),
                "start + stop cycle {cycle} returned"
            );
        }
    }

    fn spawn(name: &str) -> Worker {
        Worker::spawn(name.into(), ThreadKind::Rng).expect("spawn")
    }
}
