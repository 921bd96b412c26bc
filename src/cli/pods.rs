//! Pod inspection verbs: `list`, `status`, `cat-manifest`. `status` of a running pod asks its
//! supervisor over the pod's control socket for the live figures (VMM pid, uptime), and reads
//! the pod's files for the rest or when no supervisor answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::prepare::HOSTNAME_ANNOTATION;
use super::table::{self, Column};
use crate::control;
use crate::pod::status::{EndCause, PodStatus, PodUsage};
use crate::pod::{cgroup, Pod, PodError, PodState, PodStore};
use crate::vmm::console_log;

/// The guest's console log in a pod's directory.
const CONSOLE_LOG: &str = "console.log";

/// Flags of `podvm list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Do not print the header line.
    #[arg(long = "no-legend")]
    no_legend: bool,
    /// Full uuids and image ids, and dates instead of ages.
    #[arg(long)]
    full: bool,
    /// The columns, in order: uuid,app,image_name,image_id,state,created,started,networks
    /// (default: all but image_id).
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// Flags of `podvm status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pod (a unique uuid prefix).
    uuid: String,
    /// Wait until the pod has exited, at most this long (e.g. `30s`; bare `--wait`: forever).
    #[arg(long, num_args = 0..=1, default_missing_value = "0s", value_parser = super::duration::parse)]
    wait: Option<Duration>,
    /// Wait until the pod runs, at most this long (bare `--wait-ready`: forever).
    #[arg(long = "wait-ready", num_args = 0..=1, default_missing_value = "0s", value_parser = super::duration::parse)]
    wait_ready: Option<Duration>,
    /// Output format: `table` (key=value lines, as rkt) or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

/// Flags of `podvm cat-manifest`.
#[derive(Debug, Args)]
pub struct CatManifestArgs {
    /// The pod (a unique uuid prefix).
    uuid: String,
}

/// What `list --format json` and `status --format json` print for a pod.
#[derive(Debug, Serialize)]
pub struct PodView {
    /// Full uuid.
    pub uuid: String,
    /// State.
    pub state: PodState,
    /// Hostname.
    pub hostname: Option<String>,
    /// The pod's own annotations (`--user-annotation` before the first image).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user_annotations: BTreeMap<String, String>,
    /// The pod's own labels (`--user-label` before the first image).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user_labels: BTreeMap<String, String>,
    /// Apps with their images and, once they ended, exit codes.
    pub apps: Vec<AppView>,
    /// The pod's networks while it has them (running, or not yet cleaned by `gc`).
    pub networks: Vec<crate::net::NetworkStatus>,
    /// Recorded times, pid and reason.
    #[serde(flatten)]
    pub status: PodStatus,
    /// `status` of a running pod: the pid of its VMM, from its supervisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<u32>,
    /// `status` of a running pod: seconds its VM has been running, from its supervisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// A pod that ended abnormally: the guest's last console line (control characters escaped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_last_line: Option<String>,
    /// A pod that ended abnormally: its guest's console log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_log: Option<String>,
}

/// One app in a [`PodView`].
#[derive(Debug, Serialize)]
pub struct AppView {
    /// App name.
    pub name: String,
    /// Image name as given.
    pub image_name: String,
    /// Image id.
    pub image_id: String,
    /// Exit code, once the app ended.
    pub exit_code: Option<i32>,
    /// What ended it, when not its own doing (`oom-killed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndCause>,
    /// Its processes the guest kernel's OOM killer killed, when it killed some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// Builds the view of a pod from its manifest and status record.
pub fn view(pods: &PodStore, pod: &Pod) -> Result<PodView, PodError> {
    let manifest = pods.manifest(pod).ok();
    let status = pods.status(pod)?;
    let hostname = manifest
        .as_ref()
        .and_then(|m| m.annotation(HOSTNAME_ANNOTATION));
    let (user_annotations, user_labels) = manifest
        .as_ref()
        .map(|m| (m.user_annotations.clone(), m.user_labels.clone()))
        .unwrap_or_default();
    let apps: Vec<AppView> = manifest
        .map(|m| {
            m.apps
                .into_iter()
                .map(|app| {
                    let exit = status.apps.iter().find(|exit| exit.name == app.name);
                    AppView {
                        exit_code: exit.map(|exit| exit.exit_code),
                        reason: exit.and_then(|exit| exit.reason),
                        oom_kills: exit.and_then(|exit| exit.oom_kills),
                        name: app.name,
                        image_name: app.image.name,
                        image_id: app.image.id,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut status = status;
    if !apps.is_empty() {
        // Each app's code is in its entry of `apps`: the view has one `apps` key.
        status.apps.clear();
    }
    let ended = matches!(pod.state, PodState::Exited | PodState::ExitedGarbage);
    if ended && status.finished.is_none() && status.reason.is_none() {
        let (cause, reason) = killed(&pod.uuid, status.pid);
        status.cause = Some(cause);
        status.reason = Some(reason);
    }
    let console = pod.dir.join(CONSOLE_LOG);
    let (console_last_line, console_log) = match status.reason.is_some() && console.exists() {
        true => (
            console_log::last_line(&console),
            Some(console.display().to_string()),
        ),
        false => (None, None),
    };
    Ok(PodView {
        uuid: pod.uuid.clone(),
        state: pod.state,
        hostname,
        user_annotations,
        user_labels,
        apps,
        networks: crate::net::status(&pod.dir),
        status,
        vmm_pid: None,
        uptime_secs: None,
        console_last_line,
        console_log,
    })
}

/// Why a pod whose podvm process `pid` (its VMM) is gone without recording the end ended: the
/// kernel's OOM killer when the pod's cgroup counted a kill, else killed (or crashed).
fn killed(uuid: &str, pid: Option<u32>) -> (EndCause, String) {
    let process = match pid {
        Some(pid) => format!("the pod's podvm process {pid}, which ran its VM,"),
        None => "the pod's podvm process, which ran its VM,".to_string(),
    };
    if let Some(kill) = pid.and_then(crate::vmm::seccomp::audit::find_kill) {
        return (
            EndCause::Seccomp,
            crate::vmm::seccomp::audit::reason(&process, Some(&kill)),
        );
    }
    match cgroup::oom_kills(uuid).filter(|&kills| kills > 0) {
        Some(kills) => (
            EndCause::OomKilled,
            format!(
                "killed by the kernel's OOM killer: {process} was in the pod's cgroup when it \
                 reached its memory limit (memory.events: oom_kill {kills})"
            ),
        ),
        None => (
            EndCause::Killed,
            format!(
                "killed: {process} died without recording the pod's exit (a SIGKILL, or a \
                 crash)"
            ),
        ),
    }
}

/// Adds what a running pod's supervisor says over its control socket to `view`; without an
/// answer (it just ended, or is an older podvm) the view stays as the files tell it.
fn add_live(view: &mut PodView, pod: &Pod) {
    if pod.state != PodState::Running {
        return;
    }
    if let Ok(live) = control::client::status(&pod.dir.join(control::SOCKET_FILE)) {
        view.status.pid = Some(live.pid);
        view.vmm_pid = Some(live.vmm_pid);
        view.uptime_secs = Some(live.uptime_secs);
        view.status.usage = live_usage(pod, &live);
    }
}

/// What a running pod used so far: its cgroup's counters (found through its VMM's process),
/// the bytes through its shares (from its supervisor) and its network's.
fn live_usage(pod: &Pod, live: &control::proto::LiveStatus) -> Option<PodUsage> {
    let mut usage = PodUsage {
        wall_ms: live.uptime_secs.saturating_mul(1000),
        cgroup: crate::pod::cgroup::usage_of_process(live.vmm_pid, &pod.uuid)?,
        ..PodUsage::default()
    };
    usage.set_share_bytes(live.share_read_bytes, live.share_written_bytes);
    usage.add_net_bytes(&pod.dir);
    Some(usage)
}

/// How often `status --wait` looks at the pod again.
const WAIT_INTERVAL: Duration = Duration::from_millis(100);

/// Waits until `done` holds for the pod (found again each round, it moves between state
/// directories) or `limit` passes (zero: no limit); returns the pod as last seen.
fn wait_for(
    pods: &PodStore,
    uuid: &str,
    limit: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Result<Pod, PodError> {
    let start = Instant::now();
    let mut misses = 0;
    loop {
        // A scan can miss a pod that moves between state directories at that moment.
        let pod = match pods.find(uuid) {
            Err(PodError::NotFound(_)) if misses < 10 => {
                misses += 1;
                std::thread::sleep(WAIT_INTERVAL);
                continue;
            }
            found => found?,
        };
        misses = 0;
        if done(&pod) || (!limit.is_zero() && start.elapsed() >= limit) {
            return Ok(pod);
        }
        std::thread::sleep(WAIT_INTERVAL);
    }
}

/// The pod `uuid` once it has ended (or as it is after `limit`), with its view: what an
/// attached client reports when its session ends without an exit status.
pub(crate) fn view_once_ended(
    pods: &PodStore,
    uuid: &str,
    limit: Duration,
) -> Result<PodView, PodError> {
    let pod = wait_for(pods, uuid, limit, is_final)?;
    view(pods, &pod)
}

/// Whether a pod will not change state on its own any more.
fn is_final(pod: &Pod) -> bool {
    matches!(
        pod.state,
        PodState::Exited | PodState::ExitedGarbage | PodState::Garbage | PodState::AbortedPrepare
    )
}

/// Errors of `podvm list`.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The pods could not be read.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// `--fields` named no column.
    #[error(transparent)]
    Fields(#[from] table::UnknownField),
}

/// Runs `podvm list`.
pub fn list(data_dir: &Path, args: ListArgs) -> Result<ExitCode, ListError> {
    let pods = PodStore::open(data_dir)?;
    let views = pods
        .list()?
        .iter()
        .map(|pod| view(&pods, pod))
        .collect::<Result<Vec<_>, _>>()?;
    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).expect("views always serialize")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let columns = pod_columns();
    let columns = table::select(&columns, &args.fields, DEFAULT_POD_FIELDS)?;
    let rows: Vec<PodRow> = views
        .iter()
        .flat_map(|pod| match pod.apps.as_slice() {
            [] => vec![PodRow { pod, app: None }],
            apps => apps
                .iter()
                .map(|app| PodRow {
                    pod,
                    app: Some(app),
                })
                .collect(),
        })
        .collect();
    table::print(&columns, &rows, args.full, !args.no_legend);
    Ok(ExitCode::SUCCESS)
}

/// One line of `list`: a pod's app (a pod without apps has a line of its own).
struct PodRow<'a> {
    pod: &'a PodView,
    app: Option<&'a AppView>,
}

/// The columns of `list`, as rkt's.
fn pod_columns<'a>() -> [Column<PodRow<'a>>; 8] {
    [
        Column {
            field: "uuid",
            header: "UUID",
            cell: |row, full| match full {
                true => row.pod.uuid.clone(),
                false => row.pod.uuid.chars().take(8).collect(),
            },
        },
        Column {
            field: "app",
            header: "APP",
            cell: |row, _| row.app.map_or("-".into(), |app| app.name.clone()),
        },
        Column {
            field: "image_name",
            header: "IMAGE NAME",
            cell: |row, _| row.app.map_or("-".into(), |app| app.image_name.clone()),
        },
        Column {
            field: "image_id",
            header: "IMAGE ID",
            cell: |row, full| match row.app {
                Some(app) if full => app.image_id.clone(),
                Some(app) => app.image_id.chars().take(19).collect(),
                None => "-".into(),
            },
        },
        Column {
            field: "state",
            header: "STATE",
            cell: |row, _| row.pod.state.name().to_string(),
        },
        Column {
            field: "created",
            header: "CREATED",
            cell: |row, full| time_cell(Some(row.pod.status.created), full),
        },
        Column {
            field: "started",
            header: "STARTED",
            cell: |row, full| time_cell(row.pod.status.started, full),
        },
        Column {
            field: "networks",
            header: "NETWORKS",
            cell: |row, _| {
                super::net::status_line(&row.pod.networks).map_or("-".into(), |line| {
                    line.trim_start_matches("networks=").into()
                })
            },
        },
    ]
}

/// The columns `list` shows without `--fields`.
const DEFAULT_POD_FIELDS: &[&str] = &[
    "uuid",
    "app",
    "image_name",
    "state",
    "created",
    "started",
    "networks",
];

/// A time as an age, or with `--full` as a date; `-` when there is none.
fn time_cell(then: Option<u64>, full: bool) -> String {
    match then {
        Some(then) if full => table::timestamp(then),
        Some(then) => table::ago(then),
        None => "-".into(),
    }
}

/// Runs `podvm status`.
pub fn status(data_dir: &Path, args: StatusArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    let mut pod = pods.find(&args.uuid)?;
    if let Some(limit) = args.wait_ready {
        pod = wait_for(&pods, &pod.uuid, limit, |pod| {
            pod.state == PodState::Running || is_final(pod)
        })?;
    }
    if let Some(limit) = args.wait {
        pod = wait_for(&pods, &pod.uuid, limit, is_final)?;
    }
    // Read where the pod is when it is read: a concurrent `gc` may move it meanwhile.
    let (pod, mut view) =
        pods.read_settled(&pod.uuid, |pod| Ok((pod.clone(), view(&pods, pod)?)))?;
    add_live(&mut view, &pod);
    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("views always serialize")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("uuid={}", view.uuid);
    println!("state={}", view.state.name());
    for (key, pairs) in [
        ("user-annotations", &view.user_annotations),
        ("user-labels", &view.user_labels),
    ] {
        if !pairs.is_empty() {
            let listed: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{key}={}", listed.join(","));
        }
    }
    println!("created={}", table::timestamp(view.status.created));
    if let Some(started) = view.status.started {
        println!("started={}", table::timestamp(started));
    }
    if let Some(pid) = view.status.pid {
        println!("pid={pid}");
    }
    if let Some(pid) = view.vmm_pid {
        println!("vmm-pid={pid}");
    }
    if let Some(uptime) = view.uptime_secs {
        println!("uptime={uptime}s");
    }
    println!(
        "exited={}",
        matches!(view.state, PodState::Exited | PodState::ExitedGarbage)
    );
    for app in &view.apps {
        if let Some(code) = app.exit_code {
            println!("app-{}={code}", app.name);
        }
        if let Some(reason) = app.reason {
            println!("app-{}-reason={reason}", app.name);
        }
    }
    if let Some(line) = super::net::status_line(&view.networks) {
        println!("{line}");
    }
    print_end(&view);
    Ok(ExitCode::SUCCESS)
}

/// The `status` lines of why a pod ended abnormally: the reason's first line (the rest, the
/// console's last lines, is in `--format json` and the console log), its cause, and the guest's
/// last console line.
fn print_end(view: &PodView) {
    if let Some(reason) = &view.status.reason {
        println!("reason={}", reason.lines().next().unwrap_or_default());
    }
    if let Some(cause) = view.status.cause {
        println!("cause={cause}");
    }
    if let Some(line) = &view.console_last_line {
        println!("console-last-line={line}");
    }
    if let Some(log) = &view.console_log {
        println!("console-log={log}");
    }
}

/// Runs `podvm cat-manifest`.
pub fn cat_manifest(data_dir: &Path, args: CatManifestArgs) -> Result<ExitCode, PodError> {
    let pods = PodStore::open(data_dir)?;
    let pod = pods.find(&args.uuid)?;
    let manifest = pods.manifest(&pod)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&manifest).expect("manifests always serialize")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod whose podvm was killed (no end recorded, no lock held) reads as exited, killed,
    /// with its guest's last console line; one that ended well shows no console line.
    #[test]
    fn a_pod_whose_podvm_was_killed_is_named_killed_with_its_last_console_line() {
        let data = tempfile::tempdir().expect("tempdir");
        let pods = PodStore::open(data.path()).expect("open");
        let (embryo, held) = pods.create().expect("create");
        let pod = pods.transition(&embryo, "run").expect("to run");
        let status = PodStatus {
            created: 1,
            started: Some(2),
            pid: Some(4242),
            ..Default::default()
        };
        pods.write_status(&pod, &status).expect("status");
        std::fs::write(
            pod.dir.join(CONSOLE_LOG),
            "[    0.5] Run /init as init process\n[    3.1] app: last words\r\n",
        )
        .expect("console");
        drop(held);
        let pod = pods.find(&pod.uuid).expect("find");
        assert_eq!(pod.state, PodState::Exited);
        let view = view(&pods, &pod).expect("view");
        assert_eq!(view.status.cause, Some(EndCause::Killed));
        let reason = view.status.reason.as_deref().expect("reason");
        assert!(
            reason.starts_with("killed: the pod's podvm process 4242"),
            "{reason}"
        );
        assert_eq!(
            view.console_last_line.as_deref(),
            Some("[    3.1] app: last words")
        );
        let json = serde_json::to_value(&view).expect("json");
        assert_eq!(json["cause"], "killed");
        assert_eq!(json["console_last_line"], "[    3.1] app: last words");
        let marked = pods.mark_garbage(&pod, 5).expect("gc marks it");
        let view = super::view(&pods, &marked).expect("view");
        assert_eq!(
            view.status.cause,
            Some(EndCause::Killed),
            "still named once gc marked it"
        );
        let pod = pods.transition(&marked, "run").expect("back");

        let ended = PodStatus {
            finished: Some(3),
            ..status
        };
        pods.write_status(&pod, &ended).expect("status");
        let view = super::view(&pods, &pod).expect("view");
        assert_eq!((view.status.cause, view.status.reason), (None, None));
        assert_eq!(view.console_last_line, None, "only for an abnormal end");
    }
}
