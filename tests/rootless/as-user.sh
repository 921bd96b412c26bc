#!/bin/sh
# Runs inside L1 (or on a host with real KVM) for tests/e2e_rootless.rs, from the payload root.
#
#   as-user.sh setup        (as root) gives user 4242 what a Debian host gives an ordinary user
#                           in group kvm: udev's modes (/dev/kvm 0660 root:kvm, /dev/vhost-vsock
#                           0666), a home, and systemd's delegated cgroup scope
#                           (`systemd-run --user --scope -p Delegate=yes`: a cgroup it owns)
#   as-user.sh [--no-scope] [--no-kvm] PODVM-ARGS...
#                           runs `podvm PODVM-ARGS` as that user, in its scope (unless
#                           --no-scope) with group kvm (unless --no-kvm), HOME=/home/rl and no
#                           --dir: the user's default data dir
#
# L1's / is the initramfs (rootfs), where pivot_root(2) is refused; passt sandboxes itself with
# pivot_root and would exit. So podvm runs in a private mount namespace whose / is a recursive
# bind of L1's / moved over it (switch_root's way: chdir, MS_MOVE onto /, chroot .; a plain
# chroot would forbid passt's user namespace): the same files, but a root that is a mount of
# its own, as on a host booted from a disk.
USER_ID=4242
KVM_GID=4243
HOME_DIR=/home/rl
SCOPE=/sys/fs/cgroup/podvm-rootless.scope
SETPRIV=/usr/bin/setpriv

if [ "$1" = setup ]; then
  set -e
  chgrp $KVM_GID /dev/kvm && chmod 0660 /dev/kvm
  chmod 0666 /dev/vhost-vsock
  mkdir -p /run/rl-root $HOME_DIR/run && chown -R $USER_ID:$USER_ID $HOME_DIR && chmod 700 $HOME_DIR/run
  chmod -R a+rX /payload/bin /payload/lib /payload/busybox-layout
  echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control
  mkdir $SCOPE
  for f in "" /cgroup.procs /cgroup.subtree_control /cgroup.threads; do chown $USER_ID:$USER_ID $SCOPE$f; done
  # What is newer than this afterwards and outside the user's dirs was changed by podvm.
  touch /run/rootless.stamp
  echo ready
  exit 0
fi

if [ "$1" = __rooted ]; then
  # Inside the chroot: back to the caller's directory, then the rest.
  cd "$2" && shift 2 && exec "$@"
  exit 125
fi

scope=$SCOPE groups=--groups=$KVM_GID
while :; do
  case "$1" in
    --no-scope) scope=; shift ;;
    --no-kvm) groups=--clear-groups; shift ;;
    *) break ;;
  esac
done
# A subshell joins the scope, as a shell started by `systemd-run --user --scope` is in it, then
# becomes podvm as the user. Once a pod made the scope hand controllers to its children, the
# scope's processes are in its leaf podvm-init (see src/pod/cgroup.rs), and so is the shell.
/usr/bin/unshare -m /bin/sh -c 'mount -o rbind / /run/rl-root && cd /run/rl-root &&
  mount -o move /run/rl-root / && exec chroot . "$@"' rooted \
  /payload/bin/as-user.sh __rooted "$PWD" \
  sh -c '[ -z "$1" ] || echo $$ 2>/dev/null > "$1/cgroup.procs" || echo $$ > "$1/podvm-init/cgroup.procs"
  shift; exec "$@"' as-user "$scope" \
  $SETPRIV --reuid=$USER_ID --regid=$USER_ID $groups \
  env -i PATH=/payload/bin:/usr/bin:/bin HOME=$HOME_DIR XDG_RUNTIME_DIR=$HOME_DIR/run podvm "$@"
