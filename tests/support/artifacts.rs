//! Where `make` puts the podvm artifacts, and the skip-or-fail policy when they are missing.
//!
//! Layout under [`out_dir`]: `bin/podvm`, `lib/podvm/vmlinux`, `lib/podvm/podvm-agent`,
//! `test/podvm-probe` (a test-only static tool, tests/probe), and optionally `lib/podvm/busybox` (otherwise `PODVM_GUEST_BUSYBOX` or a static `/bin/busybox`).

use std::path::{Path, PathBuf};

use super::nested::Batch;

/// Why the artifacts for an end-to-end test are not usable.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// A file `make` should have produced is absent.
    #[error("{what} not found at {path} (run `make` or set PODVM_OUT_DIR)")]
    Missing {
        /// Which artifact.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// No static busybox for the guest.
    #[error("no static busybox for the guest: put one at {0}, set PODVM_GUEST_BUSYBOX, or install busybox-static")]
    NoBusybox(PathBuf),
}

/// The artifacts an end-to-end test needs.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The host binary (`out/bin/podvm`).
    pub podvm: PathBuf,
    /// The static guest agent (`out/lib/podvm/podvm-agent`).
    pub agent: PathBuf,
    /// The guest kernel (`out/lib/podvm/vmlinux`).
    pub vmlinux: PathBuf,
    /// A static busybox usable inside the guest.
    pub busybox: PathBuf,
    /// The static test probe (`out/test/podvm-probe`: xattrs, shared mmap).
    pub probe: PathBuf,
}

/// The repository root (the root package's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The artifact directory: `$PODVM_OUT_DIR`, else `<repo>/out`.
pub fn out_dir() -> PathBuf {
    match std::env::var_os("PODVM_OUT_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("out"),
    }
}

/// True when missing artifacts must fail tests instead of skipping them
/// (`CI=true` or `PODVM_REQUIRE_E2E=1`).
pub fn e2e_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("PODVM_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// Reports a skipped test: prints `skipping: {reason}`, or panics when [`e2e_required`].
pub fn skip(reason: &str) {
    if e2e_required() {
        panic!(
            "end-to-end test cannot run and CI=true/PODVM_REQUIRE_E2E=1 forbids skipping: {reason}"
        );
    }
    eprintln!("skipping: {reason}");
}

/// Locates every artifact, or says which one is missing.
pub fn find() -> Result<Artifacts, ArtifactsError> {
    let out = out_dir();
    let lib = out.join("lib/podvm");
    Ok(Artifacts {
        podvm: existing("podvm binary", out.join("bin/podvm"))?,
        agent: existing("podvm-agent", lib.join("podvm-agent"))?,
        vmlinux: existing("guest kernel vmlinux", lib.join("vmlinux"))?,
        busybox: guest_busybox(&lib)?,
        probe: existing("podvm-probe test tool", out.join("test/podvm-probe"))?,
    })
}

/// The artifacts, or `None` after [`skip`] printed why (panics instead under CI).
///
/// Usage: `let Some(art) = support::artifacts::require() else { return };`
pub fn require() -> Option<Artifacts> {
    match find() {
        Ok(found) => Some(found),
        Err(e) => {
            skip(&e.to_string());
            None
        }
    }
}

impl Artifacts {
    /// Adds the artifacts to a batch payload mirroring the `out/` layout: `bin/podvm`,
    /// `lib/podvm/{podvm-agent,vmlinux,busybox}` (so `podvm` is on the checks' PATH).
    pub fn add_to(&self, batch: Batch) -> Batch {
        batch
            .payload_file(&self.podvm, "bin/podvm")
            .payload_file(&self.agent, "lib/podvm/podvm-agent")
            .payload_file(&self.vmlinux, "lib/podvm/vmlinux")
            .payload_file(&self.busybox, "lib/podvm/busybox")
            .payload_file(&self.probe, "test/podvm-probe")
    }
}

fn existing(what: &'static str, path: PathBuf) -> Result<PathBuf, ArtifactsError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(ArtifactsError::Missing { what, path })
    }
}

fn guest_busybox(lib: &Path) -> Result<PathBuf, ArtifactsError> {
    let in_out = lib.join("busybox");
    let from_env = std::env::var_os("PODVM_GUEST_BUSYBOX").map(PathBuf::from);
    [
        Some(in_out.clone()),
        from_env,
        Some(PathBuf::from("/bin/busybox")),
    ]
    .into_iter()
    .flatten()
    .find(|p| is_static_elf(p))
    .ok_or(ArtifactsError::NoBusybox(in_out))
}

/// True if `path` is an x86-64 ELF file without a PT_INTERP program header.
pub fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = std::fs::read(path) else {
        return false;
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let mut off_bytes = [0u8; 8];
    off_bytes.copy_from_slice(&elf[0x20..0x28]);
    let phoff = u64::from_le_bytes(off_bytes) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        match elf.get(at..at + 4) {
            Some(t) => u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP,
            None => false,
        }
    })
}
