//! `podvm image build --from IMAGE --run CMD [--run CMD]... --tag NAME`: runs the commands,
//! in order, in one pod of IMAGE (as `podvm run` does, by this same binary), each with
//! `/bin/sh -c` of the image; the first that fails ends the build with its exit code and its
//! output (which went to stderr as it ran: stdout is the built image's line alone). Once all succeeded, the pod's writes become
//! a new layer on top of IMAGE's ([`crate::image::build_from`]), imported into the store as
//! NAME; the pod is removed whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::image::build::BuildError;
use crate::image::fetch::{self, FetchError};
use crate::image::{build_from, ImageError};
use crate::pod::store::PodStore;
use crate::pod::PodError;
use crate::store::Store;

/// Errors of `image build --from`.
#[derive(Debug, thiserror::Error)]
pub enum BuildFromError {
    /// No `--run` was given.
    #[error("image build --from needs at least one --run COMMAND")]
    NoCommands,
    /// podvm could not be run again, or its files read.
    #[error("image build: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The build pod is not as it should be.
    #[error("image build: the build pod {uuid}: {why}")]
    Pod {
        /// The pod.
        uuid: String,
        /// Why.
        why: String,
    },
    /// The base image could not be found.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A bad `--tag`, or the import failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The layer or the layout could not be made.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The script the pod runs: each argument is one command, run by `/bin/sh -c`, in order,
/// stopping at the first that fails with its code.
const SCRIPT: &str = r#"for c in "$@"; do /bin/sh -c "$c" || { s=$?; echo "podvm image build: exit code $s: $c" >&2; exit $s; }; done"#;

/// Builds `tag` from `from` with the commands `runs`; the exit code is the first failed
/// command's, else success.
pub fn build_from(
    data_dir: &Path,
    store: &Store,
    tag: &str,
    from: &str,
    runs: &[String],
) -> Result<ExitCode, BuildFromError> {
    if runs.is_empty() {
        return Err(BuildFromError::NoCommands);
    }
    let name = fetch::canonical_name(&docker_reference(tag))?;
    let uuid_file = store
        .tmp_dir()
        .join(format!("build-{}.uuid", std::process::id()));
    let _ = std::fs::remove_file(&uuid_file);
    let exe = std::env::current_exe().map_err(io_err("finding", Path::new("podvm")))?;
    let status = Command::new(&exe)
        .arg("--dir")
        .arg(data_dir)
        .arg("run")
        .arg("--uuid-file-save")
        .arg(&uuid_file)
        .arg(from)
        .args(["--exec", "/bin/sh", "--", "-c", SCRIPT, "podvm-build"])
        .args(runs)
        // The commands' output goes to stderr: stdout is the built image's line alone.
        .stdout(std::io::stderr())
        .status()
        .map_err(io_err("running", &exe))?;
    let uuid = std::fs::read_to_string(&uuid_file).unwrap_or_default();
    let _ = std::fs::remove_file(&uuid_file);
    let uuid = uuid.trim().to_string();
    let built = match status.code() {
        Some(0) if !uuid.is_empty() => layer_and_import(data_dir, store, &name, &uuid, runs),
        Some(0) => Err(BuildFromError::Pod {
            uuid: String::new(),
            why: "it ran but left no uuid".into(),
        }),
        code => {
            let code = code.unwrap_or(1);
            eprintln!(
                "podvm: image build: a --run command failed (exit code {code}); no image was made"
            );
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    };
    if !uuid.is_empty() {
        remove_pod(&exe, data_dir, &uuid);
    }
    built
}

/// The pod's writes as a layer on its image, into the store as `name`; prints the image id,
/// the manifest digest and the name, as `image build` of a directory does.
fn layer_and_import(
    data_dir: &Path,
    store: &Store,
    name: &str,
    uuid: &str,
    runs: &[String],
) -> Result<ExitCode, BuildFromError> {
    let pod_err = |err: PodError| pod_error(uuid, err.to_string());
    let pods = PodStore::open(data_dir).map_err(pod_err)?;
    let pod = pods.find(uuid).map_err(pod_err)?;
    let manifest = pods.manifest(&pod).map_err(pod_err)?;
    let [app] = manifest.apps.as_slice() else {
        return Err(pod_error(uuid, "it has more than one app".into()));
    };
    let base = crate::image::resolve(store, &app.image.id)?;
    // The app name is podvm's own (an ACName in the pod's manifest).
    let relative = PathBuf::from("overlay").join(&app.name).join("upper");
    let upper = crate::tree_copy::open_dir_below(&pod.dir, &relative)
        .map_err(|err| pod_error(uuid, format!("its writes: {err}")))?
        .ok_or_else(|| {
            pod_error(
                uuid,
                "it has no overlay upper directory (a pod run without mount privilege copies \
                 its image instead)"
                    .into(),
            )
        })?;
    let layout = store
        .tmp_dir()
        .join(format!("build-{}.partial", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    let created_by = format!("podvm image build --run {}", runs.join(" --run "));
    let built = build_from::write_layout_from(store, &base, &upper, &created_by, &layout)
        .map_err(BuildFromError::from)
        .and_then(|(digest, report)| {
            Ok((digest, report, fetch::import_layout(store, name, &layout)?))
        });
    let _ = std::fs::remove_dir_all(&layout);
    let (digest, report, record) = built?;
    eprintln!(
        "podvm: image build: the new layer holds {} entries, {} bytes of files",
        report.entries, report.bytes
    );
    println!("{} {digest} {name}", record.id);
    Ok(ExitCode::SUCCESS)
}

/// Removes the build pod (`podvm rm`: its mounts, network and cgroup go with it).
fn remove_pod(exe: &Path, data_dir: &Path, uuid: &str) {
    let removed = Command::new(exe)
        .arg("--dir")
        .arg(data_dir)
        .args(["rm", uuid])
        .stdout(std::process::Stdio::null())
        .status();
    if !removed.is_ok_and(|status| status.success()) {
        eprintln!("podvm: image build: the build pod {uuid} could not be removed; `podvm gc` will");
    }
}

/// `tag` as a `docker://` reference.
pub fn docker_reference(tag: &str) -> String {
    match tag.strip_prefix("docker://") {
        Some(_) => tag.to_string(),
        None => format!("docker://{tag}"),
    }
}

fn pod_error(uuid: &str, why: String) -> BuildFromError {
    BuildFromError::Pod {
        uuid: uuid.to_string(),
        why,
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildFromError {
    let path = path.to_path_buf();
    move |source| BuildFromError::Io { what, path, source }
}
