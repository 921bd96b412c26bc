//! The task's output: the FIFOs containerd's client made (`ctr`, CRI) for stdout and stderr,
//! opened when the task is created and handed to the runtime as its [`podvm::runtime::Io`]
//! sinks. A reader that went away (a `ctr run -d` that exited) does not stop the container:
//! from then on its output is dropped. The container's stdin is not forwarded yet: it reads
//! end-of-file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Errors opening an output.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The path is a URI scheme the shim does not take.
    #[error("{stream} {path:?}: log URIs (binary://, file://) are not supported yet")]
    Uri {
        /// stdout or stderr.
        stream: &'static str,
        /// What containerd passed.
        path: String,
    },
    /// The FIFO could not be opened.
    #[error("{stream} {path:?}: {source}")]
    Open {
        /// stdout or stderr.
        stream: &'static str,
        /// The FIFO.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// A FIFO written until its reader goes away, then silent.
#[derive(Debug)]
pub struct FifoSink {
    file: Option<File>,
    stream: &'static str,
}

impl Write for FifoSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Ok(buf.len());
        };
        match file.write_all(buf) {
            Ok(()) => Ok(buf.len()),
            Err(err) => {
                log::warn!(
                    "{}: the reader went away ({err}); output dropped",
                    self.stream
                );
                self.file = None;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the FIFO `path` for `stream` (stdout or stderr) for writing; an empty path, or a FIFO
/// with no reader now, gives a sink that drops what it is given.
pub fn open_output(stream: &'static str, path: &str) -> Result<FifoSink, StdioError> {
    if path.is_empty() {
        return Ok(FifoSink { file: None, stream });
    }
    refuse_uri(stream, path)?;
    let failed = |source| StdioError::Open {
        stream,
        path: path.to_string(),
        source,
    };
    // Non-blocking, so that a FIFO nobody reads fails (ENXIO) instead of hanging Create.
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
            log::warn!("{stream} {path}: no reader; output dropped");
            return Ok(FifoSink { file: None, stream });
        }
        Err(err) => return Err(failed(err)),
    };
    let meta = file.metadata().map_err(failed)?;
    if !meta.file_type().is_fifo() {
        return Err(failed(io::Error::other("not a FIFO")));
    }
    // Blocking writes from now on: a slow reader slows the container's output down.
    fcntl(file.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| failed(e.into()))?;
    Ok(FifoSink {
        file: Some(file),
        stream,
    })
}

/// How long a read of stdin waits for data before it looks whether it should stop.
const STDIN_POLL_MS: i32 = 200;

/// A stdin FIFO read until its writer closes it, or until the process it feeds ended (its
/// `stop` flag): reads then give end-of-file.
#[derive(Debug)]
pub struct FifoSource {
    file: File,
    stop: Arc<AtomicBool>,
}

impl Read for FifoSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let mut pollfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes the one pollfd, valid for the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, STDIN_POLL_MS) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if ready == 0 {
                continue;
            }
            // A FIFO reports no hang-up before its first writer came (Linux), so a read here
            // that gives 0 is the writer's close.
            match self.file.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// Refuses a stdio `path` that is a URI (a logging binary or file URI): only FIFOs are served.
fn refuse_uri(stream: &'static str, path: &str) -> Result<(), StdioError> {
    match path.contains("://") {
        true => Err(StdioError::Uri {
            stream,
            path: path.to_string(),
        }),
        false => Ok(()),
    }
}

/// Opens the stdin FIFO `path` for reading (non-blocking: its writer may come later); an
/// empty path gives `None` (stdin closed at once). Reads stop once `stop` is set.
pub fn open_input(path: &str, stop: Arc<AtomicBool>) -> Result<Option<FifoSource>, StdioError> {
    if path.is_empty() {
        return Ok(None);
    }
    let stream = "stdin";
    refuse_uri(stream, path)?;
    let failed = |source| StdioError::Open {
        stream,
        path: path.to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.file_type().is_fifo() {
        return Err(failed(io::Error::other("not a FIFO")));
    }
    Ok(Some(FifoSource { file, stop }))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn fifo(dir: &std::path::Path) -> String {
        let path = dir.join("out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn output_reaches_the_reader_and_is_dropped_once_it_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("reader");
        let mut sink = open_output("stdout", &path).expect("open");
        sink.write_all(b"hi\n").expect("write");
        let mut got = [0u8; 3];
        reader.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hi\n");
        drop(reader);
        sink.write_all(b"more\n").expect("dropped, not failed");
        assert!(sink.file.is_none());
    }

    #[test]
    fn a_fifo_without_reader_or_an_empty_path_drops_output_and_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = open_output("stdout", &fifo(dir.path())).expect("no reader");
        sink.write_all(b"lost\n").expect("dropped");
        assert!(open_output("stderr", "").expect("empty").file.is_none());
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("write");
        let err = open_output("stdout", &file.to_string_lossy()).expect_err("a file");
        assert!(err.to_string().contains("not a FIFO"), "{err}");
        let err = open_output("stdout", "binary:///bin/logger").expect_err("uri");
        assert!(matches!(err, StdioError::Uri { .. }), "{err}");
    }

    #[test]
    fn stdin_waits_for_its_writer_reads_until_it_closes_and_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let mut source = open_input(&path, stop.clone())
            .expect("open")
            .expect("a path");
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .expect("writer");
            w.write_all(b"in").expect("write");
        });
        let mut got = Vec::new();
        source.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"in");
        writer.join().expect("join");
        let mut waiting = open_input(&path, stop.clone())
            .expect("open")
            .expect("a path");
        stop.store(true, Ordering::SeqCst);
        assert_eq!(waiting.read(&mut [0u8; 4]).expect("stopped"), 0);
        assert!(open_input("", stop).expect("empty").is_none());
    }
}
