//! Runs the real agent binary off the VM (not PID 1: no mounts, no reboot) with a boot spec from
//! `PODVM_AGENT_SPEC` (or, as in the VM, as the first frame on its stdin) and decodes the frames
//! it writes with the protocol crate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podvm_protocol::{BootSpec, Control, ExitStatus, FrameDecoder, Message, Stream};

/// Generous bound that only catches a hung agent (no timing is asserted).
const HANG_LIMIT: Duration = Duration::from_secs(60);

const AGENT: &str = env!("CARGO_BIN_EXE_podvm-agent");

struct Run {
    messages: Vec<Message>,
    stderr: String,
    code: Option<i32>,
}

impl Run {
    fn controls(&self) -> Vec<Control> {
        self.messages
            .iter()
            .filter_map(|message| match message {
                Message::Control(control) => Some(control.clone()),
                Message::Data(..) => None,
            })
            .collect()
    }

    fn data(&self, stream: Stream) -> Vec<u8> {
        self.messages
            .iter()
            .filter_map(|message| match message {
                Message::Data(s, bytes) if *s == stream => Some(bytes.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn exit(&self) -> ExitStatus {
        match self.messages.last() {
            Some(Message::Control(Control::Exited { status, .. })) => *status,
            other => panic!("the last frame must be Exited, got {other:?}"),
        }
    }
}

fn spec(command: &[&str]) -> BootSpec {
    BootSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        workdir: None,
        ..BootSpec::default()
    }
}

fn write_spec(dir: &Path, spec: &BootSpec) -> PathBuf {
    let path = dir.join("boot.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("encode")).expect("write spec");
    path
}

fn decode(bytes: &[u8]) -> Vec<Message> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut messages = Vec::new();
    while let Some(message) = decoder.next_message().expect("well-formed frames") {
        messages.push(message);
    }
    assert_eq!(decoder.pending(), 0, "trailing partial frame");
    messages
}

/// Runs the agent with the given spec file and channel (`None`: stdout).
fn run_agent(spec_path: &Path, channel: Option<&str>) -> (Vec<u8>, String, Option<i32>) {
    let mut command = Command::new(AGENT);
    command
        .env("PODVM_AGENT_SPEC", spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(channel) = channel {
        command.env("PODVM_AGENT_CHANNEL", channel);
    }
    let mut child = command.spawn().expect("start the agent");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).expect("read frames");
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).expect("read stderr");
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            panic!("the agent hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let bytes = out_reader.join().expect("reader");
    let stderr = err_reader.join().expect("reader");
    (bytes, stderr, status.code())
}

fn run(spec: &BootSpec) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bytes, stderr, code) = run_agent(&write_spec(dir.path(), spec), None);
    Run {
        messages: decode(&bytes),
        stderr,
        code,
    }
}

fn ready_first(run: &Run) {
    assert!(
        matches!(run.messages.first(), Some(Message::Control(Control::Ready { agent_version })) if !agent_version.is_empty()),
        "first frame must be Ready: {:?}",
        run.messages.first()
    );
}

#[test]
fn streams_stay_apart_and_the_code_arrives_last() {
    let run = run(&spec(&[
        "sh",
        "-c",
        "echo hi; echo err >&2; echo more; exit 7",
    ]));
    ready_first(&run);
    assert_eq!(run.data(Stream::Stdout), b"hi\nmore\n");
    assert_eq!(run.data(Stream::Stderr), b"err\n");
    assert_eq!(run.exit(), ExitStatus::Code(7));
    assert_eq!(run.controls().len(), 2, "{:?}", run.controls());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn environment_and_workdir_come_from_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("not/yet/there");
    let mut spec = spec(&[
        "sh",
        "-c",
        "echo \"$FOO|$HOME|$PATH|${PODVM_AGENT_SPEC:-unset}\"; pwd",
    ]);
    spec.env = vec!["FOO=a=b".into(), "HOME=/home/app".into()];
    spec.workdir = Some(workdir.display().to_string());
    let run = run(&spec);
    let expected = format!(
        "a=b|/home/app|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|unset\n{}\n",
        workdir.display()
    );
    assert_eq!(String::from_utf8_lossy(&run.data(Stream::Stdout)), expected);
    assert_eq!(run.exit(), ExitStatus::Code(0));
}

#[test]
fn a_killed_workload_reports_the_signal() {
    let run = run(&spec(&["sh", "-c", "kill -9 $$"]));
    assert_eq!(run.exit(), ExitStatus::Signal(9));
    assert_eq!(run.exit().shell_code(), 137);
}

#[test]
fn a_missing_command_is_127_with_a_reason() {
    let run = run(&spec(&["no-such-command-podvm", "x"]));
    ready_first(&run);
    let controls = run.controls();
    match &controls[1] {
        Control::Error { message } => {
            assert!(
                message.contains(
                    "command not found: no-such-command-podvm (searched PATH=/usr/local/sbin:"
                ),
                "{message}"
            );
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(run.exit(), ExitStatus::Code(127));
    assert_eq!(controls.len(), 3);
}

#[test]
fn a_non_executable_file_is_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho no\n").expect("write");
    for command in [script.display().to_string(), "script".to_string()] {
        let mut spec = spec(&[&command]);
        spec.env = vec![format!("PATH={}", dir.path().display())];
        let run = run(&spec);
        assert_eq!(run.exit(), ExitStatus::Code(126), "{command}");
        let error = run
            .controls()
            .into_iter()
            .find_map(|control| match control {
                Control::Error { message } => Some(message),
                _ => None,
            });
        let message = error.expect("an Error frame");
        assert!(message.contains("cannot execute"), "{message}");
        assert!(run.data(Stream::Stdout).is_empty());
    }
}

#[test]
fn an_unknown_binary_format_is_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, [0u8, 1, 2, 3, 4, 5, 6, 7]).expect("write");
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let run = run(&spec(&[&junk.display().to_string()]));
    assert_eq!(run.exit(), ExitStatus::Code(126));
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 7) as u8
        })
        .collect()
}

#[test]
fn large_output_arrives_intact_on_both_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (pseudo_random(5 << 20, 1), pseudo_random(3 << 20, 2));
    std::fs::write(dir.path().join("out"), &out).expect("write");
    std::fs::write(dir.path().join("err"), &err).expect("write");
    let script = format!(
        "head -c {} {d}/out & head -c {} {d}/err >&2; wait",
        out.len(),
        err.len(),
        d = dir.path().display()
    );
    let run = run(&spec(&["sh", "-c", &script]));
    assert_eq!(run.exit(), ExitStatus::Code(0));
    assert!(run.data(Stream::Stdout) == out, "stdout differs");
    assert!(run.data(Stream::Stderr) == err, "stderr differs");
    for message in &run.messages {
        if let Message::Data(_, bytes) = message {
            assert!(
                !bytes.is_empty() && bytes.len() <= 32 * 1024,
                "{}",
                bytes.len()
            );
        }
    }
}

#[test]
fn a_grandchild_holding_the_pipes_does_not_hang_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 300 & echo $! > {}; echo done", pidfile.display());
    let run = run(&spec(&["sh", "-c", &script]));
    let pid = std::fs::read_to_string(&pidfile).expect("pid file");
    let _ = Command::new("kill").arg(pid.trim()).status();
    assert_eq!(run.data(Stream::Stdout), b"done\n");
    assert_eq!(run.exit(), ExitStatus::Code(0));
}

#[test]
fn orphans_are_reaped() {
    // The orphan's zombie stays visible to `kill -0` until someone reaps it; only the agent
    // (a subreaper off the VM, PID 1 in it) can, so the loop ends only if it does.
    let script = "(sleep 0.2 & echo $! > /dev/fd/3) 3>&1 | { read pid; \
                  while kill -0 $pid 2>/dev/null; do sleep 0.05; done; echo gone; }";
    let run = run(&spec(&["sh", "-c", script]));
    assert_eq!(run.data(Stream::Stdout), b"gone\n");
    assert_eq!(run.exit(), ExitStatus::Code(0));
    assert!(run.stderr.contains("reaped"), "{}", run.stderr);
}

#[test]
fn a_missing_spec_is_reported_and_fails() {
    let (bytes, stderr, code) = run_agent(Path::new("/nonexistent/boot.json"), None);
    let messages = decode(&bytes);
    assert_eq!(messages.len(), 2, "{messages:?}");
    match &messages[1] {
        Message::Control(Control::Error { message }) => {
            assert!(message.contains("/nonexistent/boot.json"), "{message}")
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(stderr.contains("podvm-agent: "), "{stderr}");
    assert_eq!(code, Some(1));
}

#[test]
fn an_invalid_spec_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("boot.json");
    std::fs::write(&path, b"{\"command\": 5}").expect("write");
    let (bytes, _, code) = run_agent(&path, None);
    let messages = decode(&bytes);
    assert!(
        matches!(&messages[1], Message::Control(Control::Error { message }) if message.contains("not valid JSON")),
        "{messages:?}"
    );
    assert_eq!(code, Some(1));
}

#[test]
fn the_spec_can_come_as_the_hosts_first_frame() {
    let mut child = Command::new(AGENT)
        .env_remove("PODVM_AGENT_SPEC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the agent");
    let mut stdin = child.stdin.take().expect("piped");
    let frames = decode_in_thread(child.stdout.take().expect("piped"));
    let mut bytes = Message::Control(Control::Boot(Box::new(spec(&["cat"]))))
        .encode()
        .expect("encode");
    bytes.extend(
        Message::Data(Stream::Stdin, b"after the spec\n".to_vec())
            .encode()
            .expect("encode"),
    );
    bytes.extend(
        Message::Control(Control::StdinClose)
            .encode()
            .expect("encode"),
    );
    std::io::Write::write_all(&mut stdin, &bytes).expect("send");
    let mut messages = Vec::new();
    while let Ok(message) = frames.recv_timeout(HANG_LIMIT) {
        messages.push(message);
    }
    drop(stdin);
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert!(matches!(
        messages.first(),
        Some(Message::Control(Control::Ready { .. }))
    ));
    assert_eq!(collect(&messages, Stream::Stdout), b"after the spec\n");
    assert_eq!(exited(&messages), Some(ExitStatus::Code(0)));
}

#[test]
fn a_host_that_sends_no_spec_or_a_bad_one_is_refused_on_the_console_too() {
    let empty = Message::Control(Control::Boot(Box::new(spec(&[]))))
        .encode()
        .expect("encode");
    let signal = Message::Control(Control::Signal { signo: 15 })
        .encode()
        .expect("encode");
    let cases: [(&[u8], &str); 3] = [
        (b"", "closed the agent channel before it sent the boot spec"),
        (&empty, "the boot spec from the host has an empty command"),
        (
            &signal,
            "the host's first frame was signal, not the boot spec",
        ),
    ];
    for (sent, expected) in cases {
        let mut child = Command::new(AGENT)
            .env_remove("PODVM_AGENT_SPEC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let mut stdin = child.stdin.take().expect("piped");
        std::io::Write::write_all(&mut stdin, sent).expect("send");
        drop(stdin);
        let output = child.wait_with_output().expect("wait");
        let messages = decode(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(messages.len(), 2, "{messages:?}");
        match &messages[1] {
            Message::Control(Control::Error { message }) => {
                assert!(message.contains(expected), "{message}")
            }
            other => panic!("expected Error, got {other:?}"),
        }
        let said = stderr
            .lines()
            .any(|line| line.starts_with("podvm-agent: ") && line.contains(expected));
        assert!(said, "{stderr}");
        assert_eq!(output.status.code(), Some(1));
    }
}

#[test]
fn a_terminal_channel_is_raw() {
    use std::os::fd::AsRawFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave_path =
        std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).expect("pty path");
    // Every byte value, including \n, \r, ^C, ^S, ^Q, ^D and DEL, must cross unchanged.
    let payload: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("payload"), &payload).expect("write");
    let spec_path = write_spec(
        dir.path(),
        &spec(&["cat", &dir.path().join("payload").display().to_string()]),
    );
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new();
        let mut messages = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = master.read(&mut buffer).expect("read the pty");
            decoder.push(&buffer[..n]);
            while let Some(message) = decoder.next_message().expect("well-formed frames") {
                let done = matches!(message, Message::Control(Control::Exited { .. }));
                messages.push(message);
                if done {
                    return messages;
                }
            }
        }
    });
    let (stdout, stderr, code) = run_agent(&spec_path, Some(&slave_path.display().to_string()));
    assert!(stdout.is_empty(), "frames went to the terminal only");
    assert_eq!(code, Some(0), "{stderr}");
    drop(pty.slave);
    let run = Run {
        messages: reader.join().expect("reader"),
        stderr,
        code,
    };
    assert!(
        run.data(Stream::Stdout) == payload,
        "payload changed on the way"
    );
    assert_eq!(run.exit(), ExitStatus::Code(0));
}

/// An agent run driven live: frames to its stdin (the host direction), frames from its stdout
/// collected by a thread.
struct Live {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    frames: std::sync::mpsc::Receiver<Message>,
    seen: Vec<Message>,
    _dir: tempfile::TempDir,
}

impl Live {
    fn start(spec: &BootSpec, extra_env: &[(&str, &Path)]) -> Live {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(AGENT);
        command
            .env("PODVM_AGENT_SPEC", write_spec(dir.path(), spec))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the agent");
        let stdout = child.stdout.take().expect("piped");
        let frames = decode_in_thread(stdout);
        Live {
            stdin: child.stdin.take(),
            child,
            frames,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    fn send(&mut self, message: Message) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        message.write_to(stdin).expect("send a frame");
    }

    /// Waits until stdout contains `text` (or the run ends).
    fn wait_stdout(&mut self, text: &str) {
        while !String::from_utf8_lossy(&collect(&self.seen, Stream::Stdout)).contains(text) {
            let message = self
                .frames
                .recv_timeout(HANG_LIMIT)
                .unwrap_or_else(|_| panic!("no {text:?} on stdout: {:?}", self.seen));
            self.seen.push(message);
        }
    }

    /// Reads to the end and returns every frame.
    fn finish(mut self) -> Vec<Message> {
        self.stdin = None;
        while let Ok(message) = self.frames.recv_timeout(HANG_LIMIT) {
            self.seen.push(message);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen
    }
}

fn decode_in_thread(mut input: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Message> {
    let (tx, rx) = std::sync::mpsc::channel();
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

fn collect(messages: &[Message], stream: Stream) -> Vec<u8> {
    messages
        .iter()
        .filter_map(|message| match message {
            Message::Data(s, bytes) if *s == stream => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn exited(messages: &[Message]) -> Option<ExitStatus> {
    messages.iter().find_map(|message| match message {
        Message::Control(Control::Exited { status, .. }) => Some(*status),
        _ => None,
    })
}

fn errors(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|message| match message {
            Message::Control(Control::Error { message }) => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn stdin_frames_reach_the_app_and_close_ends_it() {
    let mut live = Live::start(&spec(&["cat"]), &[]);
    live.send(Message::Data(Stream::Stdin, b"hello ".to_vec()));
    live.send(Message::Data(Stream::Stdin, b"agent\n".to_vec()));
    live.send(Message::Control(Control::StdinClose));
    let messages = live.finish();
    assert_eq!(collect(&messages, Stream::Stdout), b"hello agent\n");
    assert_eq!(exited(&messages), Some(ExitStatus::Code(0)));
}

#[test]
fn large_stdin_round_trips_without_deadlock() {
    let payload = pseudo_random(3 << 20, 7);
    let mut live = Live::start(&spec(&["cat"]), &[]);
    let stdin = live.stdin.take().expect("stdin");
    let chunks = payload.clone();
    let writer = std::thread::spawn(move || {
        let mut stdin = stdin;
        for chunk in chunks.chunks(32 * 1024) {
            Message::Data(Stream::Stdin, chunk.to_vec())
                .write_to(&mut stdin)
                .expect("send");
        }
        Message::Control(Control::StdinClose)
            .write_to(&mut stdin)
            .expect("close");
        stdin
    });
    let mut messages = Vec::new();
    while let Ok(message) = live.frames.recv_timeout(HANG_LIMIT) {
        let done = matches!(message, Message::Control(Control::Exited { .. }));
        messages.push(message);
        if done {
            break;
        }
    }
    drop(writer.join().expect("writer"));
    assert!(
        collect(&messages, Stream::Stdout) == payload,
        "bytes changed"
    );
    assert_eq!(exited(&messages), Some(ExitStatus::Code(0)));
    drop(live.finish());
}

#[test]
fn a_signal_reaches_the_process_group() {
    let script = "trap 'echo got-term; exit 4' TERM; echo ready; while :; do sleep 0.1; done";
    let mut live = Live::start(&spec(&["sh", "-c", script]), &[]);
    live.wait_stdout("ready");
    live.send(Message::Control(Control::Signal { signo: 15 }));
    let messages = live.finish();
    assert!(String::from_utf8_lossy(&collect(&messages, Stream::Stdout)).contains("got-term"));
    assert_eq!(exited(&messages), Some(ExitStatus::Code(4)));
}

#[test]
fn shutdown_kills_what_ignores_sigterm_after_the_grace_period() {
    let script = "trap '' TERM; echo ready; while :; do sleep 0.1; done";
    let mut live = Live::start(&spec(&["sh", "-c", script]), &[]);
    live.wait_stdout("ready");
    live.send(Message::Control(Control::Shutdown { grace_ms: 300 }));
    let messages = live.finish();
    assert_eq!(exited(&messages), Some(ExitStatus::Signal(9)));
}

#[test]
fn bad_host_frames_are_refused_without_harm() {
    let mut live = Live::start(&spec(&["sh", "-c", "cat; echo after"]), &[]);
    // An agent-to-host message from the host, then garbage.
    live.send(Message::Control(Control::Exited {
        status: ExitStatus::Code(0),
        oom_kills: 0,
    }));
    let messages = live.finish();
    let errors = errors(&messages);
    assert!(
        errors.iter().any(|error| error.contains("other way")),
        "{errors:?}"
    );
    assert_eq!(collect(&messages, Stream::Stdout), b"after\n");
    assert_eq!(exited(&messages), Some(ExitStatus::Code(0)));
}

#[test]
fn an_unknown_user_is_126() {
    let mut spec = spec(&["true"]);
    spec.user = Some("no-such-user-podvm".into());
    let run = run(&spec);
    assert_eq!(run.exit(), ExitStatus::Code(126));
    let errors = errors(&run.messages);
    assert!(
        errors.iter().any(|error| error.contains("unknown user")),
        "{errors:?}"
    );
}

#[test]
fn a_numeric_user_and_group_apply() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: changing users needs root");
        return;
    }
    let mut spec = spec(&["sh", "-c", "id -u; id -g; id -G"]);
    spec.user = Some("4242".into());
    spec.group = Some("4343".into());
    let run = run(&spec);
    assert_eq!(run.exit(), ExitStatus::Code(0), "{}", run.stderr);
    assert_eq!(run.data(Stream::Stdout), b"4242\n4343\n4343\n");
}

/// Runs one exec session over `socket`; returns what came back.
fn exec_session(socket: &Path, request: podvm_protocol::ExecRequest, stdin: &[u8]) -> Vec<Message> {
    exec_session_with(socket, request, None, stdin)
}

/// Like [`exec_session`], with an extra control message right after the request.
fn exec_session_with(
    socket: &Path,
    request: podvm_protocol::ExecRequest,
    extra: Option<Control>,
    stdin: &[u8],
) -> Vec<Message> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let frames = decode_in_thread(stream.try_clone().expect("clone"));
    Message::Control(Control::Exec(request))
        .write_to(&mut stream)
        .expect("send");
    if let Some(extra) = extra {
        Message::Control(extra).write_to(&mut stream).expect("send");
    }
    if !stdin.is_empty() {
        Message::Data(Stream::Stdin, stdin.to_vec())
            .write_to(&mut stream)
            .expect("send");
    }
    let _ = Message::Control(Control::StdinClose).write_to(&mut stream);
    let mut messages = Vec::new();
    while let Ok(message) = frames.recv_timeout(HANG_LIMIT) {
        messages.push(message);
    }
    messages
}

#[test]
fn exec_sessions_run_beside_the_app_and_need_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("exec.sock");
    let mut boot = spec(&["sh", "-c", "echo ready; cat"]);
    boot.exec_token = Some("s3cret".into());
    let mut live = Live::start(&boot, &[("PODVM_AGENT_EXEC_SOCKET", &socket)]);
    live.wait_stdout("ready");
    let request = |command: &[&str], token: &str, tty: bool| podvm_protocol::ExecRequest {
        token: token.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        tty,
        ..Default::default()
    };

    let plain = exec_session(
        &socket,
        request(&["sh", "-c", "echo in-exec; cat; exit 5"], "s3cret", false),
        b"piped\n",
    );
    assert!(matches!(
        plain.first(),
        Some(Message::Control(Control::Ready { .. }))
    ));
    assert_eq!(collect(&plain, Stream::Stdout), b"in-exec\npiped\n");
    assert_eq!(exited(&plain), Some(ExitStatus::Code(5)));

    let tty = exec_session(
        &socket,
        request(&["sh", "-c", "tty; exit 6"], "s3cret", true),
        b"",
    );
    let output = String::from_utf8_lossy(&collect(&tty, Stream::Stdout)).into_owned();
    assert!(output.contains("/dev/pts/"), "{output:?}");
    assert_eq!(exited(&tty), Some(ExitStatus::Code(6)));

    let resized = exec_session_with(
        &socket,
        request(&["sh", "-c", "sleep 0.5; stty size"], "s3cret", true),
        Some(Control::Resize { rows: 33, cols: 77 }),
        b"",
    );
    let output = String::from_utf8_lossy(&collect(&resized, Stream::Stdout)).into_owned();
    assert!(output.contains("33 77"), "{output:?}");

    let refused = exec_session(&socket, request(&["echo", "no"], "wrong", false), b"");
    assert_eq!(exited(&refused), None, "{refused:?}");
    assert!(collect(&refused, Stream::Stdout).is_empty());
    assert!(
        errors(&refused)
            .iter()
            .any(|error| error.contains("refused")),
        "{refused:?}"
    );

    live.send(Message::Control(Control::StdinClose));
    let messages = live.finish();
    assert_eq!(exited(&messages), Some(ExitStatus::Code(0)));
}
