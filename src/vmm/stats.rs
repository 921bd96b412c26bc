//! Memory accounting of the VMM process: how much of its resident memory is guest RAM and how
//! much is the VMM's own overhead (read from /proc/PID/smaps and /proc/PID/status: the VMM
//! process's own at the end, its supervisor's view of it while it runs).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemory, GuestMemoryMmap};

/// Memory figures taken just before the VM is torn down.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStats {
    /// Peak resident set of the VMM process (VmHWM), KiB.
    pub process_peak_rss_kib: u64,
    /// Current resident set of the VMM process (VmRSS), KiB.
    pub process_rss_kib: u64,
    /// Guest RAM pages the guest touched (resident in the guest mappings), KiB.
    pub guest_resident_kib: u64,
    /// `process_rss_kib - guest_resident_kib`: what the VMM itself costs, KiB.
    pub vmm_overhead_kib: u64,
    /// How the guest ended: the state of the vCPU whose exit ended it (see `vcpu.rs`); not
    /// part of the figures.
    #[serde(skip)]
    pub guest_end: Option<String>,
}

/// Measures the process and the guest mappings of `memory`.
pub fn measure(memory: &GuestMemoryMmap) -> VmStats {
    measure_regions(Path::new(SELF), &guest_starts(memory))
}

/// This process in /proc.
const SELF: &str = "/proc/self";

/// The host addresses where the guest RAM regions of `memory` are mapped.
fn guest_starts(memory: &GuestMemoryMmap) -> Vec<u64> {
    memory.iter().map(|region| region.as_ptr() as u64).collect()
}

/// Measures the process at `proc_dir` (`/proc/PID`) and its guest mappings starting at
/// `guest_starts`.
fn measure_regions(proc_dir: &Path, guest_starts: &[u64]) -> VmStats {
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
    let smaps = std::fs::read_to_string(proc_dir.join("smaps")).unwrap_or_default();
    let process_rss_kib = status_field(&status, "VmRSS:");
    let guest_resident_kib = guest_rss_kib(&smaps, guest_starts);
    VmStats {
        process_peak_rss_kib: status_field(&status, "VmHWM:"),
        process_rss_kib,
        guest_resident_kib,
        vmm_overhead_kib: process_rss_kib.saturating_sub(guest_resident_kib),
        guest_end: None,
    }
}

/// What a running VM's figures are read from while it runs: its VMM process, where its guest
/// RAM is mapped there and which threads are its vCPUs (in the VMM process each records its
/// own thread id when it starts; seen from the supervisor, they are the threads named
/// `vcpuN`).
#[derive(Debug)]
pub struct LiveSource {
    proc_dir: PathBuf,
    guest_starts: Vec<u64>,
    vcpu_tids: Option<std::sync::Mutex<Vec<libc::pid_t>>>,
}

/// A VM's figures while it runs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LiveStats {
    /// Memory of the process and of the guest, as at the end of a run.
    pub memory: VmStats,
    /// CPU time the VM's vCPU threads used so far (user and system), in milliseconds.
    pub vcpu_time_ms: u64,
    /// vCPU threads seen.
    pub vcpus: usize,
}

impl LiveSource {
    /// A source for the VM whose guest RAM is `memory`.
    pub fn new(memory: &GuestMemoryMmap) -> Self {
        Self {
            proc_dir: PathBuf::from(SELF),
            guest_starts: guest_starts(memory),
            vcpu_tids: Some(std::sync::Mutex::new(Vec::new())),
        }
    }

    /// A source for the VM run by VMM process `pid`, whose guest RAM is mapped at
    /// `guest_starts` there.
    pub fn of_process(pid: u32, guest_starts: Vec<u64>) -> Self {
        Self {
            proc_dir: PathBuf::from(format!("/proc/{pid}")),
            guest_starts,
            vcpu_tids: None,
        }
    }

    /// Where the guest RAM regions are mapped in the VMM process.
    pub fn guest_starts(&self) -> &[u64] {
        &self.guest_starts
    }

    /// Records the calling thread as one of the VM's vCPUs.
    pub fn register_vcpu_thread(&self) {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        if let Some(tids) = &self.vcpu_tids {
            lock_tids(tids).push(tid);
        }
    }

    /// The VM's figures now (a vCPU thread that ended counts no more).
    pub fn sample(&self) -> LiveStats {
        let tids = match &self.vcpu_tids {
            Some(tids) => lock_tids(tids).clone(),
            None => vcpu_threads(&self.proc_dir),
        };
        // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
        let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .ok()
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100);
        let cpu_ticks: u64 = tids
            .iter()
            .filter_map(|tid| thread_cpu_ticks(&self.proc_dir, *tid))
            .sum();
        LiveStats {
            memory: measure_regions(&self.proc_dir, &self.guest_starts),
            vcpu_time_ms: cpu_ticks * 1000 / ticks,
            vcpus: tids.len(),
        }
    }
}

fn lock_tids(
    tids: &std::sync::Mutex<Vec<libc::pid_t>>,
) -> std::sync::MutexGuard<'_, Vec<libc::pid_t>> {
    tids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The threads of the process at `proc_dir` named `vcpuN` (see `vcpu.rs`).
fn vcpu_threads(proc_dir: &Path) -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| task.ok())
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.strip_prefix("vcpu").is_some_and(is_index))
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}

/// `N\n` of a `vcpuN` thread name.
fn is_index(rest: &str) -> bool {
    let digits = rest.trim_end();
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// utime + stime of thread `tid` of the process at `proc_dir`, in clock ticks; `None` once it
/// ended.
fn thread_cpu_ticks(proc_dir: &Path, tid: libc::pid_t) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join(format!("task/{tid}/stat"))).ok()?;
    cpu_ticks_of_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a /proc stat line; the name in parentheses may hold
/// spaces, so the fields are counted after its closing parenthesis.
fn cpu_ticks_of_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Sums the `Rss:` of the smaps entries whose mapping starts at one of `starts`.
fn guest_rss_kib(smaps: &str, starts: &[u64]) -> u64 {
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(range) = line
            .split_whitespace()
            .next()
            .filter(|field| field.contains('-'))
        {
            if let Some(start) = range
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                in_guest = starts.contains(&start);
                continue;
            }
        }
        if in_guest {
            if let Some(rest) = line.strip_prefix("Rss:") {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|kib| kib.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_and_status() {
        let smaps = "7f00-7f10 rw-p 0 00:00 0\nSize: 64 kB\nRss: 12 kB\n\
                     8f00-8f10 rw-p 0 00:00 0\nRss: 5 kB\n";
        assert_eq!(guest_rss_kib(smaps, &[0x7f00]), 12);
        assert_eq!(
            status_field("VmHWM:\t  2048 kB\nVmRSS: 1024 kB\n", "VmHWM:"),
            2048
        );
    }

    #[test]
    fn cpu_time_is_read_after_the_thread_name() {
        let stat = "42 (vcpu 0) S 1 1 1 0 -1 4194368 0 0 0 0 170 30 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_ticks_of_stat(stat), Some(200));
    }

    #[test]
    fn a_live_source_counts_registered_threads() {
        let memory = crate::vmm::memory::create(64).expect("alloc");
        let source = std::sync::Arc::new(LiveSource::new(&memory));
        source.register_vcpu_thread();
        let sample = source.sample();
        assert_eq!(sample.vcpus, 1);
        assert!(sample.memory.process_rss_kib > 0, "{sample:?}");
    }

    #[test]
    fn another_process_s_vcpus_are_its_threads_named_vcpu_n() {
        let memory = crate::vmm::memory::create(64).expect("alloc");
        let starts = guest_starts(&memory);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (running_tx, running) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vcpu7".into())
            .spawn(move || {
                // Named by now: the name is set before the thread's closure runs.
                let _ = running_tx.send(());
                let _ = rx.recv();
            })
            .expect("spawn");
        running.recv().expect("the thread runs");
        let source = LiveSource::of_process(std::process::id(), starts);
        let sample = source.sample();
        drop(tx);
        thread.join().expect("join");
        assert_eq!(sample.vcpus, 1, "{sample:?}");
        assert!(sample.memory.process_rss_kib > 0, "{sample:?}");
        assert!(!is_index("") && is_index("12\n") && !is_index("-x"));
    }

    #[test]
    fn touched_guest_memory_is_counted() {
        use vm_memory::{Bytes, GuestAddress};
        let memory = crate::vmm::memory::create(64).expect("alloc");
        memory
            .write_slice(&vec![1u8; 8 << 20], GuestAddress(0))
            .expect("touch");
        let stats = measure(&memory);
        assert!(stats.guest_resident_kib >= 8 * 1024, "{stats:?}");
        assert!(stats.process_rss_kib >= stats.guest_resident_kib);
    }
}
