//! The control protocol's frames and messages; the wire format is documented in [`super`].

use std::io::{self, Read, Write};

use podvm_protocol::ExecRequest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The two magic bytes that open every control frame.
pub const MAGIC: [u8; 2] = *b"PC";
/// The control protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest JSON payload of a frame (256 KiB): an exec request with a large environment fits.
pub const MAX_FRAME: usize = 256 << 10;
/// Header kind of a frame from a client.
const KIND_REQUEST: u8 = 1;
/// Header kind of a frame from the server.
const KIND_RESPONSE: u8 = 2;

/// Errors while reading or writing control frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The transport failed (or a read timed out).
    #[error("control connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a whole frame came.
    #[error("the peer closed the control connection")]
    Closed,
    /// The frame did not start with the magic bytes.
    #[error("bad control frame magic {0:02x?}: the peer does not speak podvm's control protocol")]
    BadMagic([u8; 2]),
    /// The peer speaks another version.
    #[error("unsupported control protocol version {0} (this podvm speaks {VERSION}); use the podvm that runs the pod")]
    BadVersion(u8),
    /// A request where a response was expected, or the other way round, or an unknown kind.
    #[error("unexpected control frame kind {got} (expected {expected})")]
    WrongKind {
        /// The kind this side expected.
        expected: u8,
        /// The kind that came.
        got: u8,
    },
    /// The payload length exceeds [`MAX_FRAME`].
    #[error("control frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    Oversized(usize),
    /// The payload is not the JSON of a message.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    /// A well-formed answer that does not answer the request.
    #[error("the supervisor answered {got} to a {request} request")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back.
        got: &'static str,
    },
}

/// What a client asks of a VM's supervisor: one request per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The VM's live state ([`Response::Status`]).
    Status,
    /// Stop the VM gracefully, as SIGTERM to the supervisor does ([`Response::Stopping`]).
    Stop,
    /// Run a command in the VM through the agent's exec service ([`Response::Session`]). The
    /// request's `token` is ignored: the supervisor puts in the VM's, which never leaves it.
    Exec(ExecRequest),
    /// Attach to the app ([`Response::Session`]): its output from now on, then its exit.
    Attach,
}

/// A supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The VM's live state.
    Status(LiveStatus),
    /// The stop began: the app got SIGTERM and is stopped hard after `timeout_ms`.
    Stopping {
        /// The stop timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The exec or attach session is open: from here the connection carries agent protocol
    /// frames (as an exec session does) until `Exited` and EOF.
    Session,
    /// The request failed or was refused; `message` says why.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// A VM's live state, as its supervisor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// Where the VM is in its life.
    pub state: LiveState,
    /// The supervisor's pid (the process serving the socket and holding the pod's lock).
    pub pid: u32,
    /// The pid of the VMM process (the supervisor's own until the VMM process runs).
    pub vmm_pid: u32,
    /// Seconds the VM has been running (0 before it started).
    pub uptime_secs: u64,
    /// Bytes the guest read from its virtio-fs shares so far (0 from older supervisors).
    #[serde(default)]
    pub share_read_bytes: u64,
    /// Bytes the guest wrote to its virtio-fs shares so far (0 from older supervisors).
    #[serde(default)]
    pub share_written_bytes: u64,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    /// The supervisor is up, the VM or its agent not yet.
    Starting,
    /// The VM runs and its agent is up.
    Running,
    /// A stop was asked for; the app has until the stop timeout.
    Stopping,
}

impl Request {
    /// The request's type, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stop => "stop",
            Request::Exec(_) => "exec",
            Request::Attach => "attach",
        }
    }
}

impl Response {
    /// The response's type, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Status(_) => "status",
            Response::Stopping { .. } => "stopping",
            Response::Session => "session",
            Response::Error { .. } => "error",
        }
    }
}

/// Writes `request` as one frame.
pub fn write_request(out: &mut impl Write, request: &Request) -> Result<(), ProtoError> {
    write_frame(out, KIND_REQUEST, request)
}

/// Reads one request frame.
pub fn read_request(input: &mut impl Read) -> Result<Request, ProtoError> {
    read_frame(input, KIND_REQUEST)
}

/// Writes `response` as one frame.
pub fn write_response(out: &mut impl Write, response: &Response) -> Result<(), ProtoError> {
    write_frame(out, KIND_RESPONSE, response)
}

/// Reads one response frame.
pub fn read_response(input: &mut impl Read) -> Result<Response, ProtoError> {
    read_frame(input, KIND_RESPONSE)
}

/// The frame of `message` with header kind `kind`.
fn encode(kind: u8, message: &impl Serialize) -> Result<Vec<u8>, ProtoError> {
    let payload = serde_json::to_vec(message)?;
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::Oversized(payload.len()));
    }
    let len = u32::try_from(payload.len()).expect("MAX_FRAME fits in u32");
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(kind);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn write_frame(out: &mut impl Write, kind: u8, message: &impl Serialize) -> Result<(), ProtoError> {
    out.write_all(&encode(kind, message)?)?;
    out.flush()?;
    Ok(())
}

/// Reads a frame of kind `kind`; the header is checked before any payload is read, so an
/// oversized or foreign frame costs eight bytes.
fn read_frame<T: DeserializeOwned>(input: &mut impl Read, kind: u8) -> Result<T, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(err) => return Err(err.into()),
    }
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(ProtoError::BadVersion(header[2]));
    }
    if header[3] != kind {
        return Err(ProtoError::WrongKind {
            expected: kind,
            got: header[3],
        });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(ProtoError::Oversized(len));
    }
    let mut payload = vec![0u8; len];
    match input.read_exact(&mut payload) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(err) => return Err(err.into()),
    }
    Ok(serde_json::from_slice(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(request: &Request) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_request(&mut bytes, request).expect("encode");
        bytes
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let exec = Request::Exec(ExecRequest {
            command: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            env: vec!["A=b".into()],
            tty: true,
            app: Some("web".into()),
            ..ExecRequest::default()
        });
        for request in [Request::Status, Request::Stop, exec, Request::Attach] {
            let bytes = frame_of(&request);
            assert_eq!(&bytes[..4], b"PC\x01\x01");
            assert_eq!(
                read_request(&mut bytes.as_slice()).expect("decode"),
                request
            );
        }
        for response in [
            Response::Status(LiveStatus {
                state: LiveState::Running,
                pid: 42,
                vmm_pid: 42,
                uptime_secs: 7,
                share_read_bytes: 5,
                share_written_bytes: 6,
            }),
            Response::Stopping { timeout_ms: 10_000 },
            Response::Session,
            Response::Error {
                message: "no".into(),
            },
        ] {
            let mut bytes = Vec::new();
            write_response(&mut bytes, &response).expect("encode");
            assert_eq!(
                read_response(&mut bytes.as_slice()).expect("decode"),
                response
            );
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut header = b"PC\x01\x01".to_vec();
        header.extend_from_slice(&u32::try_from(MAX_FRAME + 1).expect("u32").to_le_bytes());
        // No payload follows: the length alone must refuse the frame.
        let err = read_request(&mut header.as_slice()).expect_err("oversized");
        assert!(
            matches!(err, ProtoError::Oversized(n) if n == MAX_FRAME + 1),
            "{err}"
        );
        let huge = Request::Exec(ExecRequest {
            env: vec!["X".repeat(MAX_FRAME)],
            ..ExecRequest::default()
        });
        let err = write_request(&mut Vec::new(), &huge).expect_err("too big to send");
        assert!(matches!(err, ProtoError::Oversized(_)), "{err}");
    }

    #[test]
    fn an_unknown_version_kind_or_magic_is_refused() {
        let mut bytes = frame_of(&Request::Status);
        bytes[2] = VERSION + 1;
        let err = read_request(&mut bytes.as_slice()).expect_err("version");
        assert!(matches!(err, ProtoError::BadVersion(2)), "{err}");
        assert!(err.to_string().contains("version 2"), "{err}");

        let bytes = frame_of(&Request::Status);
        let err = read_response(&mut bytes.as_slice()).expect_err("a request is no response");
        assert!(matches!(err, ProtoError::WrongKind { .. }), "{err}");

        let mut bytes = frame_of(&Request::Status);
        bytes[0] = b'X';
        let err = read_request(&mut bytes.as_slice()).expect_err("magic");
        assert!(matches!(err, ProtoError::BadMagic(_)), "{err}");
    }

    #[test]
    fn truncated_frames_and_unknown_requests_are_errors() {
        let bytes = frame_of(&Request::Stop);
        for cut in [0, 3, HEADER_LEN, bytes.len() - 1] {
            let err = read_request(&mut &bytes[..cut]).expect_err("truncated");
            assert!(matches!(err, ProtoError::Closed), "{cut}: {err}");
        }
        let payload = br#"{"type":"format_disk"}"#;
        let mut bytes = b"PC\x01\x01".to_vec();
        bytes.extend_from_slice(&u32::try_from(payload.len()).expect("u32").to_le_bytes());
        bytes.extend_from_slice(payload);
        let err = read_request(&mut bytes.as_slice()).expect_err("unknown request");
        assert!(matches!(err, ProtoError::Json(_)), "{err}");
    }
}
