//! Runs the real agent binary off the VM (not PID 1: no mounts, no reboot) with a boot spec from
//! `PODVM_AGENT_SPEC` and decodes the frames it writes with the protocol crate.

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
            Some(Message::Control(Control::Exited { status })) => *status,
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
