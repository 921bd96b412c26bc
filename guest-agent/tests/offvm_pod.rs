//! Runs the real agent binary off the VM with a boot spec of several apps: the boot session on
//! its stdin/stdout, each app session on a connection to a Unix socket the test listens on
//! (`PODVM_AGENT_APP_SOCKET`), and checks rkt's rule end to end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use podvm_protocol::{AppSpec, BootSpec, Control, ExitStatus, FrameDecoder, Message, Stream};

/// Generous bound that only catches a hung agent (no timing is asserted).
const HANG_LIMIT: Duration = Duration::from_secs(60);

const AGENT: &str = env!("CARGO_BIN_EXE_podvm-agent");

fn app(name: &str, script: &str) -> AppSpec {
    AppSpec {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..AppSpec::default()
    }
}

/// What one app session carried.
#[derive(Debug, Default)]
struct AppRun {
    stdout: Vec<u8>,
    exit: Option<ExitStatus>,
    errors: Vec<String>,
}

/// A running agent with its boot session and its app sessions.
struct Pod {
    child: Child,
    boot_in: Option<std::process::ChildStdin>,
    boot_frames: mpsc::Receiver<Message>,
    apps: JoinHandle<BTreeMap<String, AppRun>>,
    _dir: tempfile::TempDir,
}

fn decode(bytes: &[u8]) -> Vec<Message> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut messages = Vec::new();
    while let Some(message) = decoder.next_message().expect("well-formed frames") {
        messages.push(message);
    }
    messages
}

/// Reads one app session to its end, then closes it (as the host does).
fn read_app_session(mut stream: std::os::unix::net::UnixStream) -> (String, AppRun) {
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("read the app session");
    let mut messages = decode(&bytes).into_iter();
    let name = match messages.next() {
        Some(Message::Control(Control::App { name })) => name,
        other => panic!("an app session must open with App, got {other:?}"),
    };
    let mut run = AppRun::default();
    for message in messages {
        match message {
            Message::Data(Stream::Stdout, data) => run.stdout.extend(data),
            Message::Control(Control::Exited { status, .. }) => run.exit = Some(status),
            Message::Control(Control::Error { message }) => run.errors.push(message),
            _ => {}
        }
    }
    (name, run)
}

impl Pod {
    fn start(spec: &BootSpec) -> Pod {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec_path = dir.path().join("boot.json");
        std::fs::write(&spec_path, serde_json::to_vec(spec).expect("encode")).expect("spec");
        let socket = dir.path().join("apps.sock");
        let listener = UnixListener::bind(&socket).expect("listen");
        let count = spec.apps.len();
        let apps = std::thread::spawn(move || {
            let readers: Vec<_> = (0..count)
                .map(|_| {
                    let (stream, _) = listener.accept().expect("accept an app session");
                    std::thread::spawn(move || read_app_session(stream))
                })
                .collect();
            readers
                .into_iter()
                .map(|reader| reader.join().expect("reader"))
                .collect()
        });
        let mut child = Command::new(AGENT)
            .env("PODVM_AGENT_SPEC", &spec_path)
            .env("PODVM_AGENT_APP_SOCKET", &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent");
        let mut stdout = child.stdout.take().expect("piped");
        let (tx, boot_frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            for message in decode(&bytes) {
                let _ = tx.send(message);
            }
        });
        Pod {
            boot_in: child.stdin.take(),
            child,
            boot_frames,
            apps,
            _dir: dir,
        }
    }

    fn send(&mut self, message: Message) {
        let stdin = self.boot_in.as_mut().expect("boot session open");
        stdin
            .write_all(&message.encode().expect("encode"))
            .expect("send");
    }

    /// Waits for the agent; returns the boot session's frames and each app's session.
    fn finish(mut self) -> (Vec<Message>, BTreeMap<String, AppRun>) {
        let mut boot = Vec::new();
        while let Ok(message) = self.boot_frames.recv_timeout(HANG_LIMIT) {
            boot.push(message);
        }
        self.boot_in = None;
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "the agent itself must not fail");
        (boot, self.apps.join().expect("app sessions"))
    }
}

fn pod_exit(boot: &[Message]) -> ExitStatus {
    assert!(
        matches!(boot.first(), Some(Message::Control(Control::Ready { .. }))),
        "{boot:?}"
    );
    match boot.last() {
        Some(Message::Control(Control::Exited { status, .. })) => *status,
        other => panic!("the boot session must end with Exited, got {other:?}"),
    }
}

#[test]
fn apps_run_on_their_own_sessions_and_a_pod_of_successes_exits_0() {
    let spec = BootSpec {
        apps: vec![
            app("one", "echo from-one; sleep 0.2"),
            app("two", "echo from-two"),
        ],
        ..BootSpec::default()
    };
    let (boot, apps) = Pod::start(&spec).finish();
    assert_eq!(pod_exit(&boot), ExitStatus::Code(0));
    assert_eq!(apps.len(), 2, "{apps:?}");
    assert_eq!(apps["one"].stdout, b"from-one\n");
    assert_eq!(apps["two"].stdout, b"from-two\n");
    assert!(apps
        .values()
        .all(|run| run.exit == Some(ExitStatus::Code(0))));
}

#[test]
fn the_first_failure_stops_the_other_apps_and_is_the_pods_status() {
    let spec = BootSpec {
        apps: vec![
            app("sleeper", "echo up; exec sleep 30"),
            app("stubborn", "trap '' TERM; sleep 30"),
            app("failer", "sleep 0.3; exit 7"),
        ],
        stop_grace_ms: Some(300),
        ..BootSpec::default()
    };
    let (boot, apps) = Pod::start(&spec).finish();
    assert_eq!(pod_exit(&boot), ExitStatus::Code(7));
    assert_eq!(apps["failer"].exit, Some(ExitStatus::Code(7)));
    assert_eq!(
        apps["sleeper"].exit,
        Some(ExitStatus::Signal(15)),
        "SIGTERM"
    );
    assert_eq!(
        apps["stubborn"].exit,
        Some(ExitStatus::Signal(9)),
        "SIGKILL after the grace period"
    );
}

#[test]
fn a_signal_on_the_boot_session_reaches_every_app() {
    let marks = tempfile::tempdir().expect("tempdir");
    let mark = marks.path().join("a-trapped");
    let script = format!(
        "trap 'echo a-term; exit 3' TERM; touch {}; sleep 30 & wait",
        mark.display()
    );
    let spec = BootSpec {
        apps: vec![app("a", &script), app("b", "exec sleep 30")],
        ..BootSpec::default()
    };
    let mut pod = Pod::start(&spec);
    let waited = std::time::Instant::now();
    while !mark.exists() {
        assert!(waited.elapsed() < HANG_LIMIT, "app a never set its trap");
        std::thread::sleep(Duration::from_millis(20));
    }
    pod.send(Message::Control(Control::Signal { signo: 15 }));
    let (boot, apps) = pod.finish();
    assert_eq!(apps["a"].exit, Some(ExitStatus::Code(3)));
    assert_eq!(apps["a"].stdout, b"a-term\n");
    assert_eq!(apps["b"].exit, Some(ExitStatus::Signal(15)));
    let status = pod_exit(&boot);
    assert!(
        status == ExitStatus::Code(3) || status == ExitStatus::Signal(15),
        "the first app that failed: {status:?}"
    );
}

#[test]
fn a_missing_command_fails_its_app_with_127() {
    let spec = BootSpec {
        apps: vec![
            app("ok", "exec sleep 30"),
            AppSpec {
                name: "broken".into(),
                command: vec!["/no/such/program".into()],
                ..AppSpec::default()
            },
        ],
        stop_grace_ms: Some(200),
        ..BootSpec::default()
    };
    let (boot, apps) = Pod::start(&spec).finish();
    assert_eq!(pod_exit(&boot), ExitStatus::Code(127));
    assert!(
        apps["broken"]
            .errors
            .iter()
            .any(|e| e.contains("/no/such/program")),
        "{apps:?}"
    );
    assert_eq!(apps["ok"].exit, Some(ExitStatus::Signal(15)));
}
