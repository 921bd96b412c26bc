//! The control socket's server and client together, with a fake VM behind the server: access
//! (modes, peer credentials as another user), the bounds, and exec session relaying.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podvm_protocol::{Control, ExecRequest, ExitStatus, FrameDecoder, Message, Stream};

use super::attach::{ClientQueue, OutputHub};
use super::proto::{self, LiveState, LiveStatus, Response};
use super::server::{ControlServer, Handler, Limits};
use super::{client, ControlError};

/// Set in the child that [`an_unprivileged_peer_is_refused_and_root_still_served`] runs as
/// another user: the socket to try.
const CHILD_SOCKET_ENV: &str = "PODVM_TEST_CONTROL_SOCKET";

/// A VM that answers as a running one; its exec sessions go to `agent`, its attached
/// clients get `hub`'s output and their input is kept in `input`.
#[derive(Default)]
struct FakeVm {
    stops: AtomicUsize,
    agent: Mutex<Option<File>>,
    hub: OutputHub,
    input: Mutex<Vec<Message>>,
}

impl Handler for FakeVm {
    fn status(&self) -> Result<LiveStatus, String> {
        Ok(LiveStatus {
            state: LiveState::Running,
            pid: 4242,
            vmm_pid: 4243,
            uptime_secs: 9,
            share_read_bytes: 0,
            share_written_bytes: 0,
        })
    }

    fn stop(&self) -> Result<Duration, String> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(Duration::from_secs(3))
    }

    fn exec(&self, _request: ExecRequest) -> Result<File, String> {
        let agent = self.agent.lock().expect("lock").take();
        agent.ok_or_else(|| "no agent in this fake".to_string())
    }

    fn attach(&self) -> Result<Arc<ClientQueue>, String> {
        self.hub.subscribe().ok_or_else(|| "ended".to_string())
    }

    fn attach_input(&self, message: Message) -> Result<(), String> {
        self.input.lock().expect("lock").push(message);
        Ok(())
    }
}

fn serve(dir: &Path, limits: Limits) -> (ControlServer, Arc<FakeVm>, PathBuf) {
    let vm = Arc::new(FakeVm::default());
    let path = dir.join("control.sock");
    let server = ControlServer::bind_with(&path, vm.clone(), limits).expect("bind");
    (server, vm, path)
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn root_is_served_status_and_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, vm, path) = serve(tmp.path(), Limits::default());
    let status = client::status(&path).expect("status");
    assert_eq!(
        (status.pid, status.vmm_pid, status.uptime_secs),
        (4242, 4243, 9)
    );
    assert_eq!(client::stop(&path).expect("stop"), Duration::from_secs(3));
    assert_eq!(vm.stops.load(Ordering::SeqCst), 1);
}

#[test]
fn the_socket_is_private_replaces_a_dead_one_and_goes_with_the_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("control.sock");
    // A dead VM's socket: bound, then its server gone.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    let (server, _vm, path) = serve(tmp.path(), Limits::default());
    let meta = std::fs::symlink_metadata(&path).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["control.sock"], "no private bind dir left");
    let again = ControlServer::bind_with(&path, Arc::new(FakeVm::default()), Limits::default());
    assert!(
        matches!(again, Err(ControlError::InUse { .. })),
        "{again:?}"
    );
    drop(server);
    assert!(!path.exists(), "removed with the server");
    let err = client::status(&path).expect_err("gone");
    assert!(err.is_unreachable(), "{err}");

    let file = tmp.path().join("plain");
    std::fs::write(&file, b"keep").expect("file");
    let refused = ControlServer::bind_with(&file, Arc::new(FakeVm::default()), Limits::default());
    assert!(
        matches!(refused, Err(ControlError::NotASocket { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"keep");
}

#[test]
fn a_long_directory_path_is_no_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let deep = tmp.path().join("p".repeat(120));
    std::fs::create_dir(&deep).expect("mkdir");
    let (_server, _vm, path) = serve(&deep, Limits::default());
    assert!(path.as_os_str().len() > 108, "longer than sun_path");
    assert_eq!(client::status(&path).expect("status").pid, 4242);
}

/// Attack: another user connects to the socket (here its directory and mode are opened up,
/// so that only the peer credential check stands) and asks for the VM's status. It is
/// refused with a message, the refusal is logged, and the server keeps serving root.
#[test]
fn an_unprivileged_peer_is_refused_and_root_still_served() {
    if !running_as_root() {
        eprintln!("skipping: needs root (the client runs as uid 65534 through setpriv)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, _vm, path) = serve(tmp.path(), Limits::default());
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .args([
            "control::tests::unprivileged_client",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET_ENV, &path)
        .output();
    let child = match child {
        Ok(child) => child,
        Err(err) => {
            eprintln!("skipping: cannot run setpriv (util-linux): {err}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&child.stdout);
    // The test harness prints its own words on the same line.
    let outcome = stdout
        .split_once("control-outcome: ")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("no outcome from the child: {child:?}"));
    assert!(
        outcome.starts_with("refused: ") && outcome.contains("permission denied: uid 65534"),
        "{outcome}"
    );
    assert!(outcome.contains("only root may use it"), "{outcome}");
    assert_eq!(client::status(&path).expect("root still served").pid, 4242);
}

/// The other user's side of [`an_unprivileged_peer_is_refused_and_root_still_served`]; does
/// nothing in a normal test run.
#[test]
fn unprivileged_client() {
    let Some(path) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    let outcome = match client::status(Path::new(&path)) {
        Ok(status) => format!("served: {status:?}"),
        Err(ControlError::Refused { message }) => format!("refused: {message}"),
        Err(err) => format!("failed: {err}"),
    };
    println!("control-outcome: {outcome}");
}

/// Sends raw bytes as a client and returns the server's answer.
fn raw_exchange(path: &Path, bytes: &[u8]) -> Response {
    let mut conn = UnixStream::connect(path).expect("connect");
    conn.write_all(bytes).expect("send");
    proto::read_response(&mut conn).expect("an answer")
}

#[test]
fn oversized_foreign_and_slow_requests_get_an_error_and_the_server_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_server, _vm, path) = serve(tmp.path(), limits);
    let mut oversized = b"PC\x01\x01".to_vec();
    oversized.extend_from_slice(&(64u32 << 20).to_le_bytes());
    let answer = raw_exchange(&path, &oversized);
    assert!(
        matches!(&answer, Response::Error { message } if message.contains("exceeds")),
        "{answer:?}"
    );
    let answer = raw_exchange(&path, b"PC\x09\x01\0\0\0\0");
    assert!(
        matches!(&answer, Response::Error { message } if message.contains("version 9")),
        "{answer:?}"
    );
    // Half a header, then nothing: the time limit ends it.
    let answer = raw_exchange(&path, b"PC\x01");
    assert!(
        matches!(&answer, Response::Error { message } if message.contains("no whole request")),
        "{answer:?}"
    );
    assert_eq!(client::status(&path).expect("still served").pid, 4242);
}

#[test]
fn connections_beyond_the_limit_are_turned_away_until_one_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_connections: 2,
        request_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (_server, _vm, path) = serve(tmp.path(), limits);
    let idle: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    // Let the server register both before the third comes.
    std::thread::sleep(Duration::from_millis(200));
    let err = client::status(&path).expect_err("busy");
    assert!(
        matches!(&err, ControlError::Refused { message } if message.contains("busy")),
        "{err}"
    );
    drop(idle);
    let mut served = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(status) = client::status(&path) {
            served = Some(status);
            break;
        }
    }
    assert!(
        served.is_some(),
        "served again once the idle connections closed"
    );
}

/// A fake agent on the other end of an exec session: records the frames it gets until EOF,
/// and answers with output and an exit.
fn fake_agent(agent: UnixStream) -> std::thread::JoinHandle<Vec<Message>> {
    std::thread::spawn(move || {
        let mut agent = agent;
        for message in [
            Message::Control(Control::Ready {
                agent_version: "fake".into(),
            }),
            Message::Data(Stream::Stdout, b"hello\n".to_vec()),
        ] {
            message.write_to(&mut agent).expect("agent writes");
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = agent.read(&mut buffer).expect("agent reads");
            if n == 0 {
                break;
            }
            decoder.push(&buffer[..n]);
            while let Some(message) = decoder.next_message().expect("frames") {
                let answer = matches!(message, Message::Control(Control::StdinClose));
                got.push(message);
                if answer {
                    Message::Control(Control::Exited {
                        status: ExitStatus::Code(3),
                        oom_kills: 0,
                    })
                    .write_to(&mut agent)
                    .expect("exit");
                    // As the agent does: its last frame, then EOF.
                    agent.shutdown(std::net::Shutdown::Write).expect("shutdown");
                }
            }
        }
        got
    })
}

/// Reads frames from `conn` until EOF.
fn frames_until_eof(mut conn: &File) -> Vec<Message> {
    let mut decoder = FrameDecoder::new();
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).expect("read");
    decoder.push(&bytes);
    let mut frames = Vec::new();
    while let Some(message) = decoder.next_message().expect("frames") {
        frames.push(message);
    }
    frames
}

#[test]
fn an_exec_session_is_relayed_and_only_client_frames_reach_the_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, vm, path) = serve(tmp.path(), Limits::default());
    let (supervisor_end, agent_end) = UnixStream::pair().expect("pair");
    *vm.agent.lock().expect("lock") = Some(File::from(OwnedFd::from(supervisor_end)));
    let agent = fake_agent(agent_end);
    let mut session = client::open_exec(&path, ExecRequest::default()).expect("session");
    for message in [
        Message::Data(Stream::Stdin, b"typed".to_vec()),
        Message::Control(Control::Resize {
            rows: 30,
            cols: 100,
        }),
        Message::Control(Control::StdinClose),
    ] {
        message.write_to(&mut session).expect("client writes");
    }
    let from_agent = frames_until_eof(&session);
    assert_eq!(from_agent.len(), 3, "{from_agent:?}");
    assert_eq!(
        from_agent[1],
        Message::Data(Stream::Stdout, b"hello\n".to_vec())
    );
    assert_eq!(
        from_agent[2],
        Message::Control(Control::Exited {
            status: ExitStatus::Code(3),
            oom_kills: 0,
        })
    );
    drop(session);
    let got = agent.join().expect("agent");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Message::Data(Stream::Stdin, b"typed".to_vec()));

    // Attack: a client tries to power the VM off through its exec session.
    let (supervisor_end, agent_end) = UnixStream::pair().expect("pair");
    *vm.agent.lock().expect("lock") = Some(File::from(OwnedFd::from(supervisor_end)));
    let agent = fake_agent(agent_end);
    let mut session = client::open_exec(&path, ExecRequest::default()).expect("session");
    Message::Control(Control::Shutdown { grace_ms: 0 })
        .write_to(&mut session)
        .expect("client writes");
    Message::Data(Stream::Stdin, b"after".to_vec())
        .write_to(&mut session)
        .expect("client writes");
    let got = agent.join().expect("agent ends: the session was closed");
    assert!(got.is_empty(), "nothing reached the agent: {got:?}");
}

#[test]
fn a_refused_exec_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, _vm, path) = serve(tmp.path(), Limits::default());
    let err = client::open_exec(&path, ExecRequest::default()).expect_err("no agent");
    assert!(
        matches!(&err, ControlError::Refused { message } if message.contains("no agent")),
        "{err}"
    );
}

#[test]
fn tokens_are_fresh_hex() {
    let (a, b) = (
        super::new_token().expect("token"),
        super::new_token().expect("token"),
    );
    assert_eq!(a.len(), 2 * super::TOKEN_BYTES);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn a_held_dir_reaches_its_entries_by_a_short_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let deep = tmp.path().join("d".repeat(200));
    std::fs::create_dir(&deep).expect("mkdir");
    std::fs::write(deep.join("f"), b"x").expect("write");
    let (dir, name) = super::HeldDir::of(&deep.join("f")).expect("open");
    let short = dir.entry(&name);
    assert!(short.as_os_str().len() < 40, "{}", short.display());
    assert_eq!(std::fs::read(&short).expect("read"), b"x");
}

#[test]
fn an_attached_client_gets_the_output_then_the_exit_and_its_input_reaches_the_vm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, vm, path) = serve(tmp.path(), Limits::default());
    let mut session = client::open_attach(&path).expect("attach");
    for message in [
        Message::Data(Stream::Stdin, b"typed".to_vec()),
        Message::Control(Control::Signal { signo: 2 }),
        Message::Control(Control::StdinClose),
    ] {
        message.write_to(&mut session).expect("client writes");
    }
    for _ in 0..100 {
        if vm.input.lock().expect("lock").len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        vm.input.lock().expect("lock")[1],
        Message::Control(Control::Signal { signo: 2 })
    );
    vm.hub.publish(Stream::Stdout, b"out");
    vm.hub.publish(Stream::Stderr, b"err");
    vm.hub.end(Some(ExitStatus::Code(7)));
    let frames = frames_until_eof(&session);
    assert_eq!(
        frames,
        [
            Message::Data(Stream::Stdout, b"out".to_vec()),
            Message::Data(Stream::Stderr, b"err".to_vec()),
            Message::Control(Control::Exited {
                status: ExitStatus::Code(7),
                oom_kills: 0,
            }),
        ]
    );
    let err = client::open_attach(&path).expect_err("nothing to attach to");
    assert!(
        matches!(&err, ControlError::Refused { message } if message.contains("ended")),
        "{err}"
    );
}

#[test]
fn an_attached_client_that_sends_output_frames_is_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, vm, path) = serve(tmp.path(), Limits::default());
    let mut session = client::open_attach(&path).expect("attach");
    Message::Data(Stream::Stdout, b"forged".to_vec())
        .write_to(&mut session)
        .expect("client writes");
    assert!(frames_until_eof(&session).is_empty(), "the session ended");
    assert!(vm.input.lock().expect("lock").is_empty());
}
