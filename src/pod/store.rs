//! The pod store: creates pods, finds them by uuid prefix, moves them between state directories
//! and reads/writes their files atomically.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lock::{self, PodLock};
use super::manifest::PodManifest;
use super::state::{PodState, STATE_DIRS};
use super::status::{PodStatus, STATUS_FILE};
use super::{io_err, PodError, Result};

/// File name of the pod manifest inside a pod directory (as rkt names it).
pub const MANIFEST_FILE: &str = "pod";
/// File recording when `gc` marked an exited pod as garbage.
const GARBAGE_SINCE_FILE: &str = "garbage-since";

/// A pod found on disk.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its uuid.
    pub uuid: String,
    /// Its directory (in its current state directory).
    pub dir: PathBuf,
    /// Its state.
    pub state: PodState,
    state_dir: &'static str,
}

impl Pod {
    /// Ok if the pod is running; else [`PodError::WrongState`] with `hint` (what the command
    /// needs and what to do instead).
    pub fn expect_running(&self, hint: &'static str) -> Result<()> {
        if self.state == PodState::Running {
            return Ok(());
        }
        Err(PodError::WrongState {
            uuid: self.uuid.clone(),
            state: self.state,
            hint,
        })
    }
}

/// The pods under `<dir>/pods`.
#[derive(Debug, Clone)]
pub struct PodStore {
    root: PathBuf,
}

impl PodStore {
    /// Opens (creating if needed) the pod store of podvm data dir `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let root = data_dir.join("pods");
        crate::private::ensure_dir(data_dir)?;
        crate::private::ensure_dir(&root)?;
        for dir in STATE_DIRS {
            crate::private::ensure_dir(&root.join(dir))?;
        }
        Ok(Self { root })
    }

    /// Creates a new pod in `embryo`, locked by the caller.
    pub fn create(&self) -> Result<(Pod, PodLock)> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let dir = self.root.join("embryo").join(&uuid);
        std::fs::DirBuilder::new()
            .mode(crate::private::DIR_MODE)
            .create(&dir)
            .map_err(io_err("cannot create pod directory", &dir))?;
        let held = lock::try_lock(&dir, &uuid)?;
        let pod = Pod {
            uuid,
            dir,
            state: PodState::Embryo,
            state_dir: "embryo",
        };
        Ok((pod, held))
    }

    /// Every pod, ordered by state directory then uuid.
    pub fn list(&self) -> Result<Vec<Pod>> {
        let mut pods = Vec::new();
        for state_dir in STATE_DIRS {
            let path = self.root.join(state_dir);
            let entries = fs::read_dir(&path).map_err(io_err("cannot list pods in", &path))?;
            let mut uuids: Vec<String> = entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.path().is_dir())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect();
            uuids.sort();
            for uuid in uuids {
                let dir = path.join(&uuid);
                let state = PodState::from_dir(state_dir, holds_lock(state_dir, &dir))
                    .expect("STATE_DIRS are all known states");
                pods.push(Pod {
                    uuid,
                    dir,
                    state,
                    state_dir,
                });
            }
        }
        Ok(latest_of_each(pods))
    }

    /// The one pod whose uuid starts with `prefix`.
    pub fn find(&self, prefix: &str) -> Result<Pod> {
        let mut matches: Vec<Pod> = self
            .list()?
            .into_iter()
            .filter(|pod| pod.uuid.starts_with(prefix))
            .collect();
        if prefix.is_empty() || matches.is_empty() {
            return Err(PodError::NotFound(prefix.to_string()));
        }
        if matches.len() > 1 {
            return Err(PodError::Ambiguous {
                prefix: prefix.to_string(),
                count: matches.len(),
            });
        }
        Ok(matches.remove(0))
    }

    /// Runs `read` on the pod `prefix` names, again if the pod moved to another state directory
    /// while it read (another podvm ended it or collected it), so the result describes one place.
    ///
    /// Pods only move forward through [`STATE_DIRS`], so this reads at most once per state.
    pub fn read_settled<T>(
        &self,
        prefix: &str,
        mut read: impl FnMut(&Pod) -> Result<T>,
    ) -> Result<T> {
        let mut attempts = STATE_DIRS.len();
        loop {
            let pod = self.find(prefix)?;
            let result = read(&pod);
            attempts -= 1;
            if attempts == 0 || pod.dir.is_dir() {
                return result;
            }
        }
    }

    /// Moves `pod` to state directory `to` by an atomic rename; locks stay held.
    pub fn transition(&self, pod: &Pod, to: &'static str) -> Result<Pod> {
        let dir = self.root.join(to).join(&pod.uuid);
        fs::rename(&pod.dir, &dir).map_err(io_err("cannot move pod to", &dir))?;
        let state = PodState::from_dir(to, holds_lock(to, &dir)).unwrap_or(pod.state);
        Ok(Pod {
            uuid: pod.uuid.clone(),
            dir,
            state,
            state_dir: to,
        })
    }

    /// Deletes `pod`: first an atomic move to `garbage`, then the tree.
    pub fn delete(&self, pod: &Pod) -> Result<()> {
        let garbage = if pod.state_dir == "garbage" {
            pod.clone()
        } else {
            self.transition(pod, "garbage")?
        };
        // A crashed run may have left its overlay mounted: deleting through it would be wrong.
        super::rootfs::unmount_below(&garbage.dir)?;
        // ... and its cgroup, with any process still in it (a VMM that outlived its podvm).
        super::cgroup::remove(&garbage.uuid)?;
        fs::remove_dir_all(&garbage.dir)
            .map_err(io_err("cannot delete pod directory", &garbage.dir))
    }

    /// Moves an exited pod to `exited-garbage`, recording when.
    pub fn mark_garbage(&self, pod: &Pod, now: u64) -> Result<Pod> {
        let marked = self.transition(pod, "exited-garbage")?;
        let path = marked.dir.join(GARBAGE_SINCE_FILE);
        crate::private::write_atomic(&path, now.to_string().as_bytes())
            .map_err(io_err("cannot write", &path))?;
        Ok(marked)
    }

    /// When `gc` marked the pod as garbage, if it did.
    pub fn garbage_since(&self, pod: &Pod) -> Option<u64> {
        fs::read_to_string(pod.dir.join(GARBAGE_SINCE_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Reads the pod manifest.
    pub fn manifest(&self, pod: &Pod) -> Result<PodManifest> {
        read_json(pod, MANIFEST_FILE, "pod manifest")
    }

    /// Writes the pod manifest atomically.
    pub fn write_manifest(&self, pod: &Pod, manifest: &PodManifest) -> Result<()> {
        write_json(pod, MANIFEST_FILE, manifest)
    }

    /// Reads the status record (empty if the pod has none yet).
    pub fn status(&self, pod: &Pod) -> Result<PodStatus> {
        if !pod.dir.join(STATUS_FILE).exists() {
            return Ok(PodStatus::default());
        }
        read_json(pod, STATUS_FILE, "status record")
    }

    /// Writes the status record atomically.
    pub fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<()> {
        write_json(pod, STATUS_FILE, status)
    }
}

/// Whether the pod in `dir` (in state directory `state_dir`) is held by the process working on
/// it: its lock is taken and, for a pod in `run`, its VM's end is not recorded yet. A `gc` or
/// another command that takes an exited pod's lock to look at it does not make it running.
fn holds_lock(state_dir: &str, dir: &Path) -> bool {
    lock::is_locked(dir) && !(state_dir == "run" && finished(dir))
}

/// Whether the status record in `dir` says the pod's VM ended.
fn finished(dir: &Path) -> bool {
    fs::read(dir.join(STATUS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<PodStatus>(&bytes).ok())
        .is_some_and(|status| status.finished.is_some())
}

fn read_json<T: DeserializeOwned>(pod: &Pod, name: &'static str, what: &'static str) -> Result<T> {
    let path = pod.dir.join(name);
    let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| PodError::Malformed {
        uuid: pod.uuid.clone(),
        file: what,
        source,
    })
}

/// Writes `value` as JSON to a fresh 0600 temp file in the pod directory, syncs it, renames it
/// into place.
fn write_json<T: Serialize>(pod: &Pod, name: &str, value: &T) -> Result<()> {
    let path = pod.dir.join(name);
    let bytes = serde_json::to_vec_pretty(value).expect("pod records always serialize");
    crate::private::write_atomic(&path, &bytes).map_err(io_err("cannot write", &path))
}

/// Keeps one entry per uuid: the one in the latest state directory.
///
/// The directories are read one after another while other podvm processes move pods forward
/// (run → exited-garbage → garbage), so a pod moved during the scan shows up in its old and its
/// new directory; the later one is where it is now.
fn latest_of_each(pods: Vec<Pod>) -> Vec<Pod> {
    let mut latest: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (index, pod) in pods.iter().enumerate() {
        latest.insert(pod.uuid.clone(), index);
    }
    pods.into_iter()
        .enumerate()
        .filter(|(index, pod)| latest.get(&pod.uuid) == Some(index))
        .map(|(_, pod)| pod)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_in(state_dir: &'static str, uuid: &str) -> Pod {
        Pod {
            uuid: uuid.to_string(),
            dir: PathBuf::from(state_dir).join(uuid),
            state: PodState::from_dir(state_dir, false).expect("known state dir"),
            state_dir,
        }
    }

    #[test]
    fn a_pod_moved_while_read_is_read_again_where_it_went() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = PodStore::open(data.path()).expect("open");
        let (pod, held) = store.create().expect("create");
        let run = store.transition(&pod, "run").expect("to run");
        drop(held);
        let mut reads = Vec::new();
        let read = store
            .read_settled(&run.uuid, |found| {
                reads.push(found.state_dir);
                if found.state_dir == "run" {
                    // A concurrent `gc` marks the pod while this reads it.
                    store.mark_garbage(found, 1).expect("mark");
                }
                Ok(found.state_dir)
            })
            .expect("read");
        assert_eq!(read, "exited-garbage");
        assert_eq!(reads, vec!["run", "exited-garbage"]);
    }

    #[test]
    fn a_pod_moved_during_the_scan_is_listed_once_where_it_went() {
        // `gc` moved pod "b" from run to exited-garbage between the reads of the two directories.
        let scanned = vec![
            pod_in("run", "a"),
            pod_in("run", "b"),
            pod_in("exited-garbage", "b"),
            pod_in("exited-garbage", "c"),
        ];
        let listed: Vec<(String, &str)> = latest_of_each(scanned)
            .into_iter()
            .map(|pod| (pod.uuid, pod.state_dir))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("a".to_string(), "run"),
                ("b".to_string(), "exited-garbage"),
                ("c".to_string(), "exited-garbage"),
            ]
        );
    }

    #[test]
    fn lifecycle_by_rename_with_lock_held() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = PodStore::open(data.path()).expect("open");
        let (pod, held) = store.create().expect("create");
        let preparing = store.transition(&pod, "prepare").expect("to prepare");
        assert_eq!(
            store.find(&pod.uuid[..8]).expect("find").state,
            PodState::Preparing
        );
        store
            .write_status(
                &preparing,
                &PodStatus {
                    created: 1,
                    ..Default::default()
                },
            )
            .expect("status");
        let prepared = store
            .transition(&preparing, "prepared")
            .expect("to prepared");
        drop(held);
        assert_eq!(store.status(&prepared).expect("status").created, 1);
        let run = store.transition(&prepared, "run").expect("to run");
        assert_eq!(
            store.find(&pod.uuid).expect("find").state,
            PodState::Exited,
            "unlocked run = exited"
        );
        let marked = store.mark_garbage(&run, 42).expect("mark");
        assert_eq!(store.garbage_since(&marked), Some(42));
        store.delete(&marked).expect("delete");
        assert!(matches!(store.find(&pod.uuid), Err(PodError::NotFound(_))));
    }

    /// A `gc` (or `status`) holding an exited pod's lock to look at it does not make the pod
    /// read as running to a concurrent `list`; the lock of a pod whose end is not recorded does.
    #[test]
    fn a_lock_on_a_pod_whose_vm_ended_does_not_make_it_running() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = PodStore::open(data.path()).expect("open");
        let (pod, held) = store.create().expect("create");
        let run = store.transition(&pod, "run").expect("to run");
        store
            .write_status(&run, &PodStatus::default())
            .expect("status");
        assert_eq!(
            store.find(&pod.uuid).expect("find").state,
            PodState::Running
        );
        let ended = PodStatus {
            finished: Some(7),
            ..Default::default()
        };
        store.write_status(&run, &ended).expect("status");
        assert_eq!(store.find(&pod.uuid).expect("find").state, PodState::Exited);
        drop(held);
        let _gc = lock::try_lock(&run.dir, &run.uuid).expect("another command's lock");
        assert_eq!(store.find(&pod.uuid).expect("find").state, PodState::Exited);
    }

    #[test]
    fn prefixes_must_be_unique() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = PodStore::open(data.path()).expect("open");
        let _a = store.create().expect("a");
        let _b = store.create().expect("b");
        assert!(matches!(store.find(""), Err(PodError::NotFound(_))));
        let all = store.list().expect("list");
        assert_eq!(all.len(), 2);
        assert!(store.find(&all[0].uuid).is_ok());
    }

    #[test]
    fn aborted_prepare_is_told_apart_from_preparing() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = PodStore::open(data.path()).expect("open");
        let (pod, held) = store.create().expect("create");
        let preparing = store.transition(&pod, "prepare").expect("to prepare");
        drop(held);
        assert_eq!(
            store.find(&preparing.uuid).expect("find").state,
            PodState::AbortedPrepare
        );
    }
}
