//! `podvm logs`: replays an app's recorded stdout and stderr, optionally following a running pod.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::pod::logs::{self, LogRecord, LogStream};
use crate::pod::{lock, PodError, PodStore};

/// How often `--follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Flags of `podvm logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod (a unique uuid prefix).
    uuid: String,
    /// The app whose output to show; needed when the pod has several.
    #[arg(long)]
    app: Option<String>,
    /// Keep printing new output until the pod exits.
    #[arg(short, long)]
    follow: bool,
}

/// Runs `podvm logs`: the app's stdout to stdout and its stderr to stderr.
pub fn logs(data_dir: &Path, args: LogsArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    // Read where the pod is when it is read: a concurrent `gc` may move it meanwhile.
    let (pod, app, opened) = pods.read_settled(&args.uuid, |pod| {
        let manifest = pods.manifest(pod)?;
        let app = crate::pod::select_app(&pod.uuid, &manifest, args.app.as_deref())?
            .name
            .clone();
        let opened = File::open(logs::path(&pod.dir, &app));
        Ok((pod.clone(), app, opened))
    })?;
    let path = logs::path(&pod.dir, &app);
    let Ok(file) = opened else {
        eprintln!("podvm: pod {} app {app} has no output yet", pod.uuid);
        return Ok(ExitCode::SUCCESS);
    };
    let mut reader = BufReader::new(file);
    let io_err = |source| PodError::Io {
        what: "cannot read the app log",
        path: path.clone(),
        source,
    };
    loop {
        // Decide before reading, so output written just before the pod ended is not missed.
        let running = args.follow && lock::is_locked(&pod.dir);
        logs::replay(&mut reader, &mut emit).map_err(io_err)?;
        if !running {
            report_dropped(&path);
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn emit(record: &LogRecord) -> std::io::Result<()> {
    let bytes = record.bytes();
    match record.stream {
        LogStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()
        }
        LogStream::Stderr => std::io::stderr().write_all(&bytes),
    }
}

/// Says on stderr, after the output, when the app's log reached its cap and dropped output.
fn report_dropped(path: &Path) {
    let (dropped, cap) = logs::dropped(path);
    if dropped > 0 {
        eprintln!(
            "podvm: {dropped} bytes of output were dropped after the {} log cap \
             (`podvm run --log-max` sets it)",
            logs::human_size(cap)
        );
    }
}
