//! Batches of shell checks run in ONE throwaway L1 VM with nested KVM (`tests/nested/l1.sh`),
//! or directly on the host when it has real KVM.
//!
//! Several `#[test]`s share one boot through a per-file `static`:
//!
//! ```ignore
//! static RESULTS: OnceLock<BatchResults> = OnceLock::new();
//! fn results() -> &'static BatchResults {
//!     RESULTS.get_or_init(|| Batch::new("net").check("ping", "ping -c1 10.0.0.2").run())
//! }
//! #[test] fn ping() { results().get("ping").expect_success("ping"); }
//! ```

mod payload;
mod results;
mod script;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::kvm::{host_kind, HostKind};
pub use results::{BatchResults, CheckResult};
use script::Check;

/// Default per-check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(300);
/// Default limit for the whole L1 run (boot plus every check).
pub const DEFAULT_L1_TIMEOUT: Duration = Duration::from_secs(1200);
/// Default L1 memory.
pub const DEFAULT_L1_MEMORY_MIB: u32 = 4096;
const LOG_TAIL_LINES: usize = 40;
/// Console silence after which L1 counts as stalled (seconds): the runner prints a heartbeat
/// every [`script::HEARTBEAT_SECS`] while a check runs, so only a livelocked L1 stays silent
/// this long (a loaded one is late by seconds).
const STALL_LIMIT_SECS: u64 = script::HEARTBEAT_SECS + 150;

/// Where a batch's checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside an L1 VM under QEMU TCG whose /dev/kvm is nested kvm_amd.
    L1,
    /// Directly on this host (it has real KVM), in the batch's work directory.
    Host,
}

impl Mode {
    /// `PODVM_E2E_MODE=l1|host` if set, else [`Mode::Host`] on real KVM and [`Mode::L1`] otherwise.
    pub fn detect() -> Mode {
        match std::env::var("PODVM_E2E_MODE").as_deref() {
            Ok("l1") => Mode::L1,
            Ok("host") => Mode::Host,
            _ if host_kind() == HostKind::RealKvm => Mode::Host,
            _ => Mode::L1,
        }
    }
}

/// Why a batch could not run at all (individual check failures are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Preparing the work directory or payload failed.
    #[error("batch {batch}: cannot prepare {path}: {source}")]
    Prepare {
        /// The batch.
        batch: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The runner (l1.sh or the host shell) could not be started.
    #[error("batch {batch}: cannot start {program}: {source}")]
    Spawn {
        /// The batch.
        batch: String,
        /// What was started.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// l1.sh rejected its arguments or could not set up L1 (exit status 2).
    #[error("batch {batch}: l1.sh setup failed (status 2); see {log}:\n{tail}")]
    Setup {
        /// The batch.
        batch: String,
        /// Log with l1.sh's output.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
}

/// A named set of shell checks plus the payload they need; see the module docs.
#[derive(Debug, Clone)]
pub struct Batch {
    name: String,
    checks: Vec<Check>,
    payload: Vec<payload::Item>,
    host_tools: Vec<PathBuf>,
    memory_mib: u32,
    timeout: Duration,
    check_timeout: Duration,
    mode: Option<Mode>,
}

impl Batch {
    /// A new, empty batch; `name` (letters, digits, `_-.`) names its work directory.
    pub fn new(name: &str) -> Batch {
        assert!(script::valid_name(name), "invalid batch name {name:?}");
        Batch {
            name: name.to_owned(),
            checks: Vec::new(),
            payload: Vec::new(),
            host_tools: Vec::new(),
            memory_mib: DEFAULT_L1_MEMORY_MIB,
            timeout: DEFAULT_L1_TIMEOUT,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            mode: None,
        }
    }

    /// Adds check `name` running `command` under `sh` with cwd = payload root, `$PAYLOAD` set and
    /// `$PAYLOAD/bin` first on PATH. In L1, busybox applets shadow host tools: use full paths.
    pub fn check(self, name: &str, command: &str) -> Batch {
        let limit = self.check_timeout;
        self.check_with_timeout(name, command, limit)
    }

    /// Like [`Batch::check`] with its own timeout (whole seconds, at least 1).
    pub fn check_with_timeout(mut self, name: &str, command: &str, limit: Duration) -> Batch {
        assert!(script::valid_name(name), "invalid check name {name:?}");
        assert!(
            self.checks.iter().all(|c| c.name != name),
            "duplicate check name {name:?} in batch {}",
            self.name
        );
        self.checks.push(Check {
            name: name.to_owned(),
            command: command.to_owned(),
            timeout_secs: limit.as_secs().max(1),
        });
        self
    }

    /// Copies host file `src` to `<payload>/<dest_rel>` (mode preserved).
    pub fn payload_file(mut self, src: impl AsRef<Path>, dest_rel: impl AsRef<Path>) -> Batch {
        self.payload.push(payload::Item::file(src, dest_rel));
        self
    }

    /// Copies host directory `src` recursively to `<payload>/<dest_rel>`.
    pub fn payload_dir(mut self, src: impl AsRef<Path>, dest_rel: impl AsRef<Path>) -> Batch {
        self.payload.push(payload::Item::dir(src, dest_rel));
        self
    }

    /// Writes `data` to `<payload>/<dest_rel>` (mode 0644).
    pub fn payload_bytes(mut self, dest_rel: impl AsRef<Path>, data: impl Into<Vec<u8>>) -> Batch {
        self.payload
            .push(payload::Item::bytes(dest_rel, data, false));
        self
    }

    /// Writes `data` to `<payload>/<dest_rel>` as an executable (mode 0755), e.g. a script in `bin/`.
    pub fn payload_executable(
        mut self,
        dest_rel: impl AsRef<Path>,
        data: impl Into<Vec<u8>>,
    ) -> Batch {
        self.payload
            .push(payload::Item::bytes(dest_rel, data, true));
        self
    }

    /// Makes host file or directory `path` (with its executables' shared libraries) available
    /// in L1 at the same absolute path (`l1.sh -b`). No effect in host mode.
    pub fn host_tool(mut self, path: impl AsRef<Path>) -> Batch {
        self.host_tools.push(path.as_ref().to_path_buf());
        self
    }

    /// L1 memory in MiB (default 4096).
    pub fn memory_mib(mut self, mib: u32) -> Batch {
        self.memory_mib = mib;
        self
    }

    /// Limit for the whole L1 run, boot included (default 1200 s).
    pub fn timeout(mut self, limit: Duration) -> Batch {
        self.timeout = limit;
        self
    }

    /// Default timeout for checks added after this call (default 300 s).
    pub fn default_check_timeout(mut self, limit: Duration) -> Batch {
        self.check_timeout = limit;
        self
    }

    /// Forces where the checks run instead of [`Mode::detect`].
    pub fn mode(mut self, mode: Mode) -> Batch {
        self.mode = Some(mode);
        self
    }

    /// Runs every check; panics (with the reason) only if the batch could not run at all.
    pub fn run(self) -> BatchResults {
        match self.try_run() {
            Ok(results) => results,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs every check in sequence in one L1 boot (or on the host) and collects the results.
    /// An L1 that stalled or crashed (nested KVM under TCG occasionally livelocks, below podvm)
    /// is retried once in a fresh L1, with a printed note; a second failure is reported as is.
    pub fn try_run(self) -> Result<BatchResults, BatchError> {
        let first = self.try_run_once()?;
        if first.mode() != Mode::L1 || first.status().is_some() {
            return Ok(first);
        }
        let kept = work_root().join(format!("{}-stalled-l1-console.log", self.name));
        let _ = std::fs::copy(first.work_dir().join("l1-console.log"), &kept);
        let diag = first.work_dir().join("l1-console.log.stall-diag");
        let _ = std::fs::copy(&diag, kept.with_extension("stall-diag"));
        eprintln!(
            "batch {}: NOTE: L1 stalled or crashed (no exit status; console kept at {}); \
             retrying the whole batch once in a fresh L1",
            self.name,
            kept.display()
        );
        self.try_run_once()
    }

    fn try_run_once(&self) -> Result<BatchResults, BatchError> {
        let mode = self.mode.unwrap_or_else(Mode::detect);
        let work = work_root().join(&self.name);
        let payload_dir = work.join("payload");
        self.prepare(&work, &payload_dir)?;
        let started = Instant::now();
        eprintln!(
            "batch {}: running {} checks in {mode:?} mode (work dir {})",
            self.name,
            self.checks.len(),
            work.display()
        );
        let (status, results_dir, log) = match mode {
            Mode::L1 => (
                self.run_l1(&work, &payload_dir)?,
                work.join("results"),
                work.join("l1-console.log"),
            ),
            Mode::Host => (
                self.run_host(&work, &payload_dir)?,
                payload_dir.join("results"),
                work.join("host-run.log"),
            ),
        };
        let elapsed = started.elapsed();
        eprintln!(
            "batch {}: finished in {elapsed:.1?}, runner status {status:?}",
            self.name
        );
        let names: Vec<String> = self.checks.iter().map(|c| c.name.clone()).collect();
        self.report_retries(&results::retried(&results_dir, &names));
        Ok(BatchResults {
            checks: results::collect(&results_dir, &names),
            log_tail: results::tail(&log, LOG_TAIL_LINES),
            name: self.name.clone(),
            mode,
            work_dir: work,
            status,
            elapsed,
        })
    }

    /// Prints each check the runner retried with its first attempt's evidence, and appends
    /// them to [`RETRIES_LOG`] under [`work_root`], which `make test` sums up at the end of a
    /// run so that a rise in silent guest deaths shows.
    fn report_retries(&self, retried: &[(String, String)]) {
        if retried.is_empty() {
            return;
        }
        eprintln!(
            "batch {}: {} of {} checks retried after a silent guest death",
            self.name,
            retried.len(),
            self.checks.len()
        );
        let mut log = String::new();
        for (check, evidence) in retried {
            eprintln!(
                "batch {}: check {check}: first attempt:\n{evidence}",
                self.name
            );
            let first_line = evidence.lines().next().unwrap_or("(no podvm line)");
            log.push_str(&format!("{}/{check}: {first_line}\n", self.name));
        }
        let path = work_root().join(RETRIES_LOG);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, log.as_bytes()));
        if let Err(err) = appended {
            eprintln!(
                "batch {}: cannot append to {}: {err}",
                self.name,
                path.display()
            );
        }
    }

    /// Fresh work dir with the payload, one script per check and the runner.
    fn prepare(&self, work: &Path, payload_dir: &Path) -> Result<(), BatchError> {
        let err = |path: &Path| {
            let batch = self.name.clone();
            let path = path.to_path_buf();
            move |source| BatchError::Prepare {
                batch,
                path,
                source,
            }
        };
        if work.exists() {
            std::fs::remove_dir_all(work).map_err(err(work))?;
        }
        let checks_dir = payload_dir.join(".batch/checks");
        std::fs::create_dir_all(&checks_dir).map_err(err(&checks_dir))?;
        for item in &self.payload {
            item.stage(payload_dir)
                .map_err(|(path, source)| BatchError::Prepare {
                    batch: self.name.clone(),
                    path,
                    source,
                })?;
        }
        for check in &self.checks {
            let path = checks_dir.join(format!("{}.sh", check.name));
            std::fs::write(&path, format!("{}\n", check.command)).map_err(err(&path))?;
        }
        let runner = payload_dir.join(".batch/run.sh");
        std::fs::write(&runner, script::runner(&self.name, &self.checks)).map_err(err(&runner))
    }

    fn run_l1(&self, work: &Path, payload_dir: &Path) -> Result<Option<i32>, BatchError> {
        let l1 = super::artifacts::repo_root().join("tests/nested/l1.sh");
        let log = work.join("l1.out");
        let mut cmd = Command::new("bash");
        cmd.arg(&l1)
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-t")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg("-s")
            .arg(STALL_LIMIT_SECS.to_string())
            .arg("-l")
            .arg(work.join("l1-console.log"));
        for tool in &self.host_tools {
            cmd.arg("-b").arg(tool);
        }
        cmd.arg(payload_dir)
            .arg(work.join("results"))
            .args(["--", "sh", "/payload/.batch/run.sh"]);
        let status = self.spawn_logged(cmd, &log, "tests/nested/l1.sh")?;
        match status {
            Some(2) => Err(BatchError::Setup {
                batch: self.name.clone(),
                tail: results::tail(&log, LOG_TAIL_LINES),
                log,
            }),
            Some(124) | None => Ok(None),
            other => Ok(other),
        }
    }

    fn run_host(&self, work: &Path, payload_dir: &Path) -> Result<Option<i32>, BatchError> {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut cmd = Command::new("sh");
        cmd.arg(payload_dir.join(".batch/run.sh"))
            .current_dir(payload_dir)
            .env("PAYLOAD", payload_dir)
            .env(
                "PATH",
                format!("{}:{path}", payload_dir.join("bin").display()),
            );
        self.spawn_logged(cmd, &work.join("host-run.log"), "sh (host runner)")
    }

    /// Runs `cmd` with stdin closed and stdout+stderr appended to `log`; returns its exit code.
    fn spawn_logged(
        &self,
        mut cmd: Command,
        log: &Path,
        program: &str,
    ) -> Result<Option<i32>, BatchError> {
        let spawn_err = |source| BatchError::Spawn {
            batch: self.name.clone(),
            program: program.to_owned(),
            source,
        };
        let out = std::fs::File::create(log).map_err(|source| BatchError::Prepare {
            batch: self.name.clone(),
            path: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(spawn_err)?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(spawn_err)?;
        Ok(status.code())
    }
}

/// The file under [`work_root`] where every batch of a run appends the checks it retried.
pub const RETRIES_LOG: &str = "retries.log";

/// `$PODVM_E2E_WORK_DIR`, else `<cargo target tmpdir>/nested`: one subdirectory per batch,
/// kept after the run for debugging and replaced by the next run.
pub fn work_root() -> PathBuf {
    match std::env::var_os("PODVM_E2E_WORK_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nested"),
    }
}
