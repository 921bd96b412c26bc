//! Pod removal verbs: `rm` (now) and `gc` (by age, as rkt).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::pod::lock;
use crate::pod::status::now;
use crate::pod::{Pod, PodError, PodState, PodStore};

/// Flags of `podvm rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The pods (unique uuid prefixes).
    #[arg(required = true)]
    uuids: Vec<String>,
}

/// Flags of `podvm gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// How long an exited pod is kept after gc marked it as garbage (0s: it is deleted in the
    /// pass that marks it, as rkt does).
    #[arg(long = "grace-period", default_value = "30m", value_parser = super::duration::parse)]
    grace_period: Duration,
    /// How long a prepared pod may wait for run-prepared.
    #[arg(long = "expire-prepared", default_value = "24h", value_parser = super::duration::parse)]
    expire_prepared: Duration,
}

/// Runs `podvm rm`: deletes exited, prepared and aborted pods; running ones are refused.
pub fn rm(data_dir: &Path, args: RmArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    Ok(for_each_pod(&pods, "rm", &args.uuids, remove))
}

/// Applies `verb` to the pod each prefix names, printing the uuid of each pod it handled (as rkt
/// does) and an error line for each it could not; exit 1 if any failed.
pub fn for_each_pod(
    pods: &PodStore,
    verb_name: &str,
    prefixes: &[String],
    verb: impl Fn(&PodStore, &Pod) -> Result<String, PodError>,
) -> ExitCode {
    let mut failed = false;
    for prefix in prefixes {
        match pods.find(prefix).and_then(|pod| verb(pods, &pod)) {
            Ok(uuid) => println!("\"{uuid}\""),
            Err(err) => {
                eprintln!("podvm: {verb_name} {prefix}: {err}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Removes a pod that does not run (and its network), as `rm` does; returns its uuid.
pub fn remove(pods: &PodStore, pod: &Pod) -> Result<String, PodError> {
    if matches!(
        pod.state,
        PodState::Running | PodState::Preparing | PodState::Embryo
    ) {
        return Err(PodError::WrongState {
            uuid: pod.uuid.clone(),
            state: pod.state,
            hint: "stop it first (`podvm stop`), or wait for it to finish",
        });
    }
    let _held = lock::try_lock(&pod.dir, &pod.uuid)?;
    super::net::release(pod)?;
    pods.delete(pod)?;
    Ok(pod.uuid.clone())
}

/// Runs `podvm gc`: marks exited pods as garbage, deletes garbage past the grace period, aborted
/// prepares, embryos nobody holds, and prepared pods older than `--expire-prepared`.
pub fn gc(data_dir: &Path, args: GcArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    let now = now();
    for pod in pods.list()? {
        let Ok(_held) = lock::try_lock(&pod.dir, &pod.uuid) else {
            continue;
        };
        let created = pods.status(&pod).map(|status| status.created).unwrap_or(0);
        // Nobody runs a pod whose lock gc holds: a network it still has (its podvm was
        // killed) is released as soon as gc sees it.
        if let Err(err) = super::net::release(&pod) {
            eprintln!("podvm: gc: {err}");
            continue;
        }
        let outcome = match pod.state {
            // As rkt: marked, and deleted in the same pass if the grace period is already over
            // (`--grace-period=0s`).
            PodState::Exited => match pods.mark_garbage(&pod, now) {
                // (marking moved it: the pod is where `mark_garbage` says)
                Ok(marked) if args.grace_period.is_zero() => {
                    pods.delete(&marked).map(|()| "deleted exited pod")
                }
                marked => marked.map(|_| "marked exited pod as garbage"),
            },
            PodState::ExitedGarbage => {
                let since = pods.garbage_since(&pod).unwrap_or(0);
                if now.saturating_sub(since) < args.grace_period.as_secs() {
                    continue;
                }
                pods.delete(&pod).map(|()| "deleted exited pod")
            }
            PodState::Prepared if now.saturating_sub(created) >= args.expire_prepared.as_secs() => {
                pods.delete(&pod).map(|()| "deleted expired prepared pod")
            }
            PodState::AbortedPrepare | PodState::Embryo | PodState::Garbage => {
                pods.delete(&pod).map(|()| "deleted leftover pod")
            }
            _ => continue,
        };
        match outcome {
            Ok(what) => eprintln!("gc: {what} {}", pod.uuid),
            Err(err) => eprintln!("podvm: gc: {err}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
