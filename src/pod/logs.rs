//! Per-app logs on the host: `<pod dir>/logs/<app>.log`, one JSON record per line of output
//! (Docker's json-file shape), so `podvm logs` replays stdout and stderr apart and in order.
//!
//! ```text
//! {"time":"1763900000.123456789","stream":"stdout","log":"hello\n"}
//! {"time":"1763900000.2","stream":"stderr","log_b64":"//4K"}      bytes that are not UTF-8
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The directory of app logs inside a pod directory.
pub const LOGS_DIR: &str = "logs";
/// Longest record; longer lines are cut into several records.
const MAX_RECORD: usize = 16 * 1024;

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
}

impl AppLog {
    /// Creates (or appends to) the log file at `path`, making its directory.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(LogFile {
                file,
                partial: [Vec::new(), Vec::new()],
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
        let LogFile { file, partial } = &mut *log;
        let pending = &mut partial[stream as usize];
        pending.extend_from_slice(bytes);
        while let Some(end) = line_end(pending) {
            let rest = pending.split_off(end);
            write_record(file, stream, pending)?;
            *pending = rest;
        }
        Ok(())
    }

    /// Writes out unfinished lines (at the end of the run).
    pub fn finish(&self) -> io::Result<()> {
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let LogFile { file, partial } = &mut *log;
        for (pending, stream) in partial
            .iter_mut()
            .zip([LogStream::Stdout, LogStream::Stderr])
        {
            if !pending.is_empty() {
                write_record(file, stream, pending)?;
                pending.clear();
            }
        }
        file.flush()
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

fn write_record(file: &mut File, stream: LogStream, bytes: &[u8]) -> io::Result<()> {
    let mut line = serde_json::to_vec(&LogRecord::new(stream, bytes))?;
    line.push(b'\n');
    file.write_all(&line)
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
        let log = AppLog::create(&file).expect("create");
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
    fn long_lines_are_cut_and_a_half_written_record_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), "app");
        let log = AppLog::create(&file).expect("create");
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
