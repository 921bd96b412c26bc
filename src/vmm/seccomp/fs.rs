//! The virtio-fs worker: the FUSE server (fuse-backend-rs' passthrough file system behind
//! podvm's guard, fs/guard.rs) over the share. Every path it opens is relative to a descriptor
//! inside the share (openat and friends on the share's root and inode fds); it never opens an
//! absolute path after the share is set up, but the kernel cannot tell those apart here: the
//! confinement of paths is the guard's and the passthrough's, this filter bounds what else
//! the thread can do (no exec, no sockets, no ptrace, no mount, no kernel modules...).

use super::rules::{group, with_arg, Group};

/// The fs worker's groups.
pub fn groups() -> Vec<Group> {
    vec![
        super::common::worker(),
        group(
            "lookups, opens and attributes (passthrough lookup/open/create/getattr/statfs: \
             openat on the share's descriptors, O_PATH reopens through /proc/self/fd, statx)",
            &[
                libc::SYS_openat,
                libc::SYS_newfstatat,
                libc::SYS_fstat,
                libc::SYS_statx,
                libc::SYS_fstatfs,
                libc::SYS_statfs,
                libc::SYS_readlinkat,
                libc::SYS_faccessat,
                libc::SYS_faccessat2,
                libc::SYS_lseek,
                libc::SYS_getdents64,
                libc::SYS_dup,
                // The mount id of an inode when statx has none (enable_mntid; kernels < 5.8).
                // Its counterpart open_by_handle_at stays forbidden (inode_file_handles off).
                libc::SYS_name_to_handle_at,
            ],
        ),
        group(
            "file data (passthrough read/write through FileReadWriteVolatile: pread/pwrite and \
             their vectored forms), fsync, fallocate, truncate, syncfs (fs/queue.rs on unmount)",
            &[
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_preadv2,
                libc::SYS_pwritev2,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_syncfs,
                libc::SYS_fallocate,
                libc::SYS_ftruncate,
                libc::SYS_copy_file_range,
            ],
        ),
        group(
            "changing the tree (mkdir, mknod of fifos and sockets, symlink, link, unlink, \
             rename with renameat2 flags, setattr: chmod, chown, utimes)",
            &[
                libc::SYS_mkdirat,
                libc::SYS_mknodat,
                libc::SYS_symlinkat,
                libc::SYS_linkat,
                libc::SYS_unlinkat,
                libc::SYS_renameat,
                libc::SYS_renameat2,
                libc::SYS_fchmod,
                libc::SYS_fchmodat,
                libc::SYS_fchown,
                libc::SYS_fchownat,
                libc::SYS_utimensat,
            ],
        ),
        group(
            "extended attributes (user.* only, the guard refuses the rest; passthrough uses the \
             /proc/self/fd path forms)",
            &[
                libc::SYS_getxattr,
                libc::SYS_setxattr,
                libc::SYS_listxattr,
                libc::SYS_removexattr,
                libc::SYS_lgetxattr,
                libc::SYS_lsetxattr,
                libc::SYS_llistxattr,
                libc::SYS_lremovexattr,
                libc::SYS_fgetxattr,
                libc::SYS_fsetxattr,
                libc::SYS_flistxattr,
                libc::SYS_fremovexattr,
            ],
        ),
        group(
            "acting as the guest's caller: the passthrough switches the thread's ids per \
             request (ScopedUid/ScopedGid: setresuid/setresgid) and drops CAP_FSETID on \
             writes (caps crate: capget/capset); it applies the guest's umask on create",
            &[
                libc::SYS_setresuid,
                libc::SYS_setresgid,
                libc::SYS_capget,
                libc::SYS_capset,
                libc::SYS_umask,
                libc::SYS_getuid,
                libc::SYS_getgid,
                libc::SYS_geteuid,
                libc::SYS_getegid,
            ],
        ),
        with_arg(
            "the guest's caller ids in the caps crate's checks (prctl PR_CAPBSET_READ)",
            libc::SYS_prctl,
            0,
            &[libc::PR_CAPBSET_READ as u64],
        ),
    ]
}
