//! Host end of the agent channel: decodes the agent's frames as the guest writes them and
//! dispatches them (app output to our stdout/stderr, status and errors into [`LinkReport`]);
//! when the agent connects, the boot spec is the first frame sent to it
//! ([`AgentLink::with_boot_spec`]); [`HostWriter`] then sends the host's other frames (stdin,
//! signals, resizes). In a pod of several apps, each app session gets an [`AppLink`] that sends the app's
//! output to the writers [`AppOutputs`] gives for it and records its exit in the shared report.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use podvm_protocol::{Control, ExitStatus, FrameDecoder, Message, ProtocolError, Stream};

use crate::vmm::agent_vsock::{AgentSink, SessionSinks};

/// The host-to-agent direction of a session, shared by the threads that feed it.
#[derive(Debug, Default)]
pub struct HostWriter {
    stream: Mutex<Option<File>>,
    connected: Condvar,
}

impl HostWriter {
    /// A writer with no connection yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs the connection and wakes whoever waits for it.
    pub fn connect(&self, stream: File) {
        *lock_any(&self.stream) = Some(stream);
        self.connected.notify_all();
    }

    /// Waits up to `timeout` for the connection; whether it is there.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let guard = lock_any(&self.stream);
        let (guard, _) = self
            .connected
            .wait_timeout_while(guard, timeout, |stream| stream.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.is_some()
    }

    /// Sends one frame (blocking while the agent does not read); fails without a connection.
    pub fn send(&self, message: &Message) -> Result<(), ProtocolError> {
        let mut guard = lock_any(&self.stream);
        let stream = guard
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        message.write_to(stream)
    }
}

fn lock_any<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the agent told the host over the whole run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The agent said it was up.
    pub agent_ready: bool,
    /// How the workload ended, if the agent said so (in a pod of several apps: the pod).
    pub exit: Option<ExitStatus>,
    /// In a pod of several apps: each app's exit, in the order the host learnt them.
    pub app_exits: Vec<(String, ExitStatus)>,
    /// Processes of the workload the guest kernel's OOM killer killed, from its `Exited` (in a
    /// pod of several apps: all apps').
    pub oom_kills: u64,
    /// In a pod of several apps: each app's OOM kills, when it had some.
    pub app_oom_kills: Vec<(String, u64)>,
    /// Errors the agent reported.
    pub agent_errors: Vec<String>,
    /// The first protocol violation, after which the channel is ignored.
    pub protocol_error: Option<String>,
    /// Why the boot spec could not be sent to the agent, if it could not.
    pub spec_error: Option<String>,
}

/// An app's stdout and stderr writers.
pub type AppWriters = (Box<dyn Write + Send>, Box<dyn Write + Send>);

/// The writers of the app named by the argument (a pod of several apps).
pub type AppOutputs = Arc<dyn Fn(&str) -> AppWriters + Send + Sync>;

/// Called with every control message the agent sends on the boot session (after the report
/// took it): a runtime follows its container requests' answers with it.
pub type ControlHook = Arc<dyn Fn(&Control) + Send + Sync>;

/// A `Write` sink for the guest side of the channel that decodes frames as they arrive.
pub struct AgentLink {
    decoder: FrameDecoder,
    report: Arc<Mutex<LinkReport>>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    writer: Option<Arc<HostWriter>>,
    apps: Option<AppOutputs>,
    boot_spec: Option<Vec<u8>>,
    hook: Option<ControlHook>,
}

impl AgentLink {
    /// A link that writes app output to the given streams; the report is shared with the caller.
    pub fn new(
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> (Self, Arc<Mutex<LinkReport>>) {
        let report = Arc::new(Mutex::new(LinkReport::default()));
        let link = Self {
            decoder: FrameDecoder::new(),
            report: report.clone(),
            stdout,
            stderr,
            writer: None,
            apps: None,
            boot_spec: None,
            hook: None,
        };
        (link, report)
    }

    /// Takes app sessions (a pod of several apps), whose output goes where `outputs` says.
    pub fn with_apps(mut self, outputs: AppOutputs) -> Self {
        self.apps = Some(outputs);
        self
    }

    /// Sends `frame` (the encoded [`Control::Boot`]) first when the agent connects, before
    /// the connection goes to the writer.
    pub fn with_boot_spec(mut self, frame: Vec<u8>) -> Self {
        self.boot_spec = Some(frame);
        self
    }

    /// Also tells `hook` every control message of the agent (container answers and exits).
    pub fn with_control_hook(mut self, hook: ControlHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Hands the connection to `writer` when the agent connects.
    pub fn with_writer(mut self, writer: Arc<HostWriter>) -> Self {
        self.writer = Some(writer);
        self
    }

    fn dispatch(&mut self, message: Message) -> io::Result<()> {
        match message {
            Message::Data(Stream::Stdout, bytes) => {
                self.stdout.write_all(&bytes)?;
                self.stdout.flush()
            }
            Message::Data(Stream::Stderr, bytes) => {
                self.stderr.write_all(&bytes)?;
                self.stderr.flush()
            }
            Message::Control(control) => {
                {
                    let mut report = lock(&self.report);
                    match &control {
                        Control::Ready { .. } => report.agent_ready = true,
                        Control::Exited { status, oom_kills } => {
                            report.exit = Some(*status);
                            report.oom_kills = *oom_kills;
                        }
                        Control::Error { message } => report.agent_errors.push(message.clone()),
                        // check_from_agent let only agent messages through.
                        _ => {}
                    }
                }
                if let Some(hook) = &self.hook {
                    hook(&control);
                }
                Ok(())
            }
            // check_from_agent let no stdin data through.
            Message::Data(Stream::Stdin, _) => Ok(()),
        }
    }
}

impl Write for AgentLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if lock(&self.report).protocol_error.is_some() {
            return Ok(buf.len());
        }
        self.decoder.push(buf);
        loop {
            match next_from_agent(&mut self.decoder) {
                Ok(Some(message)) => self.dispatch(message)?,
                Ok(None) => break,
                Err(err) => {
                    lock(&self.report).protocol_error = Some(err.to_string());
                    break;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()?;
        self.stderr.flush()
    }
}

impl AgentSink for AgentLink {
    fn connected(&mut self, mut stream: File) {
        if let Some(frame) = self.boot_spec.take() {
            if let Err(err) = stream.write_all(&frame) {
                lock(&self.report).spec_error = Some(err.to_string());
            }
        }
        if let Some(writer) = &self.writer {
            writer.connect(stream);
        }
    }

    fn app_sessions(&mut self) -> Option<SessionSinks> {
        let outputs = self.apps.clone()?;
        let report = self.report.clone();
        Some(Box::new(move || {
            Box::new(AppLink::new(outputs.clone(), report.clone())) as Box<dyn Write + Send>
        }))
    }
}

/// The host end of one app session: the first frame names the app ([`Control::App`]); its
/// output then goes to that app's writers and its exit into the shared report.
pub struct AppLink {
    decoder: FrameDecoder,
    report: Arc<Mutex<LinkReport>>,
    outputs: AppOutputs,
    /// The app's name and writers, once the first frame named it.
    app: Option<(String, AppWriters)>,
    /// A protocol violation ended the session.
    failed: bool,
}

impl AppLink {
    /// A link for one app session; `outputs` gives the app's writers.
    pub fn new(outputs: AppOutputs, report: Arc<Mutex<LinkReport>>) -> Self {
        Self {
            decoder: FrameDecoder::new(),
            report,
            outputs,
            app: None,
            failed: false,
        }
    }

    fn fail(&mut self, why: String) {
        self.failed = true;
        let mut report = lock(&self.report);
        if report.protocol_error.is_none() {
            report.protocol_error = Some(why);
        }
    }

    fn dispatch(&mut self, message: Message) -> io::Result<()> {
        let Some((name, (stdout, stderr))) = self.app.as_mut() else {
            match message {
                Message::Control(Control::App { name }) => {
                    let writers = (self.outputs)(&name);
                    self.app = Some((name, writers));
                }
                other => self.fail(format!(
                    "an app session began with {other:?} instead of naming its app"
                )),
            }
            return Ok(());
        };
        match message {
            Message::Data(Stream::Stdout, bytes) => {
                stdout.write_all(&bytes)?;
                stdout.flush()
            }
            Message::Data(Stream::Stderr, bytes) => {
                stderr.write_all(&bytes)?;
                stderr.flush()
            }
            Message::Control(Control::Exited { status, oom_kills }) => {
                let mut report = lock(&self.report);
                report.app_exits.push((name.clone(), status));
                if oom_kills > 0 {
                    report.app_oom_kills.push((name.clone(), oom_kills));
                }
                Ok(())
            }
            Message::Control(Control::Error { message }) => {
                let message = format!("app {name}: {message}");
                lock(&self.report).agent_errors.push(message);
                Ok(())
            }
            // Nothing else means anything on an app session.
            _ => Ok(()),
        }
    }
}

impl Write for AppLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Ok(buf.len());
        }
        self.decoder.push(buf);
        loop {
            match next_from_agent(&mut self.decoder) {
                Ok(Some(message)) => self.dispatch(message)?,
                Ok(None) => break,
                Err(err) => {
                    self.fail(format!("app session: {err}"));
                    break;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some((_, (stdout, stderr))) = self.app.as_mut() {
            stdout.flush()?;
            stderr.flush()?;
        }
        Ok(())
    }
}

/// Locks the report; a poisoned lock still holds valid data (the writer only sets fields).
pub fn lock(report: &Mutex<LinkReport>) -> std::sync::MutexGuard<'_, LinkReport> {
    report
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The next whole message the agent sent, checked for its direction (`None`: need more bytes).
fn next_from_agent(decoder: &mut FrameDecoder) -> Result<Option<Message>, ProtocolError> {
    decoder
        .next_message()
        .and_then(|message| message.map(Message::check_from_agent).transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("test lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn routes_streams_and_status() {
        let (out, err) = (Shared::default(), Shared::default());
        let (mut link, report) = AgentLink::new(Box::new(out.clone()), Box::new(err.clone()));
        let mut bytes = Vec::new();
        for message in [
            Message::Control(Control::Ready {
                agent_version: "1".into(),
            }),
            Message::Data(Stream::Stdout, b"hi\n".to_vec()),
            Message::Data(Stream::Stderr, b"oops\n".to_vec()),
            Message::Control(Control::Exited {
                status: ExitStatus::Code(7),
                oom_kills: 0,
            }),
        ] {
            bytes.extend(message.encode().expect("encode"));
        }
        for chunk in bytes.chunks(3) {
            link.write_all(chunk).expect("write");
        }
        assert_eq!(out.0.lock().expect("lock").as_slice(), b"hi\n");
        assert_eq!(err.0.lock().expect("lock").as_slice(), b"oops\n");
        let report = lock(&report).clone();
        assert!(report.agent_ready);
        assert_eq!(report.exit, Some(ExitStatus::Code(7)));
    }

    #[test]
    fn host_messages_from_the_agent_are_a_protocol_error() {
        let (mut link, report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        let frame = Message::Control(Control::Signal { signo: 9 })
            .encode()
            .expect("encode");
        link.write_all(&frame).expect("write");
        let error = lock(&report).protocol_error.clone().expect("an error");
        assert!(error.contains("other way"), "{error}");
    }

    #[test]
    fn the_writer_sends_once_connected() {
        use std::io::Read;
        let writer = HostWriter::new();
        let message = Message::Control(Control::StdinClose);
        assert!(writer.send(&message).is_err(), "not connected yet");
        assert!(!writer.wait_connected(Duration::from_millis(1)));
        let (host, mut guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (mut link, _) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        link = link.with_writer(writer.clone());
        link.connected(File::from(std::os::fd::OwnedFd::from(host)));
        assert!(writer.wait_connected(Duration::from_secs(1)));
        writer.send(&message).expect("send");
        let mut frame = vec![0u8; message.encode().expect("encode").len()];
        guest.read_exact(&mut frame).expect("read");
        assert_eq!(
            Message::read_from(&mut frame.as_slice()).expect("decode"),
            Some(message)
        );
    }

    #[test]
    fn the_boot_spec_is_the_first_frame_the_agent_gets() {
        use std::io::Read;
        let spec = podvm_protocol::BootSpec {
            command: vec!["true".into()],
            ..Default::default()
        };
        let boot = Message::Control(Control::Boot(Box::new(spec)));
        let writer = HostWriter::new();
        let (link, _) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        let mut link = link
            .with_boot_spec(boot.encode().expect("encode"))
            .with_writer(writer.clone());
        let (host, mut guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        link.connected(File::from(std::os::fd::OwnedFd::from(host)));
        let signal = Message::Control(Control::Signal { signo: 15 });
        writer.send(&signal).expect("send");
        drop(writer);
        drop(link);
        let mut bytes = Vec::new();
        guest.read_to_end(&mut bytes).expect("read");
        let mut reader = bytes.as_slice();
        assert_eq!(Message::read_from(&mut reader).expect("decode"), Some(boot));
        assert_eq!(
            Message::read_from(&mut reader).expect("decode"),
            Some(signal)
        );
    }

    #[test]
    fn app_sessions_route_output_and_exits_by_app() {
        let (web, db) = (Shared::default(), Shared::default());
        let (web_out, db_out) = (web.clone(), db.clone());
        let outputs: AppOutputs = Arc::new(move |name: &str| {
            let out = if name == "web" {
                web_out.clone()
            } else {
                db_out.clone()
            };
            (
                Box::new(out) as Box<dyn Write + Send>,
                Box::new(io::sink()) as Box<dyn Write + Send>,
            )
        });
        let (link, report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        let mut link = link.with_apps(outputs);
        let mut sinks = link.app_sessions().expect("takes app sessions");
        let (mut first, mut second) = (sinks(), sinks());
        let frames = |name: &str, text: &[u8], status, oom_kills| {
            let mut bytes = Vec::new();
            for message in [
                Message::Control(Control::App { name: name.into() }),
                Message::Data(Stream::Stdout, text.to_vec()),
                Message::Control(Control::Exited { status, oom_kills }),
            ] {
                bytes.extend(message.encode().expect("encode"));
            }
            bytes
        };
        first
            .write_all(&frames("db", b"db-out", ExitStatus::Code(7), 2))
            .expect("write");
        second
            .write_all(&frames("web", b"web-out", ExitStatus::Signal(15), 0))
            .expect("write");
        assert_eq!(web.0.lock().expect("lock").as_slice(), b"web-out");
        assert_eq!(db.0.lock().expect("lock").as_slice(), b"db-out");
        let report = lock(&report).clone();
        assert_eq!(
            report.app_exits,
            vec![
                ("db".to_string(), ExitStatus::Code(7)),
                ("web".to_string(), ExitStatus::Signal(15))
            ]
        );
        assert_eq!(
            report.app_oom_kills,
            vec![("db".to_string(), 2)],
            "web had none"
        );
        assert!(report.protocol_error.is_none());
    }

    #[test]
    fn an_app_session_must_name_its_app_first() {
        let outputs: AppOutputs = Arc::new(|_: &str| {
            (
                Box::new(io::sink()) as Box<dyn Write + Send>,
                Box::new(io::sink()) as Box<dyn Write + Send>,
            )
        });
        let (_, report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        let mut link = AppLink::new(outputs, report.clone());
        let frame = Message::Data(Stream::Stdout, b"x".to_vec())
            .encode()
            .expect("encode");
        link.write_all(&frame).expect("write");
        let error = lock(&report).protocol_error.clone().expect("an error");
        assert!(error.contains("naming its app"), "{error}");
    }

    #[test]
    fn a_plain_link_refuses_app_sessions() {
        let (mut link, _) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        assert!(link.app_sessions().is_none());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (mut link, report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        link.write_all(b"garbage!garbage!").expect("write");
        assert!(lock(&report).protocol_error.is_some());
    }
}
