//! The unix-stream backend: frames to and from a user-mode network stack (passt in its qemu
//! mode) over a connected UNIX stream socket, each frame prefixed with its length as a 4-byte
//! big-endian number and carrying no virtio-net header.
//!
//! [`StreamPort`] makes such a socket look like a tap to the userspace worker
//! (`userspace.rs`): a `read` yields one whole frame behind a zeroed virtio-net header (or
//! `WouldBlock`), a `write` takes a frame behind its header and sends it framed. The peer is
//! another process of the user: every length it sends is bounded by the device's frame buffer,
//! and a longer frame is skipped (read and discarded, so the stream stays in step), never
//! buffered or trusted.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use super::VNET_HDR_LEN;

/// Length of the big-endian frame length before each frame.
pub const LEN_PREFIX: usize = 4;
/// How long a frame the peer took in part may wait for room for the rest before the
/// connection counts as stuck (the stream cannot be resumed mid-frame).
const REST_TIMEOUT: Duration = Duration::from_secs(2);

/// Reassembles length-prefixed frames from a non-blocking byte stream, across reads that end
/// anywhere.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    prefix: [u8; LEN_PREFIX],
    prefix_len: usize,
    /// The current frame's announced length, once the prefix is complete.
    frame_len: Option<usize>,
    /// Bytes of the current frame read so far.
    have: usize,
    body: Vec<u8>,
    dropped: u64,
}

impl Decoder {
    /// A decoder that keeps frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            prefix: [0; LEN_PREFIX],
            prefix_len: 0,
            frame_len: None,
            have: 0,
            body: vec![0; max],
            dropped: 0,
        }
    }

    /// Frames skipped so far (longer than the maximum, or empty).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Reads from `src` until one whole frame is there and returns it, or returns the error
    /// that stopped the reading (`WouldBlock` when `src` has nothing more for now; the partial
    /// frame is kept for the next call). The end of the stream is `UnexpectedEof`.
    pub fn next_frame<R: Read>(&mut self, src: &mut R) -> std::io::Result<&[u8]> {
        loop {
            let Some(len) = self.frame_len else {
                let n = read_some(src, &mut self.prefix[self.prefix_len..])?;
                self.prefix_len += n;
                if self.prefix_len == LEN_PREFIX {
                    self.frame_len = Some(announced(self.prefix));
                    self.prefix_len = 0;
                }
                continue;
            };
            let keep = len > 0 && len <= self.max;
            if self.have < len {
                // A frame that is kept fills the body; one that is skipped cycles through it.
                let want = (len - self.have).min(self.max);
                let start = if keep { self.have } else { 0 };
                let n = read_some(src, &mut self.body[start..start + want])?;
                self.have += n;
                continue;
            }
            self.frame_len = None;
            self.have = 0;
            if keep {
                return Ok(&self.body[..len]);
            }
            self.dropped += 1;
        }
    }
}

/// The length a prefix announces (up to 4 GiB: the caller bounds it).
fn announced(prefix: [u8; LEN_PREFIX]) -> usize {
    usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX)
}

/// One read of at least a byte (interrupted reads retried); the end of the stream is an error.
fn read_some<R: Read>(src: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match src.read(buf) {
            Ok(0) if !buf.is_empty() => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the network peer (passt) closed the connection",
                ))
            }
            Ok(n) => return Ok(n),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// `frame` behind its length prefix, in `out` (cleared first).
pub fn encode(frame: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    out.clear();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

/// A connected, non-blocking stream socket to a user-mode network stack, seen as a tap by the
/// userspace worker (see the module docs).
pub struct StreamPort<S> {
    stream: S,
    decoder: Decoder,
    tx: Vec<u8>,
    /// Skipped frames already reported.
    reported: u64,
}

impl<S: Read + Write + AsFd> StreamPort<S> {
    /// Frames of at most `max_frame` bytes (without the virtio-net header) over `stream`,
    /// which must be non-blocking.
    pub fn new(stream: S, max_frame: usize) -> Self {
        Self {
            stream,
            decoder: Decoder::new(max_frame),
            tx: Vec::with_capacity(LEN_PREFIX + max_frame),
            reported: 0,
        }
    }

    /// Sends what is left of a frame the peer took in part, waiting for room up to
    /// [`REST_TIMEOUT`] each time.
    fn finish(&mut self, mut sent: usize) -> std::io::Result<()> {
        while sent < self.tx.len() {
            match self.stream.write(&self.tx[sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => self.wait_writable()?,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn wait_writable(&self) -> std::io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = PollTimeout::try_from(REST_TIMEOUT).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "the network peer (passt) took part of a frame and no more",
            )),
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }
}

impl<S: Read + Write + AsFd> Read for StreamPort<S> {
    /// One whole frame behind a zeroed virtio-net header, or `WouldBlock`.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Skips since the last call are reported (the first time only).
        let dropped = self.decoder.dropped();
        if dropped > 0 && self.reported == 0 {
            eprintln!(
                "podvm: virtio-net: skipped a frame from passt longer than the device's buffer \
                 (or empty); later ones are skipped silently"
            );
        }
        self.reported = dropped;
        let frame = self.decoder.next_frame(&mut self.stream)?;
        let total = VNET_HDR_LEN + frame.len();
        if buf.len() < total {
            // The caller's buffer is the device's: the decoder's bound is below it.
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "frame buffer smaller than the decoder's maximum",
            ));
        }
        buf[..VNET_HDR_LEN].fill(0);
        buf[VNET_HDR_LEN..total].copy_from_slice(frame);
        Ok(total)
    }
}

impl<S: Read + Write + AsFd> Write for StreamPort<S> {
    /// Sends `buf` (a frame behind its virtio-net header, which is dropped) whole, or nothing
    /// (`WouldBlock`: the socket is full, the frame is lost as on a wire).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let frame = buf.get(VNET_HDR_LEN..).unwrap_or_default();
        encode(frame, &mut self.tx)?;
        let sent = loop {
            match self.stream.write(&self.tx) {
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.finish(sent)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<S: AsRawFd> AsRawFd for StreamPort<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
