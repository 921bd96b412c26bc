//! Timestamps of a VM's start and end on both sides of the process boundary, for finding where
//! boot time goes: with `PODVM_TRACE=1` the supervisor and its VMM process print
//! `podvm-trace: SIDE STEP MS` lines on stderr, `MS` on CLOCK_MONOTONIC (one clock for both
//! processes), so the lines of both sort into one timeline. Off by default: nothing is printed
//! and the environment is read once.

use std::sync::OnceLock;

/// The environment variable that turns the trace on.
pub const TRACE_ENV: &str = "PODVM_TRACE";

/// Whether this process traces.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(TRACE_ENV).is_ok_and(|value| value == "1"))
}

/// Milliseconds on CLOCK_MONOTONIC.
fn now_ms() -> f64 {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `spec`, which is valid and ours.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut spec) } != 0 {
        return 0.0;
    }
    spec.tv_sec as f64 * 1e3 + spec.tv_nsec as f64 / 1e6
}

/// Prints the supervisor's `step` with the time, when tracing.
pub fn mark(step: &str) {
    if enabled() {
        eprintln!("podvm-trace: supervisor {step} {:.1}", now_ms());
    }
}

/// Prints the VMM process's `step` with the time, when tracing.
pub fn mark_vmm(step: &str) {
    if enabled() {
        eprintln!("podvm-trace: vmm {step} {:.1}", now_ms());
    }
}
