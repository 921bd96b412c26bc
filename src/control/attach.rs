//! Attaching to a VM's app (`podvm attach`): the app's output, as podvm's own terminal would
//! show it, fanned out to the attached clients ([`OutputHub`]), each through a queue of at most
//! [`CLIENT_BACKLOG`] bytes, so that a client that does not read is cut off instead of holding
//! the app up. When the VM ends, each client gets the app's exit last.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podvm_protocol::{Control, ExitStatus, Message, Stream};

/// Most bytes of output queued for one attached client before it is cut off.
pub const CLIENT_BACKLOG: usize = 4 << 20;
/// After the VM ended, how long the attached clients' last output may take to go out.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The app's output for attached clients.
#[derive(Debug, Default)]
pub struct OutputHub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    clients: Vec<Arc<ClientQueue>>,
    ended: bool,
}

impl OutputHub {
    /// A new client's queue; `None` once the VM ended.
    pub fn subscribe(&self) -> Option<Arc<ClientQueue>> {
        let mut state = lock(&self.state);
        if state.ended {
            return None;
        }
        let queue = Arc::new(ClientQueue::default());
        state.clients.push(queue.clone());
        Some(queue)
    }

    /// Whether the VM ended.
    pub fn has_ended(&self) -> bool {
        lock(&self.state).ended
    }

    /// Passes `bytes` of `stream` to every client; clients that are gone or too far behind are
    /// dropped.
    pub fn publish(&self, stream: Stream, bytes: &[u8]) {
        let mut state = lock(&self.state);
        if state.clients.is_empty() {
            return;
        }
        let message = Message::Data(stream, bytes.to_vec());
        state
            .clients
            .retain(|client| client.push(message.clone(), bytes.len()));
    }

    /// The VM ended (with `status`, if known): every client gets it last, and has up to
    /// [`DRAIN_LIMIT`] to receive what is queued for it.
    pub fn end(&self, status: Option<ExitStatus>) {
        let clients = {
            let mut state = lock(&self.state);
            state.ended = true;
            std::mem::take(&mut state.clients)
        };
        let deadline = Instant::now() + DRAIN_LIMIT;
        for client in &clients {
            if let Some(status) = status {
                let oom_kills = 0;
                client.push(Message::Control(Control::Exited { status, oom_kills }), 0);
            }
            client.close();
        }
        for client in &clients {
            client.wait_sent(deadline);
        }
    }
}

/// One attached client's output, queued until its connection takes it.
#[derive(Debug, Default)]
pub struct ClientQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Message>,
    bytes: usize,
    /// Nothing more will come (the VM ended, or the client was cut off or left).
    closed: bool,
    /// The client's connection took everything (or is gone).
    done: bool,
}

/// What [`ClientQueue::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A frame for the client.
    Frame(Message),
    /// Nothing within the wait.
    Idle,
    /// Nothing more will come.
    Closed,
}

impl ClientQueue {
    /// Queues `message` (`bytes` of output); false, and the queue closed and emptied, when
    /// that would pass [`CLIENT_BACKLOG`] or the client left.
    fn push(&self, message: Message, bytes: usize) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            return false;
        }
        if state.bytes + bytes > CLIENT_BACKLOG {
            state.frames.clear();
            state.closed = true;
            self.changed.notify_all();
            return false;
        }
        state.bytes += bytes;
        state.frames.push_back(message);
        self.changed.notify_all();
        true
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// Waits up to `wait` for the next frame.
    pub fn next(&self, wait: Duration) -> Next {
        let state = lock(&self.state);
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, wait, |state| {
                state.frames.is_empty() && !state.closed
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.frames.pop_front() {
            Some(message) => {
                if let Message::Data(_, bytes) = &message {
                    state.bytes -= bytes.len();
                }
                Next::Frame(message)
            }
            None if state.closed => Next::Closed,
            None => Next::Idle,
        }
    }

    /// The client's connection ended (everything sent, or the client is gone).
    pub fn finish(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.done = true;
        state.frames.clear();
        self.changed.notify_all();
    }

    fn wait_sent(&self, deadline: Instant) {
        let state = lock(&self.state);
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .changed
            .wait_timeout_while(state, left, |state| !state.done);
    }
}

/// Where the app's output goes besides its log: podvm's own stdout and stderr unless the VM
/// runs detached, and the attached clients when the VM has a control socket.
#[derive(Debug, Clone, Default)]
pub struct AppTerminal {
    /// The VM runs in the background: its output is for the logs and attached clients only.
    pub detached: bool,
    /// The attached clients.
    pub hub: Option<Arc<OutputHub>>,
}

impl AppTerminal {
    /// A writer for the app's `stream` (stdout or stderr).
    pub fn writer(&self, stream: Stream) -> Box<dyn Write + Send> {
        let own: Option<Box<dyn Write + Send>> = match (self.detached, stream) {
            (true, _) => None,
            (false, Stream::Stderr) => Some(Box::new(io::stderr())),
            (false, _) => Some(Box::new(io::stdout())),
        };
        match &self.hub {
            None => own.unwrap_or_else(|| Box::new(io::sink())),
            Some(hub) => Box::new(TerminalWriter {
                own,
                hub: hub.clone(),
                stream,
            }),
        }
    }
}

/// The app's output to podvm's own stream (if any) and to the attached clients.
struct TerminalWriter {
    own: Option<Box<dyn Write + Send>>,
    hub: Arc<OutputHub>,
    stream: Stream,
}

impl Write for TerminalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(own) = &mut self.own {
            own.write_all(buf)?;
        }
        self.hub.publish(self.stream, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.own {
            Some(own) => own.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &ClientQueue) -> Vec<Message> {
        let mut got = Vec::new();
        while let Next::Frame(message) = queue.next(Duration::from_millis(10)) {
            got.push(message);
        }
        got
    }

    #[test]
    fn clients_get_output_from_when_they_attach_then_the_exit() {
        let hub = OutputHub::default();
        hub.publish(Stream::Stdout, b"before");
        let client = hub.subscribe().expect("subscribe");
        hub.publish(Stream::Stdout, b"one");
        hub.publish(Stream::Stderr, b"two");
        let reader = {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match client.next(Duration::from_secs(5)) {
                        Next::Frame(message) => got.push(message),
                        Next::Idle => {}
                        Next::Closed => break,
                    }
                }
                client.finish();
                got
            })
        };
        hub.end(Some(ExitStatus::Code(3)));
        assert_eq!(
            reader.join().expect("reader"),
            [
                Message::Data(Stream::Stdout, b"one".to_vec()),
                Message::Data(Stream::Stderr, b"two".to_vec()),
                Message::Control(Control::Exited {
                    status: ExitStatus::Code(3),
                    oom_kills: 0,
                }),
            ]
        );
        assert!(hub.subscribe().is_none(), "nothing to attach to any more");
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_off_and_holds_nothing_up() {
        let hub = OutputHub::default();
        let slow = hub.subscribe().expect("subscribe");
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..(CLIENT_BACKLOG / chunk.len() + 2) {
            hub.publish(Stream::Stdout, &chunk);
        }
        assert_eq!(slow.next(Duration::ZERO), Next::Closed, "cut off, emptied");
        assert!(lock(&hub.state).clients.is_empty());
        let started = Instant::now();
        hub.end(None);
        assert!(started.elapsed() < DRAIN_LIMIT + Duration::from_secs(1));
        let late = OutputHub::default();
        let client = late.subscribe().expect("subscribe");
        client.finish();
        late.publish(Stream::Stdout, b"after leaving");
        assert!(drain(&client).is_empty());
    }
}
