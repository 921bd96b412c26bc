//! The filters compile, and a thread under the vCPU filter can do its work but dies of SIGSYS on
//! a forbidden call (observed from a forked child, so the test process survives).

use super::*;

const KINDS: [ThreadKind; 5] = [
    ThreadKind::Vcpu,
    ThreadKind::Rng,
    ThreadKind::Vsock,
    ThreadKind::Net,
    ThreadKind::Fs,
];

#[test]
fn every_filter_compiles_in_both_modes_and_off_compiles_to_nothing() {
    for kind in KINDS {
        for mode in [Mode::Kill, Mode::Log] {
            let program = compile(kind, mode, "test").expect("compiles");
            assert!(program.is_some_and(|p| !p.is_empty()), "{kind:?} {mode:?}");
        }
        assert!(compile(kind, Mode::Off, "test").expect("off").is_none());
    }
}

#[test]
fn every_group_says_why_and_no_filter_allows_exec_sockets_or_ptrace() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_kill,
        libc::SYS_init_module,
        libc::SYS_bpf,
    ];
    for kind in KINDS {
        for group in kind.groups() {
            assert!(group.why.len() > 10, "{kind:?}: a group without its reason");
            for allow in &group.allow {
                let nr = match allow {
                    Allow::Call(nr) | Allow::ArgIn { nr, .. } => *nr,
                };
                assert!(
                    !forbidden.contains(&nr),
                    "{kind:?} allows {nr}: {}",
                    group.why
                );
            }
        }
    }
}

#[test]
fn only_the_fs_worker_may_open_files() {
    for kind in KINDS {
        let opens = kind.groups().iter().any(|group| {
            group
                .allow
                .iter()
                .any(|allow| matches!(allow, Allow::Call(nr) if *nr == libc::SYS_openat))
        });
        assert_eq!(opens, kind == ThreadKind::Fs, "{kind:?}");
    }
}

#[test]
fn the_mode_switch_is_kill_unless_log_or_the_named_unsafe_off() {
    assert_eq!(Mode::parse(None), Mode::Kill);
    assert_eq!(Mode::parse(Some("kill")), Mode::Kill);
    assert_eq!(Mode::parse(Some("log")), Mode::Log);
    assert_eq!(Mode::parse(Some("unsafe-off")), Mode::Off);
    // Attack: a typo or a plain "off" must not disable the filters.
    assert_eq!(Mode::parse(Some("off")), Mode::Kill);
    assert_eq!(Mode::parse(Some("0")), Mode::Kill);
}

/// What a filtered child runs; its result is the child's exit code.
type ChildBody = fn() -> i32;

/// How a forked child that installed the vCPU filter and ran `body` ended.
fn in_filtered_child(body: ChildBody) -> nix::sys::wait::WaitStatus {
    // SAFETY: the child only calls async-signal-safe functions and the filter installation
    // (no locks held across the fork in this single-purpose helper), then _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = match install_in_mode(ThreadKind::Vcpu, Mode::Kill, "test-vcpu") {
                Ok(()) => body(),
                Err(_) => 100,
            };
            // exit(2) of the only thread ends the child with `code` (exit_group is not in the
            // filter: no VMM thread ends the process).
            // SAFETY: ends this thread at once; nothing of it is used afterwards.
            unsafe { libc::syscall(libc::SYS_exit, code) };
            unreachable!("exit(2) returned")
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).expect("waitpid")
        }
    }
}

#[test]
fn a_thread_with_the_vcpu_filter_does_its_calls_and_is_killed_on_a_forbidden_one() {
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;

    // Allowed: eventfds, epoll (device activation), memory, writes on its own descriptors, and
    // a KVM ioctl number on a descriptor that is not KVM's (the kernel answers ENOTTY).
    let allowed = in_filtered_child(|| {
        let Ok(fd) = vmm_sys_util::eventfd::EventFd::new(0) else {
            return 1;
        };
        if fd.write(1).is_err() || fd.read().ok() != Some(1) {
            return 2;
        }
        let Ok(_epoll) = vmm_sys_util::epoll::Epoll::new() else {
            return 3;
        };
        let buffer = vec![7u8; 1 << 20];
        if buffer.iter().map(|b| usize::from(*b)).sum::<usize>() != 7 << 20 {
            return 4;
        }
        let kvm_run = vcpu::ioctls()[0];
        // SAFETY: an ioctl without argument on an eventfd: the kernel refuses it.
        let ret = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), kvm_run) };
        if ret != -1 {
            return 5;
        }
        0
    });
    assert!(
        matches!(allowed, WaitStatus::Exited(_, 0)),
        "allowed calls: {allowed:?}"
    );

    // Attack: code run on a vCPU thread tries to open a host file, create a socket, exec.
    let forbidden: [(&str, ChildBody); 3] = [
        ("openat", || {
            // SAFETY: a NUL-terminated path; the descriptor, if any, is left to the exit.
            unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) }
        }),
        ("socket", || {
            // SAFETY: plain socket(2) call with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
        }),
        ("execve", || {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path, NULL-terminated argv and envp.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
        }),
    ];
    for (what, call) in forbidden {
        let status = in_filtered_child(call);
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{what} on a vCPU thread: {status:?}"
        );
    }
}
