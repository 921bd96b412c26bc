//! Rate-limited error lines for what the guest can trigger at will (a bad request, a broken
//! queue, a device reset): at most [`PER_SECOND`] lines a second per device, then one line
//! saying how many were suppressed, so a hostile guest cannot flood podvm's stderr (and the
//! journal or terminal behind it).

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines each device may print per second.
pub const PER_SECOND: u32 = 10;
/// The window the limit counts in.
const WINDOW: Duration = Duration::from_secs(1);

/// A log of error lines limited to `limit` a second; usable as a `static` per device.
#[derive(Debug)]
pub struct RateLimitedLog {
    device: &'static str,
    limit: u32,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    /// A log for `device` printing at most [`PER_SECOND`] lines a second.
    pub const fn new(device: &'static str) -> Self {
        Self::with_limit(device, PER_SECOND)
    }

    /// A log for `device` printing at most `limit` lines a second.
    pub const fn with_limit(device: &'static str, limit: u32) -> Self {
        Self {
            device,
            limit,
            state: Mutex::new(Window {
                start: None,
                printed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Prints `podvm: <device>: <message>` on stderr unless the limit was reached this second.
    pub fn log(&self, message: fmt::Arguments<'_>) {
        let _ = self.log_to(&mut std::io::stderr(), Instant::now(), message);
    }

    /// [`Self::log`] into `out` at time `now`.
    fn log_to(
        &self,
        out: &mut dyn Write,
        now: Instant,
        message: fmt::Arguments<'_>,
    ) -> std::io::Result<()> {
        let mut window = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let expired = window
            .start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if expired {
            if window.suppressed > 0 {
                writeln!(
                    out,
                    "podvm: {}: {} more messages suppressed",
                    self.device, window.suppressed
                )?;
            }
            *window = Window {
                start: Some(now),
                ..Window::default()
            };
        }
        if window.printed >= self.limit {
            window.suppressed += 1;
            return Ok(());
        }
        window.printed += 1;
        writeln!(out, "podvm: {}: {message}", self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_prints_the_limit_then_counts_the_rest() {
        // Attack: a guest sends endless bad requests, each of which would print a line.
        let log = RateLimitedLog::with_limit("virtio-test", 3);
        let mut out = Vec::new();
        let start = Instant::now();
        for i in 0..1000 {
            log.log_to(&mut out, start, format_args!("bad request {i}"))
                .expect("write");
        }
        let later = start + WINDOW;
        log.log_to(&mut out, later, format_args!("after a second"))
            .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "podvm: virtio-test: bad request 0",
                "podvm: virtio-test: bad request 1",
                "podvm: virtio-test: bad request 2",
                "podvm: virtio-test: 997 more messages suppressed",
                "podvm: virtio-test: after a second",
            ]
        );
    }
}
