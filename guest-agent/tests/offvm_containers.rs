//! Runs the real agent binary off the VM as a sandbox (boot spec `sandbox`, sent as the first
//! frame on its stdin) and drives the container requests on its boot session: two containers
//! created at different times in directories of a share (`PODVM_AGENT_SHARES`), started (their
//! sessions connect to a Unix socket the test listens on, `PODVM_AGENT_APP_SOCKET`), exec'd
//! into (`PODVM_AGENT_EXEC_SOCKET`), one signalled, both waited for and removed; and the
//! refusals, each a typed `ContainerError` naming the container.
//!
//! The containers' processes run chrooted into their directories, so this needs root and a
//! static busybox (`busybox` in PATH) to put there; without them it says so and passes.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use podvm_protocol::{
    BootSpec, ContainerErrorKind, ContainerOp, ContainerRootfs, ContainerSpec, Control,
    ExecRequest, ExitStatus, FrameDecoder, Message, ProcessSpec, ShareSpec, Stream,
};

/// Generous bound that only catches a hung agent (no timing is asserted).
const HANG_LIMIT: Duration = Duration::from_secs(60);
const AGENT: &str = env!("CARGO_BIN_EXE_podvm-agent");
const TOKEN: &str = "s3cret";
/// The busybox applets the containers' commands use.
const APPLETS: [&str; 5] = ["sh", "cat", "echo", "sleep", "true"];

/// A static busybox to copy into the containers' roots, if this test can chroot at all.
fn busybox() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: running containers (chroot) needs root");
        return None;
    }
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("busybox"))
        .find(|candidate| candidate.is_file());
    let Some(found) = found else {
        eprintln!("skipping: no busybox in PATH to put into the containers' roots");
        return None;
    };
    let output = Command::new("file").arg("-L").arg(&found).output();
    let is_static = output.is_ok_and(|output| {
        let text = String::from_utf8_lossy(&output.stdout);
        text.contains("statically linked") || text.contains("static-pie")
    });
    if !is_static {
        eprintln!("skipping: {} is not statically linked", found.display());
        return None;
    }
    Some(found)
}

/// A container root in `share/name` with busybox, its applets and `/marker`.
fn make_root(share: &Path, name: &str, busybox: &Path) {
    let bin = share.join(name).join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet");
    }
    std::fs::write(share.join(name).join("marker"), format!("in-{name}\n")).expect("marker");
}

fn decode_in_thread(mut input: impl Read + Send + 'static) -> Receiver<Message> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match input.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.push(&buffer[..n]);
            while let Ok(Some(message)) = decoder.next_message() {
                if tx.send(message).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// What a container's session carried, by container id.
#[derive(Debug, Default, Clone)]
struct SessionRun {
    stdout: Vec<u8>,
    exit: Option<ExitStatus>,
    errors: Vec<String>,
}

/// Accepts the containers' sessions; each frame arrives as (container id, message).
fn serve_sessions(listener: UnixListener) -> Receiver<(String, Message)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let frames = decode_in_thread(stream);
                let name = match frames.recv_timeout(HANG_LIMIT) {
                    Ok(Message::Control(Control::App { name })) => name,
                    other => panic!("a container session must open with App, got {other:?}"),
                };
                // The session ends when the agent shuts its side; dropping `frames` (and the
                // stream in its thread) then closes ours, as the host does.
                while let Ok(message) = frames.recv_timeout(HANG_LIMIT) {
                    if tx.send((name.clone(), message)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

/// The agent as a sandbox, with its boot session and the containers' sessions.
struct Sandbox {
    child: Child,
    stdin: Option<ChildStdin>,
    boot: Receiver<Message>,
    sessions: Receiver<(String, Message)>,
    /// `ContainerExited` seen on the boot session, in order.
    exits: Vec<(String, ExitStatus)>,
    runs: BTreeMap<String, SessionRun>,
    share: PathBuf,
    exec_socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    fn start(busybox: &Path) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let shares = dir.path().join("shares");
        let share = shares.join("sandbox");
        for name in ["one", "two"] {
            make_root(&share, name, busybox);
        }
        std::fs::create_dir_all(dir.path().join("outside")).expect("outside");
        std::os::unix::fs::symlink("/", share.join("to-root")).expect("link");
        std::os::unix::fs::symlink("../../outside", share.join("to-outside")).expect("link");
        let app_socket = dir.path().join("sessions.sock");
        let exec_socket = dir.path().join("exec.sock");
        let sessions = serve_sessions(UnixListener::bind(&app_socket).expect("listen"));
        let mut child = Command::new(AGENT)
            .env_remove("PODVM_AGENT_SPEC")
            .env("PODVM_AGENT_APP_SOCKET", &app_socket)
            .env("PODVM_AGENT_EXEC_SOCKET", &exec_socket)
            .env("PODVM_AGENT_SHARES", &shares)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent");
        let boot = decode_in_thread(child.stdout.take().expect("piped"));
        let mut sandbox = Sandbox {
            stdin: child.stdin.take(),
            child,
            boot,
            sessions,
            exits: Vec::new(),
            runs: BTreeMap::new(),
            share,
            exec_socket,
            _dir: dir,
        };
        sandbox.send(Control::Boot(Box::new(BootSpec {
            sandbox: true,
            shares: vec![ShareSpec {
                tag: "sandbox".into(),
                read_only: false,
            }],
            exec_token: Some(TOKEN.into()),
            ..BootSpec::default()
        })));
        match sandbox.boot.recv_timeout(HANG_LIMIT) {
            Ok(Message::Control(Control::Ready { .. })) => {}
            other => panic!("the first frame must be Ready, got {other:?}"),
        }
        sandbox
    }

    fn send(&mut self, control: Control) {
        let stdin = self.stdin.as_mut().expect("boot session open");
        Message::Control(control)
            .write_to(stdin)
            .expect("send a frame");
    }

    /// The next boot-session frame that is not a `ContainerExited` (those are recorded).
    fn next_answer(&mut self) -> Control {
        loop {
            match self.boot.recv_timeout(HANG_LIMIT) {
                Ok(Message::Control(Control::ContainerExited { id, status })) => {
                    self.exits.push((id, status))
                }
                Ok(Message::Control(control)) => return control,
                other => panic!("unexpected on the boot session: {other:?}"),
            }
        }
    }

    /// Sends a container request and returns the agent's answer.
    fn request(&mut self, control: Control) -> Control {
        self.send(control);
        self.next_answer()
    }

    /// Sends a request that must succeed.
    fn ok(&mut self, control: Control, id: &str, op: ContainerOp) {
        let answer = self.request(control);
        assert_eq!(
            answer,
            Control::ContainerDone { id: id.into(), op },
            "{id} {op:?}"
        );
    }

    /// Sends a request that must fail with `kind`; returns the message.
    fn refused(&mut self, control: Control, id: &str, op: ContainerOp, kind: ContainerErrorKind) {
        match self.request(control) {
            Control::ContainerError {
                id: named,
                op: answered,
                kind: got,
                message,
            } => {
                assert_eq!((named.as_str(), answered, got), (id, op, kind), "{message}");
                assert!(message.contains(&format!("container {id}")) || message.contains(id));
            }
            other => panic!("{id} {op:?} must be refused with {kind:?}, got {other:?}"),
        }
    }

    /// Takes container session frames until `done` holds for what arrived.
    fn collect_sessions_until(&mut self, done: impl Fn(&BTreeMap<String, SessionRun>) -> bool) {
        let started = Instant::now();
        while !done(&self.runs) {
            assert!(
                started.elapsed() < HANG_LIMIT,
                "sessions so far: {:?}",
                self.runs
            );
            let Ok((name, message)) = self.sessions.recv_timeout(HANG_LIMIT) else {
                panic!("no more session frames: {:?}", self.runs);
            };
            let run = self.runs.entry(name).or_default();
            match message {
                Message::Data(Stream::Stdout, bytes) => run.stdout.extend(bytes),
                Message::Control(Control::Exited { status, .. }) => run.exit = Some(status),
                Message::Control(Control::Error { message }) => run.errors.push(message),
                _ => {}
            }
        }
    }

    /// Waits for `ContainerExited` of every container in `ids`.
    fn wait_exits(&mut self, ids: &[&str]) {
        while !ids
            .iter()
            .all(|id| self.exits.iter().any(|(exited, _)| exited == id))
        {
            match self.boot.recv_timeout(HANG_LIMIT) {
                Ok(Message::Control(Control::ContainerExited { id, status })) => {
                    self.exits.push((id, status))
                }
                other => panic!("expected only ContainerExited now, got {other:?}"),
            }
        }
    }

    fn exit_of(&self, id: &str) -> Option<ExitStatus> {
        self.exits
            .iter()
            .find(|(exited, _)| exited == id)
            .map(|(_, status)| *status)
    }

    /// Runs `command` in container `id` over an exec session; returns its stdout and exit.
    fn exec(&self, id: &str, command: &[&str]) -> (Vec<u8>, Option<ExitStatus>, Vec<String>) {
        let mut stream = UnixStream::connect(&self.exec_socket).expect("connect");
        let frames = decode_in_thread(stream.try_clone().expect("clone"));
        let request = ExecRequest {
            token: TOKEN.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            app: Some(id.into()),
            ..ExecRequest::default()
        };
        Message::Control(Control::Exec(request))
            .write_to(&mut stream)
            .expect("send");
        let _ = Message::Control(Control::StdinClose).write_to(&mut stream);
        let (mut stdout, mut exit, mut errors) = (Vec::new(), None, Vec::new());
        while let Ok(message) = frames.recv_timeout(HANG_LIMIT) {
            match message {
                Message::Data(Stream::Stdout, bytes) => stdout.extend(bytes),
                Message::Control(Control::Exited { status, .. }) => exit = Some(status),
                Message::Control(Control::Error { message }) => errors.push(message),
                _ => {}
            }
        }
        (stdout, exit, errors)
    }

    /// Shuts the sandbox down; the boot session must end with `Exited` code 0.
    fn shut_down(mut self) {
        self.send(Control::Shutdown { grace_ms: 500 });
        let mut last = None;
        while let Ok(message) = self.boot.recv_timeout(HANG_LIMIT) {
            last = Some(message);
        }
        assert_eq!(
            last,
            Some(Message::Control(Control::Exited {
                status: ExitStatus::Code(0),
                oom_kills: 0,
            }))
        );
        self.stdin = None;
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "the agent itself must not fail");
    }
}

fn container(id: &str, path: &str, script: &str) -> Control {
    Control::CreateContainer(Box::new(ContainerSpec {
        id: id.into(),
        rootfs: ContainerRootfs {
            share: "sandbox".into(),
            path: path.into(),
            read_only: false,
        },
        process: ProcessSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..ProcessSpec::default()
        },
    }))
}

#[test]
fn containers_come_and_go_in_a_running_sandbox() {
    let Some(busybox) = busybox() else { return };
    let mut sandbox = Sandbox::start(&busybox);
    let script_one = "cat /marker; trap 'echo got-term; exit 3' TERM; echo ready; \
                      while :; do sleep 0.1; done";
    sandbox.ok(
        container("one", "one", script_one),
        "one",
        ContainerOp::Create,
    );
    sandbox.ok(
        Control::StartContainer { id: "one".into() },
        "one",
        ContainerOp::Start,
    );
    sandbox.collect_sessions_until(|runs| {
        runs.get("one")
            .is_some_and(|run| String::from_utf8_lossy(&run.stdout).contains("ready"))
    });
    // A running container is neither started again nor removed.
    sandbox.refused(
        Control::StartContainer { id: "one".into() },
        "one",
        ContainerOp::Start,
        ContainerErrorKind::WrongState,
    );
    sandbox.refused(
        Control::RemoveContainer { id: "one".into() },
        "one",
        ContainerOp::Remove,
        ContainerErrorKind::WrongState,
    );

    // The second container comes later, while the first runs.
    let script_two = "cat /marker; sleep 0.3; exit 7";
    sandbox.ok(
        container("two", "two", script_two),
        "two",
        ContainerOp::Create,
    );
    sandbox.ok(
        Control::StartContainer { id: "two".into() },
        "two",
        ContainerOp::Start,
    );

    // Exec sessions run in each container's root.
    let (out, exit, errors) = sandbox.exec("one", &["cat", "/marker"]);
    assert_eq!(
        (out.as_slice(), exit),
        (&b"in-one\n"[..], Some(ExitStatus::Code(0))),
        "{errors:?}"
    );
    let (out, exit, errors) = sandbox.exec("two", &["sh", "-c", "cat /marker; exit 4"]);
    assert_eq!(
        (out.as_slice(), exit),
        (&b"in-two\n"[..], Some(ExitStatus::Code(4))),
        "{errors:?}"
    );
    let (out, exit, errors) = sandbox.exec("nope", &["true"]);
    assert!(out.is_empty() && exit.is_none(), "{out:?} {exit:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no app or container \"nope\"")),
        "{errors:?}"
    );

    sandbox.ok(
        Control::SignalContainer {
            id: "one".into(),
            signo: 15,
        },
        "one",
        ContainerOp::Signal,
    );
    sandbox.wait_exits(&["one", "two"]);
    assert_eq!(sandbox.exit_of("one"), Some(ExitStatus::Code(3)));
    assert_eq!(sandbox.exit_of("two"), Some(ExitStatus::Code(7)));
    sandbox.collect_sessions_until(|runs| {
        ["one", "two"]
            .iter()
            .all(|id| runs.get(*id).is_some_and(|run| run.exit.is_some()))
    });
    assert_eq!(sandbox.runs["one"].stdout, b"in-one\nready\ngot-term\n");
    assert_eq!(sandbox.runs["one"].exit, Some(ExitStatus::Code(3)));
    assert_eq!(sandbox.runs["two"].stdout, b"in-two\n");
    assert_eq!(sandbox.runs["two"].exit, Some(ExitStatus::Code(7)));

    // An ended container is not signalled; it is removed, and its id is free again.
    sandbox.refused(
        Control::SignalContainer {
            id: "two".into(),
            signo: 15,
        },
        "two",
        ContainerOp::Signal,
        ContainerErrorKind::WrongState,
    );
    for id in ["one", "two"] {
        sandbox.ok(
            Control::RemoveContainer { id: id.into() },
            id,
            ContainerOp::Remove,
        );
    }
    assert!(
        sandbox.share.join("one/marker").exists(),
        "the host's files stay"
    );
    sandbox.ok(container("one", "one", "true"), "one", ContainerOp::Create);
    sandbox.ok(
        Control::RemoveContainer { id: "one".into() },
        "one",
        ContainerOp::Remove,
    );
    sandbox.shut_down();
}

#[test]
fn bad_container_requests_are_refused_with_typed_errors() {
    let Some(busybox) = busybox() else { return };
    let mut sandbox = Sandbox::start(&busybox);
    let bad_ids = ["Bad_ID", "a/b", "..", "-x", ""];
    for id in bad_ids {
        sandbox.refused(
            container(id, "one", "true"),
            id,
            ContainerOp::Create,
            ContainerErrorKind::BadId,
        );
    }
    let long = "x".repeat(podvm_protocol::MAX_CONTAINER_ID + 1);
    sandbox.refused(
        container(&long, "one", "true"),
        &long,
        ContainerOp::Create,
        ContainerErrorKind::BadId,
    );
    for escaping in [
        "../../outside",
        "..",
        "one/../..",
        "/one",
        "/",
        "to-root",
        "to-root/etc",
        "to-outside",
        "one/marker",
        "missing",
    ] {
        sandbox.refused(
            container("esc", escaping, "true"),
            "esc",
            ContainerOp::Create,
            ContainerErrorKind::BadRootfs,
        );
    }
    let mut other_share = container("other", "one", "true");
    if let Control::CreateContainer(spec) = &mut other_share {
        spec.rootfs.share = "nope".into();
    }
    sandbox.refused(
        other_share,
        "other",
        ContainerOp::Create,
        ContainerErrorKind::BadRootfs,
    );
    let mut no_command = container("idle", "one", "true");
    if let Control::CreateContainer(spec) = &mut no_command {
        spec.process.command.clear();
    }
    sandbox.refused(
        no_command,
        "idle",
        ContainerOp::Create,
        ContainerErrorKind::BadProcess,
    );

    sandbox.ok(container("dup", "one", "true"), "dup", ContainerOp::Create);
    sandbox.refused(
        container("dup", "two", "true"),
        "dup",
        ContainerOp::Create,
        ContainerErrorKind::Exists,
    );
    for (control, id, op) in [
        (
            Control::StartContainer { id: "ghost".into() },
            "ghost",
            ContainerOp::Start,
        ),
        (
            Control::SignalContainer {
                id: "ghost".into(),
                signo: 15,
            },
            "ghost",
            ContainerOp::Signal,
        ),
        (
            Control::RemoveContainer { id: "ghost".into() },
            "ghost",
            ContainerOp::Remove,
        ),
    ] {
        sandbox.refused(control, id, op, ContainerErrorKind::NotFound);
    }
    sandbox.refused(
        Control::SignalContainer {
            id: "dup".into(),
            signo: 99,
        },
        "dup",
        ContainerOp::Signal,
        ContainerErrorKind::BadSignal,
    );
    sandbox.refused(
        Control::SignalContainer {
            id: "dup".into(),
            signo: 15,
        },
        "dup",
        ContainerOp::Signal,
        ContainerErrorKind::WrongState,
    );

    // A command that does not exist: the start is refused, and the container still ends.
    sandbox.ok(
        Control::CreateContainer(Box::new(ContainerSpec {
            id: "missing".into(),
            rootfs: ContainerRootfs {
                share: "sandbox".into(),
                path: "two".into(),
                read_only: false,
            },
            process: ProcessSpec {
                command: vec!["/no/such/program".into()],
                ..ProcessSpec::default()
            },
        })),
        "missing",
        ContainerOp::Create,
    );
    sandbox.refused(
        Control::StartContainer {
            id: "missing".into(),
        },
        "missing",
        ContainerOp::Start,
        ContainerErrorKind::BadProcess,
    );
    sandbox.wait_exits(&["missing"]);
    assert_eq!(sandbox.exit_of("missing"), Some(ExitStatus::Code(127)));

    // Bounded: at most MAX_CONTAINERS at a time.
    let room = podvm_protocol::MAX_CONTAINERS - 2;
    for n in 0..room {
        let id = format!("c{n}");
        sandbox.ok(container(&id, "one", "true"), &id, ContainerOp::Create);
    }
    sandbox.refused(
        container("full", "one", "true"),
        "full",
        ContainerOp::Create,
        ContainerErrorKind::TooMany,
    );
    sandbox.shut_down();
}
