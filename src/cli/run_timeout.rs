//! `run --timeout`: a watchdog that stops a pod which runs too long, as `podvm stop` does (the
//! app gets SIGTERM, and is stopped hard after `--stop-timeout`), through the pod's control
//! socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control;

/// How often the watchdog tries again when the pod's control socket does not answer yet (the
/// limit ran out while the VM was still starting).
const RETRY: Duration = Duration::from_millis(100);

/// Exit code of a pod stopped at its `--timeout`, as timeout(1).
pub const EXIT_TIMEOUT: u8 = 124;

/// A running watchdog.
pub struct Watchdog {
    done: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Stops the pod served at `socket` once `limit` has passed, unless [`Watchdog::finish`]
    /// came first.
    pub fn start(socket: PathBuf, limit: Duration) -> std::io::Result<Watchdog> {
        let (done, ended) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let stopped = fired.clone();
        let thread = std::thread::Builder::new()
            .name("run-timeout".into())
            .spawn(move || {
                let mut wait = limit;
                // The sender is dropped (or sends) when the run ends.
                while let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(wait) {
                    if control::client::stop(&socket).is_ok() {
                        stopped.store(true, Ordering::SeqCst);
                        eprintln!(
                            "podvm: the pod ran past its --timeout of {limit:?}; stopping it"
                        );
                        return;
                    }
                    wait = RETRY;
                }
            })?;
        Ok(Watchdog {
            done: Some(done),
            thread: Some(thread),
            fired,
        })
    }

    /// Ends the watchdog (the run is over); whether it stopped the pod.
    pub fn finish(mut self) -> bool {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.fired.load(Ordering::SeqCst)
    }
}
