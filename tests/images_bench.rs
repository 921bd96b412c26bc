//! Benchmark (ignored by default; run with `cargo test --release --test images_bench --
//! --ignored --nocapture`): fetch + render of the ~100 MiB, 5-layer `bench` fixture from a local
//! registry with podvm, vs `skopeo copy` + `umoci unpack` of the same image, same run.
//! Prints both times and the ratio; asserts only that both produce the same tree (timings are
//! too noisy on shared machines to assert).

#[path = "registry_support/mod.rs"]
mod registry_support;

#[path = "images_support/mod.rs"]
mod images_support;

use std::process::Command;
use std::time::Instant;

use images_support::*;
use registry_support::{run_checked, Registry};

#[test]
#[ignore = "benchmark: run explicitly"]
fn bench_fetch_render_vs_skopeo_umoci() {
    if registry_support::skip() {
        return;
    }
    let reg = Registry::start(false);
    reg.push_exact("bench", "bench");
    let reference = reg.reference("bench");
    let t = tempfile::tempdir().expect("tempdir");

    let start = Instant::now();
    let dir = t.path().join("store");
    let id = image_id(&podvm_ok(&dir, &["fetch", INSECURE, &reference]));
    let podvm_time = start.elapsed();

    let start = Instant::now();
    let layout = t.path().join("layout");
    run_checked(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:latest", layout.display()),
    ]));
    let rootfs = umoci_unpack(&layout, &t.path().join("umoci"));
    let reference_time = start.elapsed();

    let ours = dir
        .join("images/trees")
        .join(id.trim_start_matches("sha256:"))
        .join("rootfs");
    assert_same_tree(&ours, &rootfs);
    let ratio = reference_time.as_secs_f64() / podvm_time.as_secs_f64();
    println!(
        "bench: podvm fetch+render {:.2}s; skopeo copy + umoci unpack {:.2}s; ratio {ratio:.2}x (goal >= 1.5x)",
        podvm_time.as_secs_f64(),
        reference_time.as_secs_f64()
    );
}
