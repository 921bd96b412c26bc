//! `podvm image ...`: list, rm, gc, render/extract, export, cat-manifest, config, verify.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::table::{self, Column};
use crate::image::build::{self, BuildError, BuildSpec};
use crate::image::fetch::{self, FetchError};
use crate::image::{self, ImageError};
use crate::store::{ImageRecord, Store, StoreError};

/// Arguments of `podvm image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image verb.
    #[command(subcommand)]
    pub verb: ImageVerb,
}

/// `podvm image` verbs.
#[derive(Debug, Subcommand)]
pub enum ImageVerb {
    /// List images in the store.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Omit the table header.
        #[arg(long = "no-legend")]
        no_legend: bool,
        /// The columns, in order: id,name,size,importtime,lastused,latest (default: all but
        /// latest).
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// Full image ids, sizes in bytes and dates instead of ages.
        #[arg(long)]
        full: bool,
    },
    /// Remove images (by name or id); their blobs and trees go at the next `image gc`.
    Rm {
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images unused for the grace period, and unreferenced blobs, trees and temp files.
    Gc {
        /// How long since last use before an image is removed (e.g. 24h, 30m, 0s).
        #[arg(long = "grace-period", default_value = "24h", value_parser = super::duration::parse)]
        grace_period: Duration,
    },
    /// Write the image's rootfs to DIR (rendered: all layers applied).
    Render {
        /// Image.
        image: String,
        /// Destination directory (must not exist or be empty).
        dir: PathBuf,
        /// Ignored (the output is always the rootfs); accepted for rkt compatibility.
        #[arg(long = "rootfs-only")]
        rootfs_only: bool,
    },
    /// Write the image's manifest, config and rendered rootfs (DIR/rootfs) to DIR.
    Extract {
        /// Image.
        image: String,
        /// Destination directory.
        dir: PathBuf,
        /// Write only the rootfs, directly in DIR.
        #[arg(long = "rootfs-only")]
        rootfs_only: bool,
    },
    /// Export the image as an OCI archive (importable with `fetch oci-archive:FILE`).
    Export {
        /// Image.
        image: String,
        /// Output file.
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Build an OCI image from a directory (its whole tree is the image's one layer) and a
    /// JSON spec (entrypoint, cmd, env, user, workdir, ports, labels), or from an image and
    /// commands run in a pod of it (`--from IMAGE --run CMD...`: the pod's writes become one
    /// more layer), into the store; reproducible: the same input gives the same digest. Run
    /// it by the name given.
    Build {
        /// The image's name, a docker reference such as `localhost/tool:1` (run it as
        /// `docker://localhost/tool:1`).
        #[arg(long)]
        tag: String,
        /// The spec (JSON); without it, the image has no command (pass `--exec` to run it).
        #[arg(long, conflicts_with = "from")]
        spec: Option<PathBuf>,
        /// The image to build on (fetched as `run` fetches); needs `--run`.
        #[arg(long, requires = "run", conflicts_with = "dir")]
        from: Option<String>,
        /// A command run by the image's `/bin/sh -c` in the build pod; repeat for more, run in
        /// order; the first that fails ends the build with its exit code.
        #[arg(long, requires = "from")]
        run: Vec<String>,
        /// The directory that becomes the image's root.
        #[arg(required_unless_present = "from")]
        dir: Option<PathBuf>,
    },
    /// Print the image manifest.
    CatManifest {
        /// Image.
        image: String,
    },
    /// Print the app defaults derived from the image config (JSON).
    CatConfig {
        /// Image.
        image: String,
    },
    /// Re-hash every blob in the store and check every image's blobs are present.
    Verify,
}

/// Output formats of `image list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human table.
    Table,
    /// JSON array.
    Json,
}

/// Errors of `podvm image`.
#[derive(Debug, thiserror::Error)]
pub enum ImageCliError {
    /// Image layer error.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Output error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The image's tree could not be copied out.
    #[error("cannot extract the image's files to {dest}: {source}")]
    Extract {
        /// The destination directory.
        dest: PathBuf,
        /// Why.
        source: Box<crate::tree_copy::CopyError>,
    },
    /// `image build` failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// `image build --from` failed.
    #[error(transparent)]
    BuildFrom(#[from] super::image_build_from::BuildFromError),
    /// A bad `--tag`.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// `--fields` named no column.
    #[error(transparent)]
    Fields(#[from] table::UnknownField),
    /// The store is corrupt.
    #[error("the image store has {0} problem(s) (listed above); remove the affected images and fetch them again")]
    Corrupt(usize),
    /// Usage error.
    #[error("{0}")]
    Usage(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageCliError {
    let path = path.to_path_buf();
    move |source| ImageCliError::Io { what, path, source }
}

/// Runs `podvm image VERB`.
pub fn run(data_dir: &Path, args: ImageArgs) -> Result<ExitCode, ImageCliError> {
    let store = Store::open(data_dir)?;
    match args.verb {
        ImageVerb::List {
            format,
            no_legend,
            fields,
            full,
        } => list(
            &store,
            format,
            &ListTable {
                fields,
                full,
                legend: !no_legend,
            },
        )?,
        ImageVerb::Rm { images } => {
            let _lock = store.lock(true)?;
            for i in images {
                let rec = image::resolve(&store, &i)?;
                store.remove_record(&rec.id)?;
                println!("{}", rec.id);
            }
        }
        ImageVerb::Gc { grace_period } => {
            let r = store.gc(grace_period)?;
            for id in &r.images {
                eprintln!("removed image {id}");
            }
            eprintln!(
                "removed {} image(s), {} blob(s), {} tree(s), {} temporary file(s)",
                r.images.len(),
                r.blobs.len(),
                r.trees,
                r.tmp
            );
        }
        ImageVerb::Render { image, dir, .. } => render(&store, &image, &dir, None)?,
        ImageVerb::Extract {
            image,
            dir,
            rootfs_only,
        } => {
            if rootfs_only {
                render(&store, &image, &dir, None)?
            } else {
                render(&store, &image, &dir.join("rootfs"), Some(&dir))?
            }
        }
        ImageVerb::Export {
            image,
            file,
            overwrite,
        } => export(&store, &image, &file, overwrite)?,
        ImageVerb::Build {
            tag,
            spec,
            from,
            run,
            dir,
        } => match (from, dir) {
            (Some(from), _) => {
                let built =
                    super::image_build_from::build_from(data_dir, &store, &tag, &from, &run);
                return Ok(built?);
            }
            (None, Some(dir)) => build(&store, &tag, spec.as_deref(), &dir)?,
            (None, None) => return Err(ImageCliError::Usage("image build: DIR or --from".into())),
        },
        ImageVerb::CatManifest { image } => {
            let rec = image::resolve(&store, &image)?;
            let data = store.read_blob(&rec.manifest.digest)?;
            std::io::stdout()
                .write_all(&data)
                .map_err(io_err("writing", Path::new("stdout")))?;
        }
        ImageVerb::CatConfig { image } => {
            let rec = image::resolve(&store, &image)?;
            let p = image::prepare(&store, &rec)?;
            let v = serde_json::json!({
                "id": p.record.id.to_string(),
                "rootfs": p.rootfs,
                "app": p.defaults,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        ImageVerb::Verify => {
            let problems = store.verify()?;
            for p in &problems {
                eprintln!("{}", p.message);
            }
            if !problems.is_empty() {
                return Err(ImageCliError::Corrupt(problems.len()));
            }
            println!(
                "ok: {} blob(s), {} image(s) verified",
                store.list_blobs()?.len(),
                store.records()?.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, format: Format, shape: &ListTable) -> Result<(), ImageCliError> {
    let recs = store.records()?;
    if format == Format::Json {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id.to_string(),
                    "name": r.names.first(),
                    "names": r.names,
                    "size": r.size(),
                    "import_time": r.import_time,
                    "last_used": r.last_used,
                    "manifest": r.manifest.digest.to_string(),
                    "layers": r.layers.len(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let columns = table::select(&IMAGE_COLUMNS, &shape.fields, DEFAULT_IMAGE_FIELDS)?;
    table::print(&columns, &recs, shape.full, shape.legend);
    Ok(())
}

/// How `image list` prints its table.
struct ListTable {
    fields: Vec<String>,
    full: bool,
    legend: bool,
}

/// The columns of `image list`, as rkt's.
const IMAGE_COLUMNS: [Column<ImageRecord>; 6] = [
    Column {
        field: "id",
        header: "ID",
        cell: |r, full| match full {
            true => r.id.to_string(),
            false => format!("sha256:{}", &r.id.hex()[..12]),
        },
    },
    Column {
        field: "name",
        header: "NAME",
        cell: |r, _| r.names.first().cloned().unwrap_or_else(|| "-".into()),
    },
    Column {
        field: "size",
        header: "SIZE",
        cell: |r, full| match full {
            true => r.size().to_string(),
            false => human_size(r.size()),
        },
    },
    Column {
        field: "importtime",
        header: "IMPORT TIME",
        cell: |r, full| time_cell(r.import_time, full),
    },
    Column {
        field: "lastused",
        header: "LAST USED",
        cell: |r, full| time_cell(r.last_used, full),
    },
    Column {
        field: "latest",
        header: "LATEST",
        cell: |r, _| {
            r.names
                .iter()
                .any(|name| name.ends_with(":latest"))
                .to_string()
        },
    },
];

/// The columns `image list` shows without `--fields`.
const DEFAULT_IMAGE_FIELDS: &[&str] = &["id", "name", "size", "importtime", "lastused"];

/// A time as an age, or with `--full` as a date.
fn time_cell(then: u64, full: bool) -> String {
    match full {
        true => table::timestamp(then),
        false => table::ago(then),
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn render(
    store: &Store,
    query: &str,
    rootfs_dest: &Path,
    meta_dir: Option<&Path>,
) -> Result<(), ImageCliError> {
    let rec = image::resolve(store, query)?;
    let p = image::prepare(store, &rec)?;
    if fs::read_dir(rootfs_dest).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ImageCliError::Usage(format!(
            "{} exists and is not empty; give a new or empty directory",
            rootfs_dest.display()
        )));
    }
    crate::tree_copy::copy_tree(&p.rootfs, rootfs_dest).map_err(|source| {
        ImageCliError::Extract {
            dest: rootfs_dest.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    if let Some(dir) = meta_dir {
        for (name, d) in [
            ("manifest", &rec.manifest.digest),
            ("config", &rec.config.digest),
        ] {
            let path = dir.join(name);
            fs::write(&path, store.read_blob(d)?).map_err(io_err("writing", &path))?;
        }
    }
    Ok(())
}

/// Builds `dir` with `spec` into an OCI layout in the store's temporary space, imports it as
/// `tag` and prints the image id and manifest digest.
fn build(store: &Store, tag: &str, spec: Option<&Path>, dir: &Path) -> Result<(), ImageCliError> {
    let spec = match spec {
        Some(path) => BuildSpec::read(path)?,
        None => BuildSpec::default(),
    };
    let name = fetch::canonical_name(&super::image_build_from::docker_reference(tag))?;
    // (a leftover of a crashed build goes with the store's next `image gc`)
    let layout = store
        .tmp_dir()
        .join(format!("build-{}.partial", std::process::id()));
    let _ = fs::remove_dir_all(&layout);
    let built = build::write_layout(dir, &spec, &layout)
        .map_err(ImageCliError::from)
        .and_then(|digest| Ok((digest, fetch::import_layout(store, &name, &layout)?)));
    let _ = fs::remove_dir_all(&layout);
    let (digest, record) = built?;
    println!("{} {digest} {name}", record.id);
    Ok(())
}

fn export(store: &Store, query: &str, file: &Path, overwrite: bool) -> Result<(), ImageCliError> {
    let rec = image::resolve(store, query)?;
    if file.exists() && !overwrite {
        return Err(ImageCliError::Usage(format!(
            "{} exists; pass --overwrite to replace it",
            file.display()
        )));
    }
    let tmp = file.with_extension("podvm-partial");
    let out = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    write_oci_archive(store, &rec, out).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, file).map_err(io_err("renaming to", file))?;
    Ok(())
}

fn write_oci_archive(store: &Store, rec: &ImageRecord, out: fs::File) -> std::io::Result<()> {
    let mut b = tar::Builder::new(std::io::BufWriter::new(out));
    let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(rec.import_time);
        h.set_cksum();
        b.append_data(&mut h, name, data)
    };
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": rec.manifest.media_type,
            "digest": rec.manifest.digest.to_string(),
            "size": rec.manifest.size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    add(&mut b, "index.json", index.to_string().as_bytes())?;
    for d in rec.blobs() {
        let path = store.blob_path(d);
        let mut f = fs::File::open(&path)?;
        b.append_file(format!("blobs/sha256/{}", d.hex()), &mut f)?;
    }
    b.into_inner()?.flush()
}
