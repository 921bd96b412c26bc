//! Per-app logs on the host: `<pod dir>/logs/<app>.log`, one JSON record per line of output
//! (Docker's json-file shape), so `podvm logs` replays stdout and stderr apart and in order.
//!
//! Each app's log is capped ([`DEFAULT_MAX`], 100 MiB, unless `run --log-max` says otherwise),
//! so an app cannot fill the host's disk: once a record no longer fits, it and all later output
//! are dropped from the log (the terminal still gets them) and counted in `<app>.dropped`, which
//! `podvm logs` reports.
//!
//! ```text
//! {"time":"1763900000.123456789","stream":"stdout","log":"hello\n"}
//! {"time":"1763900000.2","stream":"stderr","log_b64":"//4K"}      bytes that are not UTF-8
//! ```

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The directory of app logs inside a pod directory.
pub const LOGS_DIR: &str = "logs";
/// Longest record; longer lines are cut into several records.
const MAX_RECORD: usize = 16 * 1024;
/// Default cap of an app's log file, in bytes.
pub const DEFAULT_MAX: u64 = 100 << 20;
/// How often, at most, the count of dropped bytes is rewritten while output is being dropped.
const DROPPED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The app's standard output.
    Stdout,
    /// The app's standard error.
    Stderr,
}

/// One line (or piece of a long line) of app output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When podvm received it: seconds.nanoseconds since the epoch.
    pub time: String,
    /// Where it came from.
    pub stream: LogStream,
    /// The bytes, when they are UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The bytes in base64, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_b64: Option<String>,
}

impl LogRecord {
    fn new(stream: LogStream, bytes: &[u8]) -> Self {
        let elapsed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let time = format!("{}.{:09}", elapsed.as_secs(), elapsed.subsec_nanos());
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                time,
                stream,
                log: Some(text.to_string()),
                log_b64: None,
            },
            Err(_) => Self {
                time,
                stream,
                log: None,
                log_b64: Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes,
                )),
            },
        }
    }

    /// The record's bytes (empty if it is malformed).
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.log, &self.log_b64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                    .unwrap_or_default()
            }
            (None, None) => Vec::new(),
        }
    }
}

/// The log file of app `app` in pod directory `pod_dir`.
pub fn path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join(LOGS_DIR).join(format!("{app}.log"))
}

/// The file counting the bytes of output the capped log at `log` dropped.
fn dropped_path(log: &Path) -> PathBuf {
    log.with_extension("dropped")
}

/// How many bytes of output the log at `log` dropped after reaching its cap (0 if none), and
/// that cap: `<app>.dropped` holds `BYTES CAP`.
pub fn dropped(log: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dropped_path(log)).unwrap_or_default();
    let mut numbers = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
    (
        numbers.next().unwrap_or(0),
        numbers.next().unwrap_or(DEFAULT_MAX),
    )
}

/// A size for people: whole MiB when it is some, else bytes.
pub fn human_size(bytes: u64) -> String {
    match bytes % (1 << 20) {
        0 => format!("{} MiB", bytes >> 20),
        _ => format!("{bytes} bytes"),
    }
}

/// An app's log being written: shared by the stdout and stderr writers.
#[derive(Debug, Clone)]
pub struct AppLog {
    inner: Arc<Mutex<LogFile>>,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    /// Bytes of an unfinished line, per stream.
    partial: [Vec<u8>; 2],
    /// Size of the file.
    size: u64,
    /// Largest size allowed.
    max: u64,
    /// Where the dropped count goes, and how many bytes of output were dropped.
    dropped_path: PathBuf,
    dropped: u64,
    /// When the dropped count was last written.
    dropped_written: Option<std::time::Instant>,
}

impl AppLog {
    /// Creates (or appends to) the log file at `path` (mode 0600, its directory 0700), capped
    /// at `max` bytes.
    pub fn create(path: &Path, max: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            crate::private::create_dir(dir)?;
        }
        let file = crate::private::append_file(path)?;
        let size = file.metadata()?.len();
        let dropped_path = dropped_path(path);
        Ok(Self {
            inner: Arc::new(Mutex::new(LogFile {
                file,
                partial: [Vec::new(), Vec::new()],
                size,
                max,
                dropped: dropped(path).0,
                dropped_path,
                dropped_written: None,
            })),
        })
    }

    /// A writer that passes everything to `through` and logs it as `stream`.
    pub fn tee(&self, stream: LogStream, through: Box<dyn Write + Send>) -> TeeWriter {
        TeeWriter {
            log: self.clone(),
            stream,
            through,
        }
    }

    fn record(&self, stream: LogStream, bytes: &[u8]) -> io::Result<()> {
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = std::mem::take(&mut log.partial[stream as usize]);
        pending.extend_from_slice(bytes);
        let mut result = Ok(());
        while let Some(end) = line_end(&pending) {
            let rest = pending.split_off(end);
            if result.is_ok() {
                result = log.write_record(stream, &pending);
            }
            pending = rest;
        }
        log.partial[stream as usize] = pending;
        result
    }

    /// Writes out unfinished lines (at the end of the run) and the final dropped count.
    pub fn finish(&self) -> io::Result<()> {
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = std::mem::take(&mut log.partial[stream as usize]);
            if !pending.is_empty() {
                log.write_record(stream, &pending)?;
            }
        }
        if log.dropped > 0 {
            log.write_dropped()?;
        }
        log.file.flush()
    }
}

impl LogFile {
    /// Appends one record, or drops it (and everything after it) once it would pass the cap.
    fn write_record(&mut self, stream: LogStream, bytes: &[u8]) -> io::Result<()> {
        let line = match self.dropped {
            0 => {
                let mut line = serde_json::to_vec(&LogRecord::new(stream, bytes))?;
                line.push(b'\n');
                Some(line)
            }
            // Full: no need to encode what is dropped.
            _ => None,
        };
        let fits = line.as_ref().is_some_and(|line| {
            self.size
                .checked_add(line.len() as u64)
                .is_some_and(|size| size <= self.max)
        });
        let Some(line) = line.filter(|_| fits) else {
            self.dropped = self.dropped.saturating_add(bytes.len() as u64);
            let due = self
                .dropped_written
                .is_none_or(|last| last.elapsed() >= DROPPED_EVERY);
            if due {
                self.write_dropped()?;
            }
            return Ok(());
        };
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Records how many bytes were dropped, for `podvm logs`.
    fn write_dropped(&mut self) -> io::Result<()> {
        self.dropped_written = Some(std::time::Instant::now());
        let record = format!("{} {}\n", self.dropped, self.max);
        crate::private::write_atomic(&self.dropped_path, record.as_bytes())
    }
}

/// Where the first record of `pending` ends: after a newline, or at the size limit.
fn line_end(pending: &[u8]) -> Option<usize> {
    match pending.iter().position(|&b| b == b'\n') {
        Some(newline) if newline < MAX_RECORD => Some(newline + 1),
        _ if pending.len() >= MAX_RECORD => Some(MAX_RECORD),
        _ => None,
    }
}

/// Passes output through to podvm's own stream and records it in the app's log.
pub struct TeeWriter {
    log: AppLog,
    stream: LogStream,
    through: Box<dyn Write + Send>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The log is kept even when podvm's own stream is gone (e.g. a closed pipe).
        self.log.record(self.stream, buf)?;
        let _ = self.through.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.through.flush();
        Ok(())
    }
}

/// Reads records from `reader` (from its current position) and passes their bytes to `emit`;
/// stops at the end of the data, leaving an unfinished last line for the next call.
pub fn replay(
    reader: &mut io::BufReader<File>,
    emit: &mut impl FnMut(&LogRecord) -> io::Result<()>,
) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            // A record being written right now: rewind so the next call reads it whole.
            let back = i64::try_from(read).unwrap_or(i64::MAX);
            reader.seek_relative(-back)?;
            return Ok(());
        }
        match serde_json::from_str::<LogRecord>(&line) {
            Ok(record) => emit(&record)?,
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_all(path: &Path) -> Vec<(LogStream, Vec<u8>)> {
        let mut reader = io::BufReader::new(File::open(path).expect("log"));
        let mut seen = Vec::new();
        replay(&mut reader, &mut |record| {
            seen.push((record.stream, record.bytes()));
            Ok(())
        })
        .expect("replay");
        seen
    }

    #[test]
    fn streams_stay_apart_in_order_and_bytes_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), "app");
        let log = AppLog::create(&file, DEFAULT_MAX).expect("create");
        let mut out = log.tee(LogStream::Stdout, Box::new(io::sink()));
        let mut err = log.tee(LogStream::Stderr, Box::new(io::sink()));
        out.write_all(b"hel").expect("write");
        err.write_all(b"oops\n").expect("write");
        out.write_all(b"lo\nbin\xff\xfe").expect("write");
        log.finish().expect("finish");
        assert_eq!(
            replay_all(&file),
            vec![
                (LogStream::Stderr, b"oops\n".to_vec()),
                (LogStream::Stdout, b"hello\n".to_vec()),
                (LogStream::Stdout, b"bin\xff\xfe".to_vec()),
            ]
        );
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_counted() {
        // Attack: an app writes without end to fill the host's disk through its log.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), "app");
        let max = 64 * 1024;
        let log = AppLog::create(&file, max).expect("create");
        let mut out = log.tee(LogStream::Stdout, Box::new(io::sink()));
        let line = [b'y'; 99];
        let mut total = 0u64;
        for _ in 0..10_000 {
            out.write_all(&line).expect("write");
            out.write_all(b"\n").expect("write");
            total += 100;
        }
        log.finish().expect("finish");
        let size = std::fs::metadata(&file).expect("log").len();
        assert!(size <= max, "the log stays at its cap: {size}");
        assert!(size > max - 1024, "and is filled up to it: {size}");
        let kept: u64 = replay_all(&file)
            .iter()
            .map(|(_, bytes)| bytes.len() as u64)
            .sum();
        assert_eq!(
            dropped(&file),
            (total - kept, max),
            "every byte not kept is counted"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).expect("log").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_log_under_its_cap_drops_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), "app");
        let log = AppLog::create(&file, DEFAULT_MAX).expect("create");
        log.tee(LogStream::Stderr, Box::new(io::sink()))
            .write_all(b"fine\n")
            .expect("write");
        log.finish().expect("finish");
        assert_eq!(dropped(&file).0, 0);
        assert!(!dropped_path(&file).exists());
    }

    #[test]
    fn long_lines_are_cut_and_a_half_written_record_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), "app");
        let log = AppLog::create(&file, DEFAULT_MAX).expect("create");
        let long = vec![b'x'; MAX_RECORD * 2 + 5];
        log.tee(LogStream::Stdout, Box::new(io::sink()))
            .write_all(&long)
            .expect("write");
        log.finish().expect("finish");
        let pieces = replay_all(&file);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces.iter().map(|(_, b)| b.len()).sum::<usize>(),
            long.len()
        );

        std::fs::write(
            &file,
            b"{\"time\":\"1.0\",\"stream\":\"stdout\",\"log\":\"a\\n\"}\n{\"ti",
        )
        .expect("write");
        let mut reader = io::BufReader::new(File::open(&file).expect("log"));
        let mut seen = 0;
        replay(&mut reader, &mut |_| {
            seen += 1;
            Ok(())
        })
        .expect("replay");
        assert_eq!(seen, 1, "the unfinished record is left for later");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).expect("rest");
        assert_eq!(rest, "{\"ti");
    }
}
