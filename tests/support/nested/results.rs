//! Results of a batch: one [`CheckResult`] per check, read back from `results/<name>.{out,err,rc}`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Mode;

/// What one check printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Everything the check wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything the check wrote to stderr (lossy UTF-8).
    pub stderr: String,
    /// Exit status; 124 if the check's own timeout fired.
    pub code: i32,
}

impl CheckResult {
    /// Panics with the check's output unless it exited 0; returns `self` for chaining.
    pub fn expect_success(&self, name: &str) -> &Self {
        assert_eq!(self.code, 0, "check `{name}` failed:\n{self}");
        self
    }

    /// Panics with the check's output unless it exited 0 and printed exactly `expected`, line
    /// by line; returns `self` for chaining.
    pub fn expect_lines(&self, expected: &[&str]) -> &Self {
        assert_eq!(self.code, 0, "check failed:\n{self}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines, expected, "unexpected output:\n{self}");
        self
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit code: {}", self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// The outcome of [`super::Batch::run`]: every check that produced an exit code, plus context.
#[derive(Debug)]
pub struct BatchResults {
    pub(super) name: String,
    pub(super) mode: Mode,
    pub(super) work_dir: PathBuf,
    pub(super) checks: BTreeMap<String, CheckResult>,
    pub(super) status: Option<i32>,
    pub(super) log_tail: String,
    pub(super) elapsed: Duration,
}

impl BatchResults {
    /// The result of check `name`; panics with the L1 console tail if it has none
    /// (the VM crashed or timed out before the check finished, or the name is wrong).
    pub fn get(&self, name: &str) -> &CheckResult {
        match self.checks.get(name) {
            Some(result) => result,
            None => panic!(
                "batch `{}` has no result for check `{name}` ({:?} mode, runner status {:?}, \
                 {:.0?}; work dir {}; checks with results: {:?})\n--- log tail ---\n{}",
                self.name,
                self.mode,
                self.status,
                self.elapsed,
                self.work_dir.display(),
                self.checks.keys().collect::<Vec<_>>(),
                self.log_tail
            ),
        }
    }

    /// The result of check `name`, if it finished.
    pub fn try_get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.get(name)
    }

    /// Where the check ran (nested L1 VM or directly on the host).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Exit status of the runner script (`None` if the L1 timed out or crashed).
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// Wall-clock time of the whole run, including the L1 boot.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The batch's work directory (payload, results, console log), kept for debugging.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The last lines of the L1 console (or host runner log).
    pub fn log_tail(&self) -> &str {
        &self.log_tail
    }
}

/// Reads `<dir>/<name>.{out,err,rc}` for every check that wrote an exit code.
pub(super) fn collect(dir: &Path, names: &[String]) -> BTreeMap<String, CheckResult> {
    let read = |name: &str, ext: &str| {
        std::fs::read(dir.join(format!("{name}.{ext}")))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    names
        .iter()
        .filter_map(|name| {
            let code = read(name, "rc").ok()?.trim().parse().ok()?;
            let result = CheckResult {
                stdout: read(name, "out").unwrap_or_default(),
                stderr: read(name, "err").unwrap_or_default(),
                code,
            };
            Some((name.clone(), result))
        })
        .collect()
}

/// The checks of `names` that the runner retried after a silent guest death, each with the
/// evidence of its first attempt (`<name>.first-attempt.evidence`).
pub(super) fn retried(dir: &Path, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let path = dir.join(format!("{name}.first-attempt.evidence"));
            let evidence = std::fs::read(path).ok()?;
            Some((
                name.clone(),
                String::from_utf8_lossy(&evidence).into_owned(),
            ))
        })
        .collect()
}

/// The last `lines` lines of a log file (empty if unreadable).
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
