//! The agent's own diagnostics: short `podvm-agent:` lines on stderr, which is the console when
//! the agent is PID 1 in the VM.

use std::io::Write;

/// Writes one diagnostic line; a failing stderr is ignored (there is nowhere else to complain).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "podvm-agent: {args}");
}

/// Logs a formatted diagnostic line with the `podvm-agent:` prefix.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
