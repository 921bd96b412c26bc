//! End-to-end tests of virtio-fs: `podvm boot --rootfs DIR [--rootfs-ro]` runs the command
//! chrooted into a host directory shared over the in-process virtio-fs device. All checks run in
//! ONE nested L1 boot (or directly on a host with real KVM). The checksums, link counts, modes and
//! the sentinel outside the share are read on the host side of each check script.

mod support;

use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};
use support::privilege;

/// Builds two busybox trees from the payload's static busybox: `fsroot` (shared read-write) and
/// `fsro` (shared read-only, with a file to protect), and a sentinel outside both, on a tmpfs
/// mounted with strictatime (the L1 payload disk is noatime), so that any read of it moves its
/// atime.
const SETUP: &str = "set -e; for r in fsroot fsro; do \
       mkdir -p $r/bin $r/etc $r/tmp $r/proc $r/sys $r/dev && cp lib/podvm/busybox $r/bin/busybox; \
       for a in $($r/bin/busybox --list); do [ $a = busybox ] || ln -sf busybox $r/bin/$a; done; \
     done; \
     cp test/podvm-probe fsroot/bin/podvm-probe; \
     echo 'keep me' > fsro/existing; \
     mkdir -p outside && { mount -t tmpfs -o strictatime podvm-sentinel outside || echo no-strictatime-mount; }; \
     echo 'host secret' > outside/secret && touch -a -d '2001-01-01 00:00:00' outside/secret; \
     echo probe > outside/probe && touch -a -d '2001-01-01 00:00:00' outside/probe && p0=$(stat -c %X outside/probe); \
     cat outside/probe >/dev/null; [ \"$p0\" != \"$(stat -c %X outside/probe)\" ] && echo atime-works; \
     rm outside/probe; echo setup-ready";

/// Size of the file the mmap check writes through a shared mapping (not a page multiple).
const MMAP_BYTES: usize = 3_000_001;

/// Shares `fsroot` read-write.
const RW: &str = "podvm boot --rootfs fsroot";
/// Shares `fsro` read-only.
const RO: &str = "podvm boot --rootfs fsro --rootfs-ro";

/// What the guest tries in order to reach `outside/secret` (which lives next to the share).
const ESCAPES: &str = "cd / && cd ../../../.. && ls -a | tr '\\n' ' ' && echo; \
     cat ../outside/secret ../../outside/secret /outside/secret 2>/dev/null && echo LEAK-dotdot; \
     ln -s / /rootlink && cat /rootlink/../outside/secret 2>/dev/null && echo LEAK-rootlink; \
     ln -s /payload/outside/secret /abslink && cat /abslink 2>/dev/null && echo LEAK-abslink; \
     mkdir -p /payload/outside && echo pwned > /abslink && echo wrote-through-abslink; \
     ln /proc/1/root/init /hardlink 2>/dev/null && echo LEAK-hardlink-to-agent-root; \
     cat /proc/1/root/payload/outside/secret 2>/dev/null && echo LEAK-proc-root; \
     cat /proc/self/cwd/../outside/secret 2>/dev/null && echo LEAK-proc-cwd; \
     echo escapes-done";

/// Whether a guest `sync` or fsync reaches the host's disk: with L1's periodic writeback off
/// (restored after), the sectors written to the payload disk (where the share lives) while a
/// guest writes 8 MiB and stays up, then while another guest writes 8 MiB, runs `sync` and stays
/// up, then while a third writes 8 MiB with `conv=fsync` and stays up (a guest that exits is
/// synced by its agent at power-off, so all stay up while the host measures). With the
/// writeback cache the data sits in the guest's page cache first: fsync and sync must still
/// bring it to the host's disk.
const SYNCFS: &str = "dev=$(basename $(awk '$2==\"/payload\"{print $1}' /proc/mounts)); \
     written() { awk '{print $7}' /sys/block/$dev/stat; }; \
     upto() { for i in $(seq 900); do grep -q $1 $2 && return; sleep 0.2; done; echo no-$1; }; \
     e=$(cat /proc/sys/vm/dirty_expire_centisecs); w=$(cat /proc/sys/vm/dirty_writeback_centisecs); \
     echo 360000 > /proc/sys/vm/dirty_expire_centisecs; echo 0 > /proc/sys/vm/dirty_writeback_centisecs; \
     sync; s0=$(written); \
     podvm boot --rootfs fsroot -- sh -c 'dd if=/dev/urandom of=/nosync.bin bs=1M count=8 2>/dev/null; \
       echo written; exec sleep 600' >nosync.out 2>&1 & p1=$!; upto written nosync.out; s1=$(written); \
     podvm boot --rootfs fsroot -- sh -c 'dd if=/dev/urandom of=/synced.bin bs=1M count=8 2>/dev/null; \
       sync; echo synced; exec sleep 600' >synced.out 2>&1 & p2=$!; upto synced synced.out; s2=$(written); \
     podvm boot --rootfs fsroot -- sh -c 'dd if=/dev/urandom of=/fsynced.bin bs=1M count=8 conv=fsync \
       2>/dev/null; echo fsynced; exec sleep 600' >fsynced.out 2>&1 & p3=$!; upto fsynced fsynced.out; \
     s3=$(written); kill $p1 $p2 $p3; wait $p1 $p2 $p3; \
     echo $e > /proc/sys/vm/dirty_expire_centisecs; echo $w > /proc/sys/vm/dirty_writeback_centisecs; \
     echo nosync-sectors=$((s1 - s0)); echo synced-sectors=$((s2 - s1)); echo fsynced-sectors=$((s3 - s2)); \
     rm -f fsroot/nosync.bin fsroot/synced.bin fsroot/fsynced.bin";

static RESULTS: E2e = E2e::new("setup");

/// The result of check `name`, or `None` (test skipped) when artifacts are missing.
fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    let batch = e2e::batch("e2e-fs")?
        .check("setup", SETUP)
        .check("echo", &format!("{RW} -- echo hello from virtio-fs"))
        .check("exit42", &format!("{RW} -- sh -c 'exit 42'"))
        .check(
            "layout",
            &format!(
                "{RW} --workdir /tmp -- sh -c 'pwd; hostname; grep 127.0.1.1 /etc/hosts; \
                 grep -c \"^rootfs / virtiofs \" /proc/mounts; \
                 ls /proc/self/exe >/dev/null && echo proc-ok; [ -c /dev/null ] && echo dev-ok; \
                 [ -c /dev/pts/ptmx ] && echo pts-ok; echo tmp > /tmp/t && echo tmp-ok'; \
                 echo rc=$?; [ -e fsroot/tmp/t ] && echo LEAK-tmp-on-host || echo tmp-is-guest-only"
            ),
        )
        .check(
            "write_checksum",
            &format!(
                "{RW} -- sh -c 'head -c 3000000 /dev/urandom > /data.bin && md5sum /data.bin && sync /data.bin'; \
                 echo rc=$?; md5sum fsroot/data.bin; wc -c < fsroot/data.bin"
            ),
        )
        .check(
            "file_ops",
            &format!(
                "{RW} -- sh -c 'mkdir /w && echo content > /w/f && ln /w/f /w/hard && ln -s f /w/soft && \
                 mv /w/f /w/g && chmod 640 /w/g && sync /w/g && cat /w/hard && \
                 (cat /w/soft 2>/dev/null || echo soft-dangling) && ln -sf g /w/soft && cat /w/soft && \
                 mkdir /w/d && mv /w/d /w/e && rmdir /w/e && echo ops-ok'; echo rc=$?; \
                 stat -c '%h %a %i' fsroot/w/g; stat -c '%i' fsroot/w/hard; readlink fsroot/w/soft; \
                 cat fsroot/w/g; ls fsroot/w | tr '\\n' ' '"
            ),
        )
        .check(
            "read_only",
            &format!(
                "before=$(md5sum < fsro/existing); \
                 {RO} -- sh -c 'echo x > /new-file; echo create-rc=$?; echo y >> /existing; echo append-rc=$?; \
                 mkdir /d; echo mkdir-rc=$?; rm /existing; echo rm-rc=$?; cat /existing; \
                 mount -o remount,rw / && echo remounted-rw && \
                 {{ echo z >> /existing; echo host-append-rc=$?; touch /host-new; echo host-create-rc=$?; }}; true'; \
                 echo rc=$?; after=$(md5sum < fsro/existing); [ \"$before\" = \"$after\" ] && echo host-unchanged; \
                 ls fsro | tr '\\n' ' '"
            ),
        )
        .check(
            "escapes",
            &format!(
                "a0=$(stat -c %X outside/secret); {RW} -- sh -c \"{ESCAPES}\"; echo rc=$?; \
                 a1=$(stat -c %X outside/secret); cat outside/secret; [ \"$a0\" = \"$a1\" ] && echo sentinel-never-read; \
                 readlink fsroot/abslink; cat fsroot/payload/outside/secret; ls outside | tr '\\n' ' '"
            ),
        )
        .check(
            "xattr",
            &format!("{RW} -- sh -c 'echo x > /xfile && podvm-probe xattr /xfile'"),
        )
        .check(
            "mmap",
            &format!(
                "{RW} -- podvm-probe mmap-write /mapped {MMAP_BYTES}; echo rc=$?; \
                 test/podvm-probe sum fsroot/mapped"
            ),
        )
        .check(
            "privilege",
            &format!(
                "printf \"#!/bin/sh\\n\" > fsroot/victim && chmod 6755 fsroot/victim && \
                 stat -c \"before %a\" fsroot/victim; \
                 {RW} -- sh -c '{}'; echo rc=$?; {}",
                privilege::attempts(""),
                privilege::host_scan("fsroot", "rootfs"),
            ),
        )
        .check("syncfs", SYNCFS)
        .check("missing_dir", "podvm boot --rootfs /payload/no-such-dir -- /bin/true")
        .check("not_a_dir", "podvm boot --rootfs fsro/existing -- /bin/true");
    Some(batch)
}

#[test]
fn echo_runs_inside_the_shared_rootfs() {
    let Some(result) = check("echo") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "hello from virtio-fs", "{result:?}");
}

#[test]
fn exit_code_comes_back() {
    let Some(result) = check("exit42") else {
        return;
    };
    assert_eq!(result.code, 42, "{result:?}");
}

#[test]
fn the_app_sees_rkts_layout_with_proc_dev_and_a_private_tmp() {
    let Some(result) = check("layout") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "/tmp",
            "app",
            "127.0.1.1\tapp",
            "1",
            "proc-ok",
            "dev-ok",
            "pts-ok",
            "tmp-ok",
            "rc=0",
            "tmp-is-guest-only"
        ],
        "{result:?}"
    );
}

#[test]
fn files_written_in_the_guest_appear_on_the_host_byte_exact() {
    let Some(result) = check("write_checksum") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines.get(1), Some(&"rc=0"), "{result:?}");
    let guest = lines.first().and_then(|l| l.split_whitespace().next());
    let host = lines.get(2).and_then(|l| l.split_whitespace().next());
    assert!(guest.is_some_and(|m| m.len() == 32), "{result:?}");
    assert_eq!(guest, host, "guest and host checksums differ: {result:?}");
    assert_eq!(
        lines.get(3).map(|l| l.trim()),
        Some("3000000"),
        "{result:?}"
    );
}

#[test]
fn links_rename_chmod_and_fsync_reach_the_host() {
    let Some(result) = check("file_ops") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines.get(..4),
        Some(&["content", "soft-dangling", "content", "ops-ok"][..]),
        "{result:?}"
    );
    assert_eq!(lines.get(4), Some(&"rc=0"), "{result:?}");
    let stat: Vec<&str> = lines.get(5).map_or(vec![], |l| l.split(' ').collect());
    assert_eq!(
        stat.get(..2),
        Some(&["2", "640"][..]),
        "two links, mode 640: {result:?}"
    );
    assert_eq!(
        stat.get(2),
        lines.get(6),
        "hard link shares the inode: {result:?}"
    );
    assert_eq!(
        lines.get(7),
        Some(&"g"),
        "symlink target kept verbatim: {result:?}"
    );
    assert_eq!(lines.get(8), Some(&"content"), "{result:?}");
    assert_eq!(
        lines.get(9).map(|l| l.trim()),
        Some("g hard soft"),
        "{result:?}"
    );
}

#[test]
fn read_only_share_refuses_writes_in_guest_and_host() {
    let Some(result) = check("read_only") else {
        return;
    };
    let out = &result.stdout;
    for refused in ["create-rc=1", "append-rc=1", "mkdir-rc=1", "rm-rc=1"] {
        assert!(out.contains(refused), "{refused}: {result:?}");
    }
    assert!(out.contains("keep me"), "{result:?}");
    assert!(
        result.stderr.contains("Read-only file system"),
        "EROFS in the guest: {result:?}"
    );
    if out.contains("remounted-rw") {
        // The guest dropped its own MS_RDONLY: only the host's guard is left, and it holds.
        assert!(out.contains("host-append-rc=1"), "{result:?}");
        assert!(out.contains("host-create-rc=1"), "{result:?}");
    } else {
        eprintln!(
            "note: the guest could not remount its rootfs rw; host guard covered by unit tests"
        );
    }
    assert!(out.contains("host-unchanged"), "{result:?}");
    let listing = out.lines().last().unwrap_or_default();
    assert!(
        !listing.contains("new-file") && !listing.contains("host-new"),
        "{result:?}"
    );
}

#[test]
fn escapes_from_the_guest_never_touch_a_host_file_outside_the_share() {
    let Some(result) = check("escapes") else {
        return;
    };
    let out = &result.stdout;
    assert!(!out.contains("LEAK"), "{result:?}");
    assert!(!out.contains("host secret\nhost secret"), "{result:?}");
    assert!(out.contains("escapes-done"), "{result:?}");
    assert!(out.contains("wrote-through-abslink"), "{result:?}");
    assert!(out.contains("sentinel-never-read"), "{result:?}");
    let setup = check("setup").expect("same batch");
    if !setup.stdout.contains("atime-works") {
        eprintln!(
            "note: atime does not move on reads here: 'never read' is not proven, only 'unchanged'"
        );
    }
    let lines: Vec<&str> = out.lines().collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    assert_eq!(
        tail,
        [
            "host secret",
            "sentinel-never-read",
            "/payload/outside/secret",
            "pwned",
            "secret "
        ],
        "the write through the absolute symlink stayed in the share: {result:?}"
    );
}

#[test]
fn bad_rootfs_directories_are_clear_errors() {
    let Some(missing) = check("missing_dir") else {
        return;
    };
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(
        missing.stderr.contains("--rootfs /payload/no-such-dir"),
        "{missing:?}"
    );
    assert!(missing.stderr.contains("cannot resolve"), "{missing:?}");
    let not_dir = check("not_a_dir").expect("same batch");
    assert_ne!(not_dir.code, 0, "{not_dir:?}");
    assert!(not_dir.stderr.contains("not a directory"), "{not_dir:?}");
}

#[test]
fn user_xattrs_round_trip_and_other_namespaces_are_refused() {
    let Some(result) = check("xattr") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines.get(..3),
        Some(&["get=hello-xattr", "list=user.podvm", "after-remove=ENODATA"][..]),
        "{result:?}"
    );
    let trusted = lines.get(3).copied().unwrap_or_default();
    assert!(
        trusted.starts_with("trusted-set=") && trusted != "trusted-set=ok",
        "only user.* xattrs may be set on a share: {result:?}"
    );
}

#[test]
fn a_shared_writable_mapping_reaches_the_host_byte_exact() {
    let Some(result) = check("mmap") else {
        return;
    };
    let expected = format!("sum={:016x}", pattern_sum(MMAP_BYTES));
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("mmap-written={MMAP_BYTES}").as_str(),
            expected.as_str(),
            "rc=0",
            expected.as_str(),
        ],
        "guest read-back and host file both hold the pattern: {result:?}"
    );
}

/// The probe's FNV-1a checksum of its mmap pattern (byte i = i % 251).
fn pattern_sum(len: usize) -> u64 {
    (0..len).fold(0xcbf2_9ce4_8422_2325, |hash: u64, i| {
        (hash ^ (i % 251) as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Attack: guest root in a `--rootfs` share runs `chmod 4755`, `chown 0:0` + `chmod 6755`,
/// `mknod` of char and block devices, and rewrites a host file that is setuid root. The VMM is
/// host root, so any of these left as is would be a setuid-root program or a device node for
/// every local user. On the host (after the VM is gone) the share holds no setuid or setgid
/// file and no device node; the guest saw its chmods succeed and its mknods refused.
#[test]
fn guest_root_leaves_no_setuid_file_or_device_node_in_the_rootfs() {
    let Some(result) = check("privilege") else {
        return;
    };
    assert_privilege_stripped(result, "rootfs", "755");
    assert!(result.stdout.contains("#!/bin/sh\npwned\n"), "{result}");
}

/// The assertions of a [`privilege::attempts`] + [`privilege::host_scan`] check for the host
/// lines of `label`, the victim with `victim_mode`.
fn assert_privilege_stripped(result: &CheckResult, label: &str, victim_mode: &str) {
    eprintln!("{result}");
    privilege::assert_none_left(result, 1);
    assert!(result.stdout.lines().any(|l| l == "rc=0"), "{result}");
    privilege::assert_host_modes(result, label, victim_mode);
}

/// The sectors `key=` of the syncfs check's output.
fn sectors(result: &CheckResult, key: &str) -> u64 {
    result
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {result}"))
}

/// A guest's `sync` makes what it wrote durable on the host (FUSE_SYNCFS syncs the share's file
/// system), and so does its fsync of a file (dirty pages written back, then FUSE_FSYNC); without
/// either only the host's own writeback, off here, would. The guest that does not
/// sync shows the data stays in the host's page cache until then.
#[test]
fn a_guest_sync_puts_the_data_on_the_hosts_disk() {
    let Some(result) = check("syncfs") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        !out.contains("no-written") && !out.contains("no-synced"),
        "both guests wrote: {result}"
    );
    let eight_mib = 8 * 2048;
    assert!(
        sectors(result, "nosync-sectors") < eight_mib / 2,
        "without a sync the 8 MiB stay in the host's page cache: {result}"
    );
    assert!(
        sectors(result, "synced-sectors") >= eight_mib,
        "the guest's sync wrote its 8 MiB to the host's disk: {result}"
    );
    assert!(
        !out.contains("no-fsynced") && sectors(result, "fsynced-sectors") >= eight_mib,
        "the guest's fsync wrote its 8 MiB to the host's disk: {result}"
    );
}
