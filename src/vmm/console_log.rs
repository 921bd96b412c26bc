//! The guest's serial console as a bounded log file, and what it says about how a guest ended.
//!
//! A guest kernel can print without end (a hostile one, or a loop of warnings), so the log keeps
//! the first [`HEAD_BYTES`] (the boot messages) in the file as they come and, past that, only
//! the last [`TAIL_BYTES`] in memory; when the VM ends, a line saying how much was dropped and
//! that tail are appended. The last lines before a guest died are therefore always in the file,
//! whatever came before them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// What the log file keeps from the start of the console (boot messages).
pub const HEAD_BYTES: usize = 1 << 20;
/// What it keeps from the end, once the head is full.
pub const TAIL_BYTES: usize = 256 << 10;

/// Console lines that tell the guest kernel died on its own (a panic, an oops, a BUG).
const DEATH_MARKERS: &[&str] = &[
    "Kernel panic - not syncing",
    "BUG: ",
    "Oops: ",
    "general protection fault",
    "double fault",
];

/// The console log: the head in `file`, the tail in a ring, optionally echoed to `echo`.
pub struct ConsoleLog {
    file: File,
    echo: Option<Box<dyn Write + Send>>,
    written: usize,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl ConsoleLog {
    /// A log writing into `file` (created by the caller: private, never through a symlink),
    /// echoing everything to `echo` when given.
    pub fn new(file: File, echo: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            file,
            echo,
            written: 0,
            tail: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Appends the tail ring (with a line counting what was dropped before it) to the file.
    fn write_tail(&mut self) -> io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        writeln!(
            self.file,
            "\n--- podvm: {} bytes of console output dropped after the first {HEAD_BYTES}; \
             the last {} follow ---",
            self.dropped,
            self.tail.len()
        )?;
        let (first, second) = self.tail.as_slices();
        self.file.write_all(first)?;
        self.file.write_all(second)?;
        self.tail.clear();
        self.file.flush()
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = HEAD_BYTES.saturating_sub(self.written).min(buf.len());
        self.file.write_all(&buf[..room])?;
        self.written += room;
        for &byte in &buf[room..] {
            if self.tail.len() == TAIL_BYTES {
                self.tail.pop_front();
                self.dropped += 1;
            }
            self.tail.push_back(byte);
        }
        if let Some(echo) = &mut self.echo {
            echo.write_all(buf)?;
            echo.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for ConsoleLog {
    fn drop(&mut self) {
        if let Err(err) = self.write_tail() {
            eprintln!("podvm: cannot write the end of the guest console log: {err}");
        }
    }
}

/// The first console line that says the guest kernel died on its own (a panic, an oops, a
/// BUG, a fault in the kernel), without its timestamp; `None` when the console says nothing
/// of the kind, e.g. for a guest the CPU reset (a triple fault) with no word from its kernel.
pub fn guest_death_line(console: &str) -> Option<String> {
    console
        .lines()
        .find(|line| DEATH_MARKERS.iter().any(|marker| line.contains(marker)))
        .map(|line| without_timestamp(line).trim().to_string())
}

/// How much of the end of a console log [`last_line`] reads.
const LAST_LINE_WINDOW: u64 = 8 << 10;
/// How much of the last line [`last_line`] keeps.
const LAST_LINE_MAX_CHARS: usize = 300;

/// The guest's last non-empty console line in the log at `path`, as a host terminal can show
/// it: control characters escaped, cut at [`LAST_LINE_MAX_CHARS`]. Only the file's last
/// [`LAST_LINE_WINDOW`] bytes are read (the guest wrote it); `None` when there is no such
/// line or no log.
pub fn last_line(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LAST_LINE_WINDOW)))
        .ok()?;
    let mut end = Vec::new();
    file.take(LAST_LINE_WINDOW).read_to_end(&mut end).ok()?;
    let text = String::from_utf8_lossy(&end);
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    Some(printable(line.trim_end(), LAST_LINE_MAX_CHARS))
}

/// `text` with control characters escaped (a guest's bytes must not drive the host's terminal),
/// cut at `max` characters.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `line` without a leading `[   12.345678] ` kernel timestamp.
fn without_timestamp(line: &str) -> &str {
    let trimmed = line.trim_start();
    match trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
    {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &tempfile::TempDir) -> (ConsoleLog, std::path::PathBuf) {
        let path = dir.path().join("console.log");
        let file = File::create(&path).expect("log file");
        (ConsoleLog::new(file, None), path)
    }

    /// Attack: a guest kernel prints without end to fill the host's disk through its console
    /// log. The file stays within head + tail + one line, and keeps the first and last output.
    #[test]
    fn a_flooding_guest_leaves_a_bounded_log_with_its_first_and_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, path) = log_in(&dir);
        log.write_all(b"booting\n").expect("write");
        let line = [b'x'; 1023];
        let mut total = 8;
        for _ in 0..(3 * HEAD_BYTES / 1024) {
            log.write_all(&line).expect("write");
            log.write_all(b"\n").expect("write");
            total += 1024;
        }
        log.write_all(b"Kernel panic - not syncing: last words\n")
            .expect("write");
        total += 39;
        drop(log);
        let text = std::fs::read(&path).expect("read");
        assert!(
            text.len() <= HEAD_BYTES + TAIL_BYTES + 200,
            "bounded: {}",
            text.len()
        );
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("booting\n"), "the head is kept");
        assert!(
            text.ends_with("Kernel panic - not syncing: last words\n"),
            "the tail is kept"
        );
        let dropped = total - HEAD_BYTES - TAIL_BYTES;
        assert!(
            text.contains(&format!(
                "--- podvm: {dropped} bytes of console output dropped"
            )),
            "the drop is counted exactly"
        );
    }

    #[test]
    fn a_short_console_is_kept_whole_with_no_drop_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, path) = log_in(&dir);
        log.write_all(b"Linux version 6.1\nRun /init as init process\n")
            .expect("write");
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "Linux version 6.1\nRun /init as init process\n"
        );
    }

    #[test]
    fn the_first_line_of_a_guest_kernel_death_is_found_without_its_timestamp() {
        let console = "[    0.000000] Linux version 6.1\n\
                       [    2.345678] Kernel panic - not syncing: Attempted to kill init!\n\
                       [    2.345679] CPU: 0 PID: 1 Comm: init\n";
        assert_eq!(
            guest_death_line(console).as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init!")
        );
        assert_eq!(
            guest_death_line("[ 1.0] BUG: kernel NULL pointer dereference\n").as_deref(),
            Some("BUG: kernel NULL pointer dereference")
        );
        assert_eq!(
            guest_death_line("[    5.5] Run /init as init process\n"),
            None
        );
    }

    #[test]
    fn the_last_line_is_read_from_the_end_and_made_printable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        assert_eq!(last_line(&path), None, "no log");
        let mut text = "x".repeat(3 * LAST_LINE_WINDOW as usize);
        text.push_str("\n[    2.0] reboot: going \x1b[2Jaway\x07\r\n\r\n  \n");
        std::fs::write(&path, &text).expect("write");
        assert_eq!(
            last_line(&path).as_deref(),
            Some("[    2.0] reboot: going \\u{1b}[2Jaway\\u{7}")
        );
        std::fs::write(&path, "y".repeat(2 * LAST_LINE_MAX_CHARS)).expect("write");
        let line = last_line(&path).expect("line");
        assert_eq!(line, format!("{}...", "y".repeat(LAST_LINE_MAX_CHARS)));
        std::fs::write(&path, "\n \n").expect("write");
        assert_eq!(last_line(&path), None, "nothing but blank lines");
    }
}
