//! Wire protocol between the podvm host and the guest agent (PID 1 in the VM).
//!
//! # Wire format (version 1)
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       2     magic, the bytes "PV"
//! 2       1     protocol version (currently 1)
//! 3       1     kind: 1 = stdout bytes, 2 = stderr bytes, 3 = stdin bytes,
//!               16 = control message (JSON of [`Control`])
//! 4       4     payload length, little endian, at most [`MAX_PAYLOAD`]
//! 8       n     payload
//! ```
//!
//! Stream data travels raw; everything else is a JSON-encoded [`Control`] value. A frame with a
//! bad magic, an unknown version or kind, an oversized length or a payload that does not decode
//! is an error, never a panic.
//!
//! # Transport: vsock, the agent connects to the host
//!
//! The host listens on AF_VSOCK (any local CID) on a port its kernel picks, so concurrent VMs
//! never clash, and passes that port on the guest kernel command line as
//! `podvm.agent_port=<port>` ([`AGENT_PORT_PARAM`]). The agent connects to the host, CID 2
//! ([`HOST_CID`]), on that port as soon as it has mounted /proc; the host accepts only a
//! connection from the VM's own CID. Frames then flow over the stream. To end, the agent sends
//! its last frame and shuts down its write side; the host reads to EOF and closes, which tells
//! the agent everything arrived and it may power off. (The host connecting to a fixed guest
//! port would need retries while the guest boots; this way nobody polls.)
//!
//! How the agent learns what to run: the host packs a [`BootSpec`] as JSON at [`BOOT_SPEC_PATH`]
//! into the initramfs.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"PV";
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Where the boot spec lives inside the initramfs.
pub const BOOT_SPEC_PATH: &str = "/podvm/boot.json";
/// Kernel command line parameter that tells the agent the host's vsock port,
/// e.g. `podvm.agent_port=1234` (see the transport section above).
pub const AGENT_PORT_PARAM: &str = "podvm.agent_port";
/// The vsock CID of the host as seen from the guest (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// Exit code reported when the requested command does not exist (as shells do).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code reported when the command exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;

/// Errors while encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error("agent channel I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The frame did not start with the magic bytes.
    #[error("bad frame magic {0:02x?}: the peer is not speaking the podvm protocol")]
    BadMagic([u8; 2]),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this side speaks {VERSION}); rebuild host and agent together")]
    BadVersion(u8),
    /// The kind byte names no message kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload length exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    Oversized(usize),
    /// A control payload was not valid JSON for [`Control`].
    #[error("malformed control message: {0}")]
    BadControl(#[from] serde_json::Error),
}

/// Which standard stream a chunk of bytes belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard input of the app (host to guest).
    Stdin,
    /// Standard output of the app.
    Stdout,
    /// Standard error of the app.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// What the agent runs at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` entries, on top of the agent's defaults.
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    pub workdir: Option<String>,
    /// Run the command chrooted into a virtio-fs share instead of the initramfs (absent in
    /// specs from older hosts).
    #[serde(default)]
    pub rootfs: Option<RootfsSpec>,
}

/// An app root filesystem shared by the host over virtio-fs. The agent mounts it at
/// `/opt/stage2/<app>/rootfs` (rkt's layout) with proc, sys, dev, /tmp inside, and chroots the
/// command into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The virtio-fs tag to mount.
    pub tag: String,
    /// Mount read-only (the host refuses writes too).
    #[serde(default)]
    pub read_only: bool,
    /// The app name in the mount path; "app" when empty.
    #[serde(default)]
    pub app: String,
    /// Hostname the app sees; the app name when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Contents of /etc/resolv.conf written into the rootfs (only when it has none).
    #[serde(default)]
    pub resolv_conf: Option<String>,
}

/// Control messages, carried as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The agent is up and about to start the workload.
    Ready {
        /// The agent's version string.
        agent_version: String,
    },
    /// The workload ended.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// The agent could not do what was asked; `message` says what and why.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Bytes of one of the app's standard streams.
    Data(Stream, Vec<u8>),
    /// A control message.
    Control(Control),
}

const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_STDIN: u8 = 3;
const KIND_CONTROL: u8 = 16;

impl Message {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let (kind, payload) = match self {
            Message::Data(stream, bytes) => (stream_kind(*stream), bytes.clone()),
            Message::Control(control) => (KIND_CONTROL, serde_json::to_vec(control)?),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(ProtocolError::Oversized(payload.len()));
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.push(VERSION);
        frame.push(kind);
        let len =
            u32::try_from(payload.len()).map_err(|_| ProtocolError::Oversized(payload.len()))?;
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    /// Writes the message as one frame.
    pub fn write_to(&self, out: &mut impl Write) -> Result<(), ProtocolError> {
        out.write_all(&self.encode()?)?;
        Ok(())
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream before a frame starts.
    pub fn read_from(input: &mut impl Read) -> Result<Option<Message>, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        if !read_exact_or_eof(input, &mut header)? {
            return Ok(None);
        }
        let (kind, len) = parse_header(&header)?;
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload)?;
        decode_payload(kind, payload).map(Some)
    }
}

/// Incremental decoder for byte streams that arrive in arbitrary chunks (e.g. a UART).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the decoder drops its buffer: the stream cannot be resynchronised.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buffer[..HEADER_LEN]);
        let (kind, len) = match parse_header(&header) {
            Ok(parsed) => parsed,
            Err(err) => {
                self.buffer.clear();
                return Err(err);
            }
        };
        if self.buffer.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buffer[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buffer.drain(..HEADER_LEN + len);
        decode_payload(kind, payload).map(Some)
    }

    /// Number of buffered bytes not yet decoded.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

fn stream_kind(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => KIND_STDOUT,
        Stream::Stderr => KIND_STDERR,
        Stream::Stdin => KIND_STDIN,
    }
}

fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(u8, usize), ProtocolError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(ProtocolError::BadVersion(header[2]));
    }
    let kind = header[3];
    if !matches!(kind, KIND_STDOUT | KIND_STDERR | KIND_STDIN | KIND_CONTROL) {
        return Err(ProtocolError::UnknownKind(kind));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::Oversized(len));
    }
    Ok((kind, len))
}

fn decode_payload(kind: u8, payload: Vec<u8>) -> Result<Message, ProtocolError> {
    Ok(match kind {
        KIND_STDOUT => Message::Data(Stream::Stdout, payload),
        KIND_STDERR => Message::Data(Stream::Stderr, payload),
        KIND_STDIN => Message::Data(Stream::Stdin, payload),
        KIND_CONTROL => Message::Control(serde_json::from_slice(&payload)?),
        other => return Err(ProtocolError::UnknownKind(other)),
    })
}

/// Fills `buf` completely; returns false if the stream ended before the first byte.
fn read_exact_or_eof(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(message: Message) {
        let frame = message.encode().expect("encode");
        let decoded = Message::read_from(&mut frame.as_slice()).expect("decode");
        assert_eq!(decoded, Some(message));
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Message::Data(Stream::Stdout, b"hello\n".to_vec()));
        roundtrip(Message::Data(Stream::Stderr, vec![0, 255, 10]));
        roundtrip(Message::Control(Control::Exited {
            status: ExitStatus::Signal(9),
        }));
        roundtrip(Message::Control(Control::Error {
            message: "nope".into(),
        }));
    }

    #[test]
    fn decoder_handles_split_input() {
        let mut bytes = Message::Data(Stream::Stdout, b"abc".to_vec())
            .encode()
            .expect("encode");
        bytes.extend(
            Message::Control(Control::Exited {
                status: ExitStatus::Code(7),
            })
            .encode()
            .expect("encode"),
        );
        let mut decoder = FrameDecoder::new();
        let mut seen = Vec::new();
        for byte in bytes {
            decoder.push(&[byte]);
            while let Some(message) = decoder.next_message().expect("valid") {
                seen.push(message);
            }
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"XX\x01\x01\0\0\0\0".to_vec(), "magic"),
            (b"PV\x09\x01\0\0\0\0".to_vec(), "version"),
            (b"PV\x01\x63\0\0\0\0".to_vec(), "kind"),
            (b"PV\x01\x01\xff\xff\xff\x7f".to_vec(), "exceeds"),
            (b"PV\x01\x10\x03\0\0\0{x}".to_vec(), "malformed"),
            (b"PV\x01\x10\x05\0\0\0{}".to_vec(), "I/O"),
        ];
        for (bytes, expected) in cases {
            let err = Message::read_from(&mut bytes.as_slice()).expect_err("must fail");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a pseudo-random byte soup.
        let mut state = 0x1234_5678_u32;
        let mut soup = Vec::new();
        for _ in 0..4096 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            soup.push((state & 0xff) as u8);
        }
        for start in 0..256 {
            let mut decoder = FrameDecoder::new();
            decoder.push(&soup[start..]);
            let _ = decoder.next_message();
            let _ = Message::read_from(&mut &soup[start..]);
        }
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
