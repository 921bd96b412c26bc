//! `podvm fetch IMAGE...`: fetch images into the store and print their ids.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use crate::image::fetch::{fetch, FetchOptions, PullPolicy};
use crate::image::ImageError;
use crate::store::{Store, StoreError};

/// Arguments of `podvm fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Images: docker://[host[:port]/]name[:tag|@digest], oci:DIR[:tag], oci-archive:FILE[:tag],
    /// docker-archive:FILE, FILE.aci, https://.../FILE.aci, or an appc name resolved by
    /// discovery (example.com/app[:version] or example.com/app,version=V,os=linux,arch=amd64).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Comma-separated security checks to skip: image (ACI signature verification; required for
    /// docker:// images, which have no signatures), http (allow plain http), tls (accept any
    /// certificate), all, none.
    #[arg(
        long = "insecure-options",
        value_delimiter = ',',
        default_value = "none"
    )]
    pub insecure_options: Vec<InsecureOption>,
    /// When to contact the remote: new (only if not in the store), update (always), never.
    #[arg(long = "pull-policy", value_enum, default_value_t = PullPolicy::New)]
    pub pull_policy: PullPolicy,
}

/// Security checks `--insecure-options` can skip (as in rkt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InsecureOption {
    /// Skip nothing.
    None,
    /// Skip image signature verification.
    Image,
    /// Allow plain http.
    Http,
    /// Accept any TLS certificate (self-signed, unknown issuer, wrong name).
    Tls,
    /// Skip pubkey checks (appc; accepted).
    Pubkey,
    /// Everything.
    All,
}

/// Errors of the verb.
#[derive(Debug, thiserror::Error)]
pub enum FetchCliError {
    /// An image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds fetch options from the rkt-style flags.
pub fn options(
    data_dir: &Path,
    insecure: &[InsecureOption],
    pull_policy: PullPolicy,
) -> FetchOptions {
    let has = |o| insecure.contains(&o) || insecure.contains(&InsecureOption::All);
    FetchOptions {
        insecure_http: has(InsecureOption::Http),
        insecure_tls: has(InsecureOption::Tls),
        insecure_image: has(InsecureOption::Image),
        pull_policy,
        data_dir: data_dir.to_path_buf(),
    }
}

/// Runs `podvm fetch`: prints one image id per image on stdout.
pub fn run(data_dir: &Path, args: FetchArgs) -> Result<ExitCode, FetchCliError> {
    let store = Store::open(data_dir)?;
    let opts = options(data_dir, &args.insecure_options, args.pull_policy);
    for img in &args.images {
        let rec = fetch(&store, &opts, img)?;
        println!("{}", rec.id);
    }
    Ok(ExitCode::SUCCESS)
}
