//! What every filtered VMM thread needs, whatever it serves: the allocator, locks and
//! channels, the std library's I/O on its own descriptors, and ending the thread.

use super::rules::{group, with_arg, Group, FCNTL_CMDS};

/// The groups every thread kind gets.
pub fn groups() -> Vec<Group> {
    vec![
        group(
            "the allocator (glibc malloc: arenas, large blocks, trimming) and vm-memory's \
             checked accessors",
            &[
                libc::SYS_brk,
                libc::SYS_mmap,
                libc::SYS_munmap,
                libc::SYS_mremap,
                libc::SYS_mprotect,
                libc::SYS_madvise,
            ],
        ),
        group(
            "Mutex, Condvar, mpsc channels and thread join (futex); the kick signal of vCPUs \
             returns through rt_sigreturn",
            &[
                libc::SYS_futex,
                libc::SYS_sched_yield,
                libc::SYS_rt_sigreturn,
                libc::SYS_rt_sigprocmask,
            ],
        ),
        group(
            "ending the thread: std removes its alternate signal stack, glibc frees the stack \
             and the thread exits",
            &[libc::SYS_sigaltstack, libc::SYS_exit],
        ),
        with_arg(
            "a panic aborts the process (panic = \"abort\"): abort() raises SIGABRT",
            libc::SYS_tgkill,
            2,
            &[libc::SIGABRT as u64],
        ),
        group(
            "time (vDSO fallback) for rate-limited logs, deadlines and the console log",
            &[
                libc::SYS_clock_gettime,
                libc::SYS_clock_nanosleep,
                libc::SYS_nanosleep,
                libc::SYS_gettimeofday,
            ],
        ),
        group(
            "reading and writing the thread's own descriptors: eventfd counters, irqfds, \
             stderr (eprintln), console output; closing what it dropped",
            &[
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_readv,
                libc::SYS_writev,
                libc::SYS_close,
            ],
        ),
        group(
            "identity for logs and the std library (gettid, getpid); thread-local random \
             seeds of HashMap",
            &[libc::SYS_gettid, libc::SYS_getpid, libc::SYS_getrandom],
        ),
        with_arg(
            "duplicating and flagging its own descriptors (EventFd::try_clone, O_NONBLOCK)",
            libc::SYS_fcntl,
            1,
            FCNTL_CMDS,
        ),
    ]
}

/// What every device worker does between requests: sleep in epoll on its kicks and its stop
/// eventfd (worker.rs `run`), and wait for its next activation on a channel.
pub fn worker() -> Group {
    group(
        "a device worker's loop: epoll_wait on its kicks and stop eventfd (worker.rs run)",
        &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait],
    )
}
