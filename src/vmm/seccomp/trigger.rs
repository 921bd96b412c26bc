//! A test-only way to make a filtered thread break its filter, compiled only with the cargo
//! feature `seccomp-test-trigger` (`make binaries` builds that variant as
//! `out/test/podvm-seccomp-trigger` for the E2E tests; `out/bin/podvm` has no such code).
//!
//! `PODVM_SECCOMP_TEST_TRIGGER` names what to do: `vcpu-execve` (each vCPU thread calls
//! execve(2) once its filter is in), `vcpu-open` (each vCPU opens /etc/passwd on the host) or
//! `worker-socket` (a device worker opens an AF_INET socket at its first activation). With the
//! filters on, the process dies of SIGSYS there.

/// The environment variable that arms the trigger.
pub const TRIGGER_ENV: &str = "PODVM_SECCOMP_TEST_TRIGGER";

/// Where the trigger sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A vCPU thread, right after installing its filter.
    Vcpu,
    /// A device worker, when it is handed its first activation (guest queues).
    Worker,
}

/// Makes the forbidden call the environment asks for at `site`, if any.
pub fn fire(site: Site) {
    let Ok(what) = std::env::var(TRIGGER_ENV) else {
        return;
    };
    match (site, what.as_str()) {
        (Site::Vcpu, "vcpu-execve") => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: valid NUL-terminated path and NULL-terminated argv/envp arrays. If the
            // filter were off, the process would become /bin/true, which the test would see.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        (Site::Vcpu, "vcpu-open") => {
            let _ = std::fs::File::open("/etc/passwd");
        }
        (Site::Worker, "worker-socket") => {
            let _ = std::net::UdpSocket::bind("127.0.0.1:0");
        }
        _ => return,
    }
    eprintln!("podvm: seccomp test trigger {what}: the forbidden call returned (no filter?)");
}
