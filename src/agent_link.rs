//! Host end of the agent channel: decodes the agent's frames as the guest writes them and
//! dispatches them (app output to our stdout/stderr, status and errors into [`LinkReport`]).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use podvm_protocol::{Control, ExitStatus, FrameDecoder, Message, Stream};

/// What the agent told the host over the whole run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The agent said it was up.
    pub agent_ready: bool,
    /// How the workload ended, if the agent said so.
    pub exit: Option<ExitStatus>,
    /// Errors the agent reported.
    pub agent_errors: Vec<String>,
    /// The first protocol violation, after which the channel is ignored.
    pub protocol_error: Option<String>,
}

/// A `Write` sink for the guest side of the channel that decodes frames as they arrive.
pub struct AgentLink {
    decoder: FrameDecoder,
    report: Arc<Mutex<LinkReport>>,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
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
        };
        (link, report)
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
            Message::Data(Stream::Stdin, _) => Ok(()),
            Message::Control(control) => {
                let mut report = lock(&self.report);
                match control {
                    Control::Ready { .. } => report.agent_ready = true,
                    Control::Exited { status } => report.exit = Some(status),
                    Control::Error { message } => report.agent_errors.push(message),
                }
                Ok(())
            }
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
            match self.decoder.next_message() {
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

/// Locks the report; a poisoned lock still holds valid data (the writer only sets fields).
pub fn lock(report: &Mutex<LinkReport>) -> std::sync::MutexGuard<'_, LinkReport> {
    report
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    fn garbage_is_a_protocol_error() {
        let (mut link, report) = AgentLink::new(Box::new(io::sink()), Box::new(io::sink()));
        link.write_all(b"garbage!garbage!").expect("write");
        assert!(lock(&report).protocol_error.is_some());
    }
}
