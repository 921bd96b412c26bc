//! `sandbox-demo DIR BUSYBOX_ROOT LAYERS_ROOT`: drives podvm's runtime library directly (no
//! podvm binary): creates a sandbox in DIR, adds a container from the busybox image tree and
//! starts it, execs in it, later adds a second one from the `layers` image tree, execs in it
//! (which lets it finish), signals the first, waits for both, reads stats, removes both and
//! stops the sandbox. Prints one fact per line (`key=value`) for the test to assert on.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podvm::runtime::{
    ContainerConfig, ExecConfig, ExitStatus, Io, ProcessSpec, Sandbox, SandboxConfig,
};

/// How long a container may take to end once told to.
const WAIT: Option<Duration> = Some(Duration::from_secs(120));

/// A sink whose bytes the demo reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn io_of(out: &Captured, err: &Captured) -> Io {
    Io {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    }
}

fn failed(what: &str) -> impl FnOnce(podvm::runtime::SandboxError) -> io::Error + '_ {
    move |err| io::Error::other(format!("{what}: {err}"))
}

fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn container(id: &str, rootfs: &Path, script: &str) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        rootfs: rootfs.to_path_buf(),
        process: ProcessSpec {
            command: shell(script),
            ..ProcessSpec::default()
        },
        read_only: false,
    }
}

fn exec(sandbox: &Sandbox, id: &str, script: &str) -> io::Result<()> {
    let (out, err) = (Captured::default(), Captured::default());
    let config = ExecConfig {
        command: shell(script),
        ..ExecConfig::default()
    };
    let status = sandbox
        .exec(id, config, io_of(&out, &err))
        .map_err(failed("exec"))?;
    println!("exec-{id}-status={status:?}");
    for line in out.text().lines() {
        println!("exec-{id}-out={line}");
    }
    Ok(())
}

/// Overlay mounts below `dir` now.
fn mounts_below(dir: &Path) -> usize {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split(' ').nth(4).is_some_and(|p| p.starts_with(&*dir)))
        .count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

/// Runs the demo; see the module docs.
pub fn run(dir: &str, busybox: &str, layers: &str) -> io::Result<()> {
    let dir = std::path::absolute(dir)?;
    let (busybox, layers) = (PathBuf::from(busybox), PathBuf::from(layers));
    let config = SandboxConfig {
        dir: dir.clone(),
        memory_mib: 384,
        stop_grace: Duration::from_secs(5),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::create(config).map_err(failed("create"))?;
    println!("created cid={}", sandbox.cid());
    // mountinfo shows paths without symlinks.
    let real_dir = std::fs::canonicalize(&dir)?;
    let (bb_out, bb_err) = (Captured::default(), Captured::default());
    sandbox
        .add_container(container(
            "bb",
            &busybox,
            "trap 'echo bb-got-term; exit 7' TERM; echo bb-started; \
             while :; do sleep 0.2; done",
        ))
        .map_err(failed("add bb"))?;
    sandbox
        .start("bb", io_of(&bb_out, &bb_err))
        .map_err(failed("start bb"))?;
    exec(
        &sandbox,
        "bb",
        "echo in-bb; test -e /hello.txt && echo has-hello || echo no-hello",
    )?;
    let (ly_out, ly_err) = (Captured::default(), Captured::default());
    sandbox
        .add_container(container(
            "ly",
            &layers,
            "cat /hello.txt; while [ ! -e /ly-release ]; do sleep 0.2; done; \
             echo ly-released; exit 3",
        ))
        .map_err(failed("add ly"))?;
    sandbox
        .start("ly", io_of(&ly_out, &ly_err))
        .map_err(failed("start ly"))?;
    println!("mounts-running={}", mounts_below(&real_dir));
    exec(
        &sandbox,
        "ly",
        "echo in-ly; test -e /hello.txt && echo has-hello; touch /ly-release",
    )?;
    let upper = dir.join("overlay/ly/upper/ly-release");
    println!("host-sees-ly-write={}", upper.exists());
    sandbox.signal("bb", 15).map_err(failed("signal bb"))?;
    let bb: ExitStatus = sandbox.wait("bb", WAIT).map_err(failed("wait bb"))?;
    let ly: ExitStatus = sandbox.wait("ly", WAIT).map_err(failed("wait ly"))?;
    println!("bb-exit={bb:?}");
    println!("ly-exit={ly:?}");
    for (id, out, err) in [("bb", &bb_out, &bb_err), ("ly", &ly_out, &ly_err)] {
        for line in out.text().lines() {
            println!("{id}-out={line}");
        }
        for line in err.text().lines() {
            println!("{id}-err={line}");
        }
    }
    let stats = sandbox.stats();
    println!(
        "stats vcpus={} vcpu_time_ms={} guest_resident_kib={} process_rss_kib={} memory_mib={} \
         containers={:?}",
        stats.vcpus,
        stats.vcpu_time_ms,
        stats.guest_resident_kib,
        stats.process_rss_kib,
        stats.memory_mib,
        stats.containers
    );
    for id in ["bb", "ly"] {
        sandbox.remove(id).map_err(failed("remove"))?;
        println!(
            "removed {id} share-dir-left={}",
            dir.join("share").join(id).exists()
        );
    }
    sandbox.stop().map_err(failed("stop"))?;
    println!("stopped");
    println!("mounts-after={}", mounts_below(&real_dir));
    println!("dir-left={}", dir.exists());
    println!("threads-after={}", threads());
    Ok(())
}
