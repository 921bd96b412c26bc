//! The host side of a session beyond output: podvm's stdin pumped to the app (EOF becomes
//! `StdinClose`), signals to podvm forwarded to the app as `Signal` frames (SIGTERM/SIGINT/SIGQUIT
//! with a stop timeout after which the caller stops the session hard; SIGHUP/SIGUSR1/SIGUSR2 as
//! they are, e.g. a reload under systemd), SIGWINCH forwarded as `Resize`,
//! and the host terminal in raw mode for tty sessions (restored on every way out).
//!
//! Signals are blocked in the thread that starts the relay (and so in every thread it starts
//! afterwards, e.g. the vCPUs) and read from a signalfd by the relay's signal thread. A
//! [`SignalInjector`] hands that thread signals as if podvm had received them (the control
//! socket's `stop`).

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use podvm_protocol::{Control, Message, Stream};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::agent_link::HostWriter;

/// Default time between forwarding a stop signal and stopping the session hard.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest stdin chunk per frame.
const STDIN_CHUNK: usize = 32 * 1024;
/// How often the stdin thread looks whether it should give up waiting for the agent.
const CONNECT_POLL: Duration = Duration::from_millis(100);
/// The signals podvm forwards to the app that ask it to stop: the stop timeout starts.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];
/// The signals podvm forwards to the app and nothing more (reload, log rotation, ...).
const PLAIN_SIGNALS: [Signal; 3] = [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];

/// How a session's stdin, signals and terminal are relayed.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Pump podvm's stdin to the app; otherwise the app's stdin is closed at once (unless
    /// `hold_stdin`).
    pub forward_stdin: bool,
    /// Without `forward_stdin`: leave the app's stdin open (a detached pod's attached clients
    /// feed it) instead of closing it.
    pub hold_stdin: bool,
    /// Forward podvm's signals to the app; otherwise they act on podvm as usual (SIGINT ends
    /// `podvm attach --sig-proxy=false` and leaves the pod running).
    pub forward_signals: bool,
    /// The app runs on a pty: raw host terminal, window size forwarded.
    pub tty: bool,
    /// Time between forwarding a stop signal and stopping the session hard.
    pub stop_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            forward_stdin: false,
            hold_stdin: false,
            forward_signals: true,
            tty: false,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }
}

impl RelayOptions {
    /// The command-line rule: stdin is forwarded unless it is a terminal and neither
    /// `--interactive` nor `--tty` was given.
    pub fn for_cli(interactive: bool, tty: bool, stop_timeout: Duration) -> Self {
        Self {
            forward_stdin: tty || interactive || !std::io::stdin().is_terminal(),
            tty,
            stop_timeout,
            ..Self::default()
        }
    }
}

/// Errors while starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Signals could not be routed to the relay.
    #[error("cannot watch for signals to forward to the app: {0}")]
    Signals(Errno),
    /// A thread or eventfd could not be created.
    #[error("cannot start the stdin/signal relay: {0}")]
    Thread(std::io::Error),
    /// The host terminal could not be put into raw mode.
    #[error("cannot put the terminal into raw mode for --tty: {0}")]
    Terminal(Errno),
}

/// The running relay threads.
pub struct Relay {
    stopping: Arc<AtomicBool>,
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
    timed_out: Arc<Mutex<Option<i32>>>,
    old_mask: SigSet,
    terminal: Option<RawTerminal>,
    injector: SignalInjector,
}

/// Hands the relay signals as if podvm had received them: forwarded to the app, and a stop
/// signal starts the stop timeout. Sending after the relay finished fails.
#[derive(Debug, Clone)]
pub struct SignalInjector {
    pipe: Arc<OwnedFd>,
}

impl SignalInjector {
    /// Passes `signo` to the relay.
    pub fn send(&self, signo: i32) -> std::io::Result<()> {
        // Four bytes to a pipe are written whole or not at all.
        match nix::unistd::write(self.pipe.as_fd(), &signo.to_ne_bytes())? {
            4 => Ok(()),
            _ => Err(std::io::ErrorKind::WriteZero.into()),
        }
    }
}

impl Relay {
    /// Blocks the forwarded signals in this thread and starts the stdin and signal threads;
    /// `on_timeout` runs once if the session has not ended `stop_timeout` after the first
    /// forwarded stop signal.
    pub fn start(
        options: &RelayOptions,
        writer: Arc<HostWriter>,
        on_timeout: Box<dyn FnOnce() + Send>,
    ) -> Result<Self, RelayError> {
        let terminal = match options.tty && std::io::stdin().is_terminal() {
            true => Some(RawTerminal::enter().map_err(RelayError::Terminal)?),
            false => None,
        };
        let mut mask = SigSet::empty();
        if options.forward_signals {
            for signal in STOP_SIGNALS.iter().chain(&PLAIN_SIGNALS) {
                mask.add(*signal);
            }
            mask.add(Signal::SIGWINCH);
        }
        let mut old_mask = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))
            .map_err(RelayError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(RelayError::Signals)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(RelayError::Thread)?);
        let (injected, injector) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|errno| RelayError::Thread(errno.into()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let timed_out = Arc::new(Mutex::new(None));
        let mut relay = Self {
            stopping: stopping.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            timed_out: timed_out.clone(),
            old_mask,
            terminal,
            injector: SignalInjector {
                pipe: Arc::new(injector),
            },
        };
        let stdin_thread = StdinPump {
            writer: writer.clone(),
            stop: stop.clone(),
            stopping,
            forward: options.forward_stdin,
            hold: options.hold_stdin && !options.forward_stdin,
            tty: options.tty,
        };
        relay.spawn("relay-stdin", move || stdin_thread.run())?;
        let signal_thread = SignalForwarder {
            signals,
            injected: File::from(injected),
            stop,
            writer,
            tty: options.tty,
            stop_timeout: options.stop_timeout,
            timed_out,
            on_timeout: Some(on_timeout),
        };
        relay.spawn("relay-signals", move || signal_thread.run())?;
        Ok(relay)
    }

    /// A handle that passes signals to this relay.
    pub fn injector(&self) -> SignalInjector {
        self.injector.clone()
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), RelayError> {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(RelayError::Thread)?;
        self.threads.push(handle);
        Ok(())
    }

    /// Stops the threads, restores the terminal and the signal mask. Returns the forwarded
    /// signal whose stop timeout ran out, if it did.
    pub fn finish(mut self) -> Option<i32> {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        drop(self.terminal.take());
        let timed_out = *self
            .timed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
        timed_out
    }
}

/// Pumps podvm's stdin to the app once the agent is connected.
struct StdinPump {
    writer: Arc<HostWriter>,
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    forward: bool,
    hold: bool,
    tty: bool,
}

impl StdinPump {
    fn run(self) {
        while !self.writer.wait_connected(CONNECT_POLL) {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
        }
        if self.tty {
            send_window_size(&self.writer);
        }
        if self.forward {
            self.pump();
        }
        if !self.hold {
            let _ = self.writer.send(&Message::Control(Control::StdinClose));
        }
    }

    fn pump(&self) {
        let Ok(stdin) = std::io::stdin().as_fd().try_clone_to_owned() else {
            return;
        };
        let mut stdin = File::from(stdin);
        let mut buffer = vec![0u8; STDIN_CHUNK];
        loop {
            if !wait_readable(stdin.as_fd(), &self.stop) {
                return;
            }
            let n = match stdin.read(&mut buffer) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                return;
            }
            let data = Message::Data(Stream::Stdin, buffer[..n].to_vec());
            if self.writer.send(&data).is_err() {
                return;
            }
        }
    }
}

/// Waits until `fd` is readable (true) or the relay stops or the poll fails (false).
fn wait_readable(fd: BorrowedFd<'_>, stop: &EventFd) -> bool {
    crate::stoppable::wait_readable(fd, stop).unwrap_or(false)
}

/// Forwards podvm's signals (and injected ones) to the app and runs the stop timeout.
struct SignalForwarder {
    signals: SignalFd,
    /// The read end of the [`SignalInjector`]'s pipe: signal numbers, native-endian `i32`s.
    injected: File,
    stop: Arc<EventFd>,
    writer: Arc<HostWriter>,
    tty: bool,
    stop_timeout: Duration,
    timed_out: Arc<Mutex<Option<i32>>>,
    on_timeout: Option<Box<dyn FnOnce() + Send>>,
}

impl SignalForwarder {
    fn run(mut self) {
        let mut deadline: Option<(Instant, i32)> = None;
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some((at, _)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left + Duration::from_millis(1))
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            // SAFETY: `self.stop` owns this descriptor and outlives the borrow (this loop turn).
            let stop_fd = unsafe { BorrowedFd::borrow_raw(self.stop.as_raw_fd()) };
            let mut fds = [
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_fd, PollFlags::POLLIN),
                PollFd::new(self.injected.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
            if fds[1].revents().is_some_and(|events| !events.is_empty()) {
                return;
            }
            if let Some((at, signo)) = deadline {
                if Instant::now() >= at {
                    self.time_out(signo);
                    deadline = None;
                }
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                self.received(i32::try_from(info.ssi_signo).unwrap_or(0), &mut deadline);
            }
            let mut signo = [0u8; 4];
            while let Ok(4) = self.injected.read(&mut signo) {
                self.received(i32::from_ne_bytes(signo), &mut deadline);
            }
        }
    }

    /// Handles signal `signo`: a window size change, or a signal to forward (a stop signal
    /// starts the stop timeout `deadline` if it does not run yet).
    fn received(&self, signo: i32, deadline: &mut Option<(Instant, i32)>) {
        if signo == Signal::SIGWINCH as i32 {
            if self.tty {
                send_window_size(&self.writer);
            }
            return;
        }
        self.forward(signo);
        if is_stop_signal(signo) && self.on_timeout.is_some() && deadline.is_none() {
            *deadline = Some((Instant::now() + self.stop_timeout, signo));
        }
    }

    /// Sends the signal from a short-lived thread, so a blocked connection (an app that does
    /// not read its stdin) cannot hold up the stop timeout.
    fn forward(&self, signo: i32) {
        let writer = self.writer.clone();
        let _ = std::thread::Builder::new()
            .name("relay-signal".into())
            .spawn(move || {
                if writer
                    .send(&Message::Control(Control::Signal { signo }))
                    .is_err()
                {
                    eprintln!("podvm: could not forward signal {signo} to the app (not connected)");
                }
            });
    }

    fn time_out(&mut self, signo: i32) {
        if let Some(on_timeout) = self.on_timeout.take() {
            eprintln!(
                "podvm: the app did not stop within {:?} of signal {signo}; stopping it hard",
                self.stop_timeout
            );
            *self
                .timed_out
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(signo);
            on_timeout();
        }
    }
}

/// Whether `signo` asks the app to stop (and so starts the stop timeout).
fn is_stop_signal(signo: i32) -> bool {
    STOP_SIGNALS.iter().any(|signal| *signal as i32 == signo)
}

/// Sends the host terminal's size as a `Resize`, if stdin is a terminal.
fn send_window_size(writer: &HostWriter) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which is valid for the call.
    let result = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    if result == 0 && size.ws_row > 0 {
        let _ = writer.send(&Message::Control(Control::Resize {
            rows: size.ws_row,
            cols: size.ws_col,
        }));
    }
}

/// The host terminal in raw mode; the saved mode comes back on drop.
struct RawTerminal {
    tty: File,
    saved: Termios,
}

impl RawTerminal {
    /// Puts podvm's stdin into raw mode.
    fn enter() -> Result<Self, Errno> {
        let tty = File::from(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(0)))?,
        );
        Self::enter_on(tty)
    }

    /// Puts `tty` into raw mode until dropped.
    fn enter_on(tty: File) -> Result<Self, Errno> {
        let saved = termios::tcgetattr(&tty)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&tty, SetArg::TCSANOW, &raw)?;
        Ok(Self { tty, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.tty, SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::termios::{LocalFlags, OutputFlags};

    use super::*;

    #[test]
    fn raw_mode_is_undone_on_drop() {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = File::from(pty.slave);
        let before = termios::tcgetattr(&slave).expect("tcgetattr");
        assert!(before
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO));
        let raw = RawTerminal::enter_on(slave.try_clone().expect("dup")).expect("raw");
        let during = termios::tcgetattr(&slave).expect("tcgetattr");
        assert!(!during
            .local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG));
        assert!(!during.output_flags.contains(OutputFlags::OPOST));
        drop(raw);
        let after = termios::tcgetattr(&slave).expect("tcgetattr");
        assert_eq!(after.local_flags, before.local_flags);
        assert_eq!(after.output_flags, before.output_flags);
    }

    #[test]
    fn only_term_int_and_quit_start_the_stop_timeout() {
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            assert!(is_stop_signal(signal as i32), "{signal}");
        }
        for signal in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
        ] {
            assert!(!is_stop_signal(signal as i32), "{signal}");
        }
    }

    #[test]
    fn an_injected_stop_signal_is_forwarded_and_starts_the_stop_timeout() {
        use std::os::unix::net::UnixStream;
        let writer = HostWriter::new();
        let (host, mut agent) = UnixStream::pair().expect("pair");
        writer.connect(File::from(OwnedFd::from(host)));
        let (fired, timed_out) = std::sync::mpsc::channel();
        let options = RelayOptions {
            stop_timeout: Duration::from_millis(100),
            ..RelayOptions::default()
        };
        let on_timeout = Box::new(move || fired.send(()).expect("send"));
        let relay = Relay::start(&options, writer, on_timeout).expect("relay");
        relay.injector().send(libc::SIGTERM).expect("inject");
        timed_out
            .recv_timeout(Duration::from_secs(10))
            .expect("the stop timeout ran");
        let injector = relay.injector();
        assert_eq!(relay.finish(), Some(libc::SIGTERM));
        assert!(injector.send(libc::SIGTERM).is_err(), "the relay is gone");
        agent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(Message::read_from(&mut agent).expect("frame").expect("one"));
        }
        assert!(
            got.contains(&Message::Control(Control::Signal {
                signo: libc::SIGTERM
            })),
            "{got:?}"
        );
        assert!(
            got.contains(&Message::Control(Control::StdinClose)),
            "{got:?}"
        );
    }

    #[test]
    fn stdin_is_forwarded_unless_it_is_an_unasked_terminal() {
        let options = RelayOptions::for_cli(true, false, DEFAULT_STOP_TIMEOUT);
        assert!(options.forward_stdin && !options.tty);
        let options = RelayOptions::for_cli(false, true, Duration::from_secs(3));
        assert!(options.forward_stdin && options.tty);
        assert_eq!(options.stop_timeout, Duration::from_secs(3));
        let options = RelayOptions::for_cli(false, false, DEFAULT_STOP_TIMEOUT);
        assert_eq!(options.forward_stdin, !std::io::stdin().is_terminal());
        assert!(!RelayOptions::default().forward_stdin);
    }
}
