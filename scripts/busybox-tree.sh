#!/usr/bin/env bash
# Makes a minimal busybox root tree in DIR from Debian's busybox-static: /bin/busybox, one
# symlink per applet, and /etc/passwd + /etc/group with root and an unprivileged `app` user.
set -euo pipefail
dir=${1:?usage: busybox-tree.sh DIR}
busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  for candidate in /usr/bin/busybox /bin/busybox; do
    [ -x "$candidate" ] && busybox=$candidate
  done
fi
[ -x "$busybox" ] || { echo "busybox-tree: no busybox; apt-get install busybox-static" >&2; exit 1; }
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,home/app}
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' > "$dir/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$dir/etc/group"
chmod 1777 "$dir/tmp"
