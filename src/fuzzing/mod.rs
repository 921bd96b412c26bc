//! Entry points of the coverage-guided fuzz targets in `fuzz/` (one function per target).
//!
//! Each function takes the fuzzer's bytes, decodes them into the operations of its target with
//! ordinary code, runs them, and panics when an oracle fails (a panic is a crash to the fuzzer).
//! Errors the code under test returns are expected: hostile input must be refused, never crash
//! podvm or touch the host outside the directory it was given. Because the decoding is ordinary
//! code, a crashing input replays as a unit test: `podvm::fuzzing::layer(include_bytes!(..))`.
//!
//! Not part of podvm's interface: hidden from the docs, used by `fuzz/` only.

mod input;
mod layer;
mod parsers;
mod tree;
mod virtio;
mod virtio_fs;

pub use self::layer::layer;
pub use self::parsers::{agent_protocol, auth_challenge, cni_result, image_manifest};
pub use self::virtio::{virtio_fs_queue, virtio_net, virtio_rng};
pub use self::virtio_fs::virtio_fs;

/// A fuzz target: takes the fuzzer's bytes, panics when an oracle fails.
pub type Target = fn(&[u8]);

/// Every target by name, for runners and replay tests.
pub const TARGETS: &[(&str, Target)] = &[
    ("agent_protocol", agent_protocol),
    ("auth_challenge", auth_challenge),
    ("cni_result", cni_result),
    ("image_manifest", image_manifest),
    ("layer", layer),
    ("virtio_fs", virtio_fs),
    ("virtio_fs_queue", virtio_fs_queue),
    ("virtio_net", virtio_net),
    ("virtio_rng", virtio_rng),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replays the committed inputs of every target (seed corpus and regressions, see
    /// README.md, "Fuzzing") within podvm's own test run, as `cargo test --manifest-path
    /// fuzz/Cargo.toml` does; `PODVM_FUZZ_INPUT=target:path` replays one file instead.
    #[test]
    fn committed_fuzz_inputs_pass_their_targets() {
        if let Ok(one) = std::env::var("PODVM_FUZZ_INPUT") {
            let (name, path) = one.split_once(':').expect("target:path");
            let target = super::TARGETS
                .iter()
                .find(|(n, _)| *n == name)
                .expect("a target of that name");
            (target.1)(&std::fs::read(path).expect("input"));
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for kind in ["corpus", "regressions"] {
            for (name, target) in super::TARGETS {
                let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for file in dir.flatten() {
                    target(&std::fs::read(file.path()).expect("input"));
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= super::TARGETS.len(), "every target has seeds");
    }
}
