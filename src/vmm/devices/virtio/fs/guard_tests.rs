//! The guard over a real passthrough of a temporary directory (needs root for mknod and
//! trusted.* xattrs, as the tests run in CI).

use std::ffi::CString;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fuse_backend_rs::api::filesystem::ROOT_ID;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};

use super::*;

struct Share {
    _dir: tempfile::TempDir,
    root: PathBuf,
    fs: Guard<PassthroughFs>,
}

fn share(read_only: bool) -> Share {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("share");
    std::fs::create_dir(&root).expect("share dir");
    std::fs::write(root.join("file"), b"original").expect("file");
    std::fs::write(dir.path().join("outside"), b"sentinel").expect("sentinel");
    let config = Config {
        root_dir: root.to_str().expect("utf-8 temp path").to_owned(),
        xattr: true,
        ..Config::default()
    };
    let fs = Guard::new(
        PassthroughFs::<()>::new(config).expect("passthrough"),
        read_only,
    );
    fs.init(FsOptions::empty()).expect("init imports the root");
    Share {
        _dir: dir,
        root,
        fs,
    }
}

fn c(name: &str) -> CString {
    CString::new(name).expect("no NUL")
}

fn code(err: io::Error) -> i32 {
    err.raw_os_error().expect("an errno")
}

fn ctx() -> Context {
    Context::new()
}

/// Attack: a hostile guest kernel sends names the Linux VFS never does (`..`, `.`, empty, with
/// a `/`) to make the host resolve a path outside the share (`..` of a directory the host moved
/// out, `../outside`). Every name-taking operation refuses them before the host is touched.
#[test]
fn names_that_are_not_one_component_are_refused_everywhere() {
    let s = share(false);
    let cx = ctx();
    std::fs::create_dir(s.root.join("d")).expect("dir");
    let file = s.fs.lookup(&cx, ROOT_ID, &c("file")).expect("file").inode;
    let dir = s.fs.lookup(&cx, ROOT_ID, &c("d")).expect("d").inode;
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY).expect("flag"),
        mode: 0o644,
        ..CreateIn::default()
    };
    for bad in ["", ".", "..", "../outside", "a/b", "/"] {
        let name = c(bad);
        for parent in [ROOT_ID, dir] {
            let results = [
                s.fs.lookup(&cx, parent, &name).map(drop),
                s.fs.mknod(&cx, parent, &name, libc::S_IFREG | 0o644, 0, 0)
                    .map(drop),
                s.fs.mkdir(&cx, parent, &name, 0o755, 0).map(drop),
                s.fs.create(&cx, parent, &name, create).map(drop),
                s.fs.symlink(&cx, &c("file"), parent, &name).map(drop),
                s.fs.link(&cx, file, parent, &name).map(drop),
                s.fs.rename(&cx, ROOT_ID, &c("file"), parent, &name, 0),
                s.fs.rename(&cx, parent, &name, ROOT_ID, &c("renamed"), 0),
                s.fs.unlink(&cx, parent, &name),
                s.fs.rmdir(&cx, parent, &name),
            ];
            for (index, result) in results.into_iter().enumerate() {
                let err = result.expect_err("refused");
                assert_eq!(code(err), libc::EINVAL, "{bad:?} op {index}");
            }
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(&s.root)
        .expect("ls")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["d", "file"], "nothing created, renamed or removed");
    assert_eq!(
        std::fs::read_dir(s.root.join("d")).expect("ls d").count(),
        0
    );
    let outside = s.root.parent().expect("parent").join("outside");
    assert_eq!(std::fs::read(outside).expect("sentinel"), b"sentinel");
}

#[test]
fn the_server_never_follows_symlinks() {
    let s = share(false);
    symlink("/", s.root.join("abs")).expect("symlink to /");
    symlink("../outside", s.root.join("rel")).expect("symlink to ..");
    for name in ["abs", "rel"] {
        let entry = s.fs.lookup(&ctx(), ROOT_ID, &c(name)).expect("lookup link");
        assert_eq!(entry.attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        let through = s.fs.lookup(&ctx(), entry.inode, &c("etc"));
        assert_eq!(
            code(through.expect_err("not a dir")),
            libc::ENOTDIR,
            "{name}"
        );
        let open = s.fs.open(&ctx(), entry.inode, 0, 0);
        assert_eq!(
            code(open.expect_err("link not opened")),
            libc::EPERM,
            "{name}"
        );
    }
}

#[test]
fn read_only_refuses_every_mutation_with_erofs() {
    let s = share(true);
    let file =
        s.fs.lookup(&ctx(), ROOT_ID, &c("file"))
            .expect("file")
            .inode;
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY).expect("flag"),
        mode: 0o644,
        ..CreateIn::default()
    };
    let cx = ctx();
    let results = [
        s.fs.mkdir(&cx, ROOT_ID, &c("d"), 0o755, 0).map(drop),
        s.fs.create(&cx, ROOT_ID, &c("new"), create).map(drop),
        s.fs.unlink(&cx, ROOT_ID, &c("file")),
        s.fs.symlink(&cx, &c("file"), ROOT_ID, &c("l")).map(drop),
        s.fs.link(&cx, file, ROOT_ID, &c("h")).map(drop),
        s.fs.rename(&cx, ROOT_ID, &c("file"), ROOT_ID, &c("r"), 0),
        s.fs.setxattr(&cx, file, &c("user.x"), b"1", 0),
        s.fs.mknod(&cx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_WRONLY).expect("flag"), 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_RDWR).expect("flag"), 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_TRUNC).expect("flag"), 0)
            .map(drop),
        s.fs.access(&cx, file, u32::try_from(libc::W_OK).expect("flag")),
    ];
    for (index, result) in results.into_iter().enumerate() {
        assert_eq!(
            code(result.expect_err("refused")),
            libc::EROFS,
            "op {index}"
        );
    }
    s.fs.open(&cx, file, 0, 0).expect("read-only open works");
    assert_eq!(
        std::fs::read(s.root.join("file")).expect("read"),
        b"original"
    );
    let names: Vec<_> = std::fs::read_dir(&s.root).expect("ls").collect();
    assert_eq!(names.len(), 1, "nothing created");
}

#[test]
fn device_nodes_cannot_be_created_or_opened_on_the_host() {
    let s = share(false);
    let cx = ctx();
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let err = s.fs.mknod(&cx, ROOT_ID, &c("dev"), kind | 0o666, 0x0103, 0);
        assert_eq!(code(err.expect_err("device refused")), libc::EPERM);
    }
    assert!(!s.root.join("dev").exists());
    s.fs.mknod(&cx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
        .expect("fifos are fine");
    assert!(std::fs::metadata(s.root.join("fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    // A device node planted on the host side (root only) is never opened by the server.
    let null = c(s.root.join("null").to_str().expect("utf-8"));
    // SAFETY: `null` is a valid NUL-terminated path; mknod only reads it.
    let made = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if made != 0 {
        eprintln!("skip: cannot mknod a host device node (not root?)");
        return;
    }
    let entry = s.fs.lookup(&cx, ROOT_ID, &c("null")).expect("lookup null");
    let err = s.fs.open(
        &cx,
        entry.inode,
        u32::try_from(libc::O_RDWR).expect("flag"),
        0,
    );
    assert_eq!(code(err.expect_err("device not opened")), libc::EPERM);
}

#[test]
fn only_user_xattrs_are_visible_or_settable() {
    let s = share(false);
    let cx = ctx();
    let file = s.fs.lookup(&cx, ROOT_ID, &c("file")).expect("file").inode;
    for name in ["trusted.overlay.opaque", "security.capability", "system.x"] {
        let err = s.fs.setxattr(&cx, file, &c(name), b"y", 0);
        assert_eq!(code(err.expect_err("refused")), libc::EPERM, "{name}");
        let err = s.fs.getxattr(&cx, file, &c(name), 64).err();
        assert_eq!(err.map(code), Some(libc::ENODATA), "{name}");
    }
    if let Err(err) = s.fs.setxattr(&cx, file, &c("user.k"), b"v", 0) {
        eprintln!("skip: user xattrs unsupported by the host file system: {err}");
        return;
    }
    // A trusted.* attribute set on the host (root) stays invisible to the guest.
    let path = c(s.root.join("file").to_str().expect("utf-8"));
    let name = c("trusted.podvm");
    // SAFETY: path and name are NUL-terminated; the value pointer/length describe a live slice.
    let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"t".as_ptr().cast(), 1, 0) };
    match s.fs.listxattr(&cx, file, 1024).expect("list") {
        ListxattrReply::Names(names) => assert_eq!(names, b"user.k\0"),
        ListxattrReply::Count(_) => panic!("asked for names"),
    }
    match s.fs.listxattr(&cx, file, 0).expect("count") {
        ListxattrReply::Count(n) => assert_eq!(n, 7),
        ListxattrReply::Names(_) => panic!("asked for the size"),
    }
    if set != 0 {
        eprintln!("note: could not set trusted.* on the host (not root?)");
    }
}

#[test]
fn write_flags() {
    assert!(!wants_write(0));
    assert!(wants_write(u32::try_from(libc::O_WRONLY).expect("flag")));
    assert!(wants_write(u32::try_from(libc::O_RDWR).expect("flag")));
    assert!(wants_write(u32::try_from(libc::O_TRUNC).expect("flag")));
    assert_eq!(
        user_names(b"user.a\0trusted.b\0user.c\0"),
        b"user.a\0user.c\0"
    );
}

/// Every node under `dir` (itself included) that a guest must never leave on the host: a
/// non-directory with S_ISUID or S_ISGID, a directory with S_ISUID, a char or block device.
fn privileged_nodes(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let meta = std::fs::symlink_metadata(dir).expect("stat");
    let kind = meta.file_type();
    let mode = meta.mode();
    let bad_bits = if kind.is_dir() {
        libc::S_ISUID
    } else {
        libc::S_ISUID | libc::S_ISGID
    };
    if mode & bad_bits != 0 || kind.is_char_device() || kind.is_block_device() {
        found.push(format!("{} {mode:o}", dir.display()));
    }
    if kind.is_dir() {
        for entry in std::fs::read_dir(dir).expect("ls") {
            found.extend(privileged_nodes(&entry.expect("entry").path()));
        }
    }
    found
}

/// The permission bits (with S_ISUID, S_ISGID, sticky) of `path` on the host.
fn host_mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// Attack: guest root creates setuid/setgid files in the share (CREATE and MKNOD with 04755,
/// chmod 06755, chown 0:0 then chmod 06755, mkdir 04755). The VMM is host root, so each would
/// be a setuid-root program for any local user. On the host none keeps S_ISUID (S_ISGID only
/// on directories); the guest's replies show the stripped modes.
#[test]
fn guest_setuid_and_setgid_bits_never_reach_the_host() {
    let s = share(false);
    let cx = ctx();
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY).expect("flag"),
        mode: libc::S_IFREG | 0o4755,
        ..CreateIn::default()
    };
    let (entry, ..) =
        s.fs.create(&cx, ROOT_ID, &c("created"), create)
            .expect("create");
    assert_eq!(entry.attr.st_mode & 0o7777, 0o755, "what the guest sees");
    assert_eq!(host_mode(&s.root.join("created")), 0o755);

    let file = s.fs.lookup(&cx, ROOT_ID, &c("file")).expect("file").inode;
    let mut attr = entry.attr;
    attr.st_mode = libc::S_IFREG | 0o6755;
    let (seen, _) =
        s.fs.setattr(&cx, file, attr, None, SetattrValid::MODE)
            .expect("chmod 6755");
    assert_eq!(
        seen.st_mode & 0o7777,
        0o755,
        "chmod succeeds, stat shows 0755"
    );
    assert_eq!(host_mode(&s.root.join("file")), 0o755);
    // A lying file type in the request does not make a file a directory.
    attr.st_mode = libc::S_IFDIR | 0o2755;
    s.fs.setattr(&cx, file, attr, None, SetattrValid::MODE)
        .expect("chmod 2755");
    assert_eq!(host_mode(&s.root.join("file")), 0o755);
    attr.st_uid = 0;
    attr.st_gid = 0;
    attr.st_mode = 0o6755;
    let valid = SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE;
    s.fs.setattr(&cx, file, attr, None, valid)
        .expect("chown 0:0 + chmod 6755");
    let meta = std::fs::metadata(s.root.join("file")).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o755)
    );

    for (name, mode) in [("node", libc::S_IFREG | 0o4755), ("typeless", 0o6755)] {
        let entry = s.fs.mknod(&cx, ROOT_ID, &c(name), mode, 0, 0).expect(name);
        assert_eq!(entry.attr.st_mode & 0o7777, 0o755, "{name}");
        assert_eq!(host_mode(&s.root.join(name)), 0o755, "{name}");
    }
    s.fs.mknod(&cx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o6644, 0, 0)
        .expect("fifo");
    assert_eq!(host_mode(&s.root.join("fifo")), 0o644);

    let setgid_dir =
        s.fs.mkdir(&cx, ROOT_ID, &c("sgid"), 0o2755, 0)
            .expect("mkdir");
    // mkdir(2) itself ignores S_ISUID and S_ISGID (a directory gets S_ISGID from its parent).
    assert_eq!(host_mode(&s.root.join("sgid")), 0o755);
    s.fs.mkdir(&cx, ROOT_ID, &c("suid"), 0o4755, 0)
        .expect("mkdir");
    assert_eq!(host_mode(&s.root.join("suid")), 0o755);
    let mut attr = setgid_dir.attr;
    attr.st_mode = libc::S_IFDIR | 0o6775;
    s.fs.setattr(&cx, setgid_dir.inode, attr, None, SetattrValid::MODE)
        .expect("chmod dir");
    assert_eq!(
        host_mode(&s.root.join("sgid")),
        0o2775,
        "setgid dirs: inheritance"
    );
    // A file created in the setgid directory inherits its group, not the bit.
    s.fs.create(&cx, setgid_dir.inode, &c("inner"), create)
        .expect("create in sgid dir");
    assert_eq!(host_mode(&s.root.join("sgid/inner")), 0o755);

    assert_eq!(privileged_nodes(&s.root), Vec::<String>::new());
}

/// Attack: RENAME_WHITEOUT leaves a 0:0 char device in place of the source (MKNOD of a device
/// is refused, this would be the way around it). Refused with EINVAL, like a file system
/// without whiteout support; nothing moves and no device node exists on the host.
#[test]
fn rename_whiteout_is_refused_and_leaves_no_device() {
    let s = share(false);
    let cx = ctx();
    let whiteout = libc::RENAME_WHITEOUT;
    for flags in [whiteout, whiteout | libc::RENAME_NOREPLACE, 1 << 5] {
        let err =
            s.fs.rename(&cx, ROOT_ID, &c("file"), ROOT_ID, &c("moved"), flags);
        assert_eq!(code(err.expect_err("refused")), libc::EINVAL, "{flags:#x}");
    }
    assert_eq!(
        std::fs::read(s.root.join("file")).expect("kept"),
        b"original"
    );
    assert!(!s.root.join("moved").exists());
    s.fs.rename(
        &cx,
        ROOT_ID,
        &c("file"),
        ROOT_ID,
        &c("moved"),
        libc::RENAME_NOREPLACE,
    )
    .expect("RENAME_NOREPLACE is forwarded");
    assert_eq!(
        std::fs::read(s.root.join("moved")).expect("moved"),
        b"original"
    );
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let err = s.fs.mknod(&cx, ROOT_ID, &c("dev"), kind | 0o666, 0, 0);
        assert_eq!(code(err.expect_err("device refused")), libc::EPERM);
    }
    for kind in [libc::S_IFDIR, libc::S_IFLNK] {
        let err = s.fs.mknod(&cx, ROOT_ID, &c("odd"), kind | 0o755, 0, 0);
        assert_eq!(code(err.expect_err("type refused")), libc::EINVAL);
    }
    assert_eq!(privileged_nodes(&s.root), Vec::<String>::new());
}

/// Attack: a setuid-root file already on the host side of the share (an image's setuid
/// /usr/bin/passwd copied up into the pod's upper dir) is opened for writing by the guest and
/// overwritten with its own program: it would stay setuid root (the VMM writes with
/// CAP_FSETID, so the host kernel keeps the bits). Every write path clears the bits first; a
/// read-only open keeps them.
#[test]
fn writing_an_existing_setuid_file_clears_its_privilege_bits_first() {
    let s = share(false);
    let cx = ctx();
    let names = ["wronly", "trunc", "rdwr", "size", "create", "read"];
    for name in names {
        let path = s.root.join(name);
        std::fs::write(&path, b"#!/bin/sh\n").expect("file");
        let mode = if name == "trunc" { 0o2755 } else { 0o6755 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod on the host");
        assert_eq!(host_mode(&path), mode, "host root set the bits");
    }
    let inode = |name: &str| s.fs.lookup(&cx, ROOT_ID, &c(name)).expect(name).inode;
    let flag = |f: i32| u32::try_from(f).expect("flag");
    s.fs.open(&cx, inode("wronly"), flag(libc::O_WRONLY), 0)
        .expect("open wronly");
    s.fs.open(&cx, inode("trunc"), flag(libc::O_RDONLY | libc::O_TRUNC), 0)
        .expect("open trunc");
    s.fs.open(&cx, inode("rdwr"), flag(libc::O_RDWR), 0)
        .expect("open rdwr");
    let size = inode("size");
    let (mut attr, _) = s.fs.getattr(&cx, size, None).expect("getattr");
    attr.st_size = 0;
    s.fs.setattr(&cx, size, attr, None, SetattrValid::SIZE)
        .expect("truncate");
    let create = CreateIn {
        flags: flag(libc::O_WRONLY),
        mode: 0o644,
        ..CreateIn::default()
    };
    let (entry, ..) =
        s.fs.create(&cx, ROOT_ID, &c("create"), create)
            .expect("create");
    assert_eq!(
        entry.attr.st_mode & 0o7777,
        0o755,
        "the guest sees the cleared mode"
    );
    s.fs.open(&cx, inode("read"), flag(libc::O_RDONLY), 0)
        .expect("open read");
    for name in names {
        let expected = if name == "read" { 0o6755 } else { 0o755 };
        assert_eq!(host_mode(&s.root.join(name)), expected, "{name}");
    }
}

/// Attack: a host setuid-root program sits in a volume shared with the pod (or an image's setuid
/// file in the pod's upper dir); the guest hard-links it to a name of its own. When the host
/// later upgrades or removes the program at its own path, the guest's link keeps the old,
/// perhaps vulnerable, setuid binary alive on the host. LINK of a setuid or setgid file is
/// refused; an ordinary file still links.
#[test]
fn setuid_and_setgid_files_cannot_be_hard_linked() {
    let s = share(false);
    let cx = ctx();
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2755)] {
        let path = s.root.join(name);
        std::fs::write(&path, b"#!/bin/sh\n").expect("file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod on the host");
        let inode = s.fs.lookup(&cx, ROOT_ID, &c(name)).expect(name).inode;
        let err = s.fs.link(&cx, inode, ROOT_ID, &c("keep")).expect_err(name);
        assert_eq!(code(err), libc::EPERM, "{name}");
        assert!(
            !s.root.join("keep").exists(),
            "{name}: no second name on the host"
        );
        assert_eq!(std::fs::metadata(&path).expect(name).nlink(), 1, "{name}");
    }
    let plain = s.fs.lookup(&cx, ROOT_ID, &c("file")).expect("file").inode;
    s.fs.link(&cx, plain, ROOT_ID, &c("again"))
        .expect("an ordinary file links");
    assert_eq!(
        std::fs::read(s.root.join("again")).expect("link"),
        b"original"
    );
}
