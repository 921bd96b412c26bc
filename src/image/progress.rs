//! Progress bars on stderr, shown only when stderr is a terminal.

use std::io::{IsTerminal, Read};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar (hidden when stderr is not a TTY).
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A byte-counting bar labelled `label`.
    pub fn bar(label: &str, total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:20} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
        {
            bar.set_style(style);
        }
        bar.set_message(label.to_string());
        Progress { bar }
    }

    /// Counts bytes read through `r`.
    pub fn wrap_read<R: Read>(&self, r: R) -> impl Read {
        self.bar.wrap_read(r)
    }

    /// Adds `n` bytes.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear()
    }
}
