//! Pod states: the directory a pod lives in, plus whether its lock is held.

use std::fmt;

use serde::Serialize;

/// The state of a pod as `list` and `status` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodState {
    /// Being created.
    Embryo,
    /// Being prepared by a live podvm.
    Preparing,
    /// A prepare whose podvm died; `gc` removes it.
    AbortedPrepare,
    /// Ready to run.
    Prepared,
    /// Its VM runs.
    Running,
    /// Its VM ended (or its podvm died).
    Exited,
    /// Exited and marked for deletion by `gc`.
    ExitedGarbage,
    /// To be deleted.
    Garbage,
}

/// The state directories under `<dir>/pods`, in lifecycle order.
pub const STATE_DIRS: [&str; 6] = [
    "embryo",
    "prepare",
    "prepared",
    "run",
    "exited-garbage",
    "garbage",
];

impl PodState {
    /// The state of a pod found in `dir` (one of [`STATE_DIRS`]) whose lock is `locked` or not.
    pub fn from_dir(dir: &str, locked: bool) -> Option<Self> {
        Some(match (dir, locked) {
            ("embryo", _) => PodState::Embryo,
            ("prepare", true) => PodState::Preparing,
            ("prepare", false) => PodState::AbortedPrepare,
            ("prepared", _) => PodState::Prepared,
            ("run", true) => PodState::Running,
            ("run", false) => PodState::Exited,
            ("exited-garbage", _) => PodState::ExitedGarbage,
            ("garbage", _) => PodState::Garbage,
            _ => return None,
        })
    }

    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            PodState::Embryo => "embryo",
            PodState::Preparing => "preparing",
            PodState::AbortedPrepare => "aborted-prepare",
            PodState::Prepared => "prepared",
            PodState::Running => "running",
            PodState::Exited => "exited",
            PodState::ExitedGarbage => "exited-garbage",
            PodState::Garbage => "garbage",
        }
    }
}

impl fmt::Display for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_decides_between_running_and_exited() {
        assert_eq!(PodState::from_dir("run", true), Some(PodState::Running));
        assert_eq!(PodState::from_dir("run", false), Some(PodState::Exited));
        assert_eq!(
            PodState::from_dir("prepare", false),
            Some(PodState::AbortedPrepare)
        );
        assert_eq!(PodState::from_dir("elsewhere", false), None);
        for dir in STATE_DIRS {
            assert!(PodState::from_dir(dir, false).is_some(), "{dir}");
        }
    }
}
