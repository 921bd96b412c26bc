#!/usr/bin/env bash
# build.sh OUT_PATH: build (or fetch from cache) the minimal podvm guest kernel and copy its
# vmlinux (ELF with a PVH entry note) to OUT_PATH.
#
# Kernel: Debian's linux-source-6.1, `make tinyconfig` + fragments/*.config.
# Cache:  ${PODVM_CACHE_DIR:-$HOME/.cache/podvm}/kernel/
#           <hash>/vmlinux     the result (appears only once complete: built under a temp name)
#           <hash>/config      the .config it was built from
#           <hash>/build.log   full configure + build log
#           src/<version>/     extracted linux-source tree (shared, never modified)
#           obj/<version>/     object dir (O=), reused so fragment changes rebuild incrementally
#         <hash> = sha256 over the fragments, this script and the linux-source-6.1 package version.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAG_DIR="$HERE/fragments"
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
CACHE_ROOT="${PODVM_CACHE_DIR:-$HOME/.cache/podvm}/kernel"
PROGRESS_EVERY=${PODVM_KERNEL_PROGRESS_EVERY:-200}

say() { echo "kernel: $*"; }
die() { echo "kernel: error: $*" >&2; exit 1; }

usage() { echo "usage: $0 OUT_PATH   (copies the built vmlinux to OUT_PATH)" >&2; exit 2; }
[ $# -eq 1 ] || usage
OUT=$1

# --- build dependencies --------------------------------------------------------------------
ensure_deps() {
	local pkgs=(bc flex bison libelf-dev libssl-dev xz-utils make gcc binutils "$SRC_PKG")
	local missing=() p
	for p in "${pkgs[@]}"; do
		if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
			missing+=("$p")
		fi
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing missing build dependencies: ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; install them as root (apt-get install -y ${missing[*]})"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q "${missing[@]}" >/dev/null; then
		apt-get update -q >/dev/null
		apt-get install -y -q "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
	fi
}

# --- cache key -------------------------------------------------------------------------------
compute_hash() {
	local f
	{
		for f in "$FRAG_DIR"/*.config; do
			echo "== fragment $(basename "$f")"
			cat "$f"
		done
		echo "== build.sh"
		cat "$SELF"
		echo "== $SRC_PKG $SRC_VERSION"
	} | sha256sum | cut -c1-16
}

# --- helpers ---------------------------------------------------------------------------------
# Copy the cached vmlinux to OUT atomically (temp name + rename), never a hard link: a later
# in-place write to OUT must not corrupt the cache.
install_out() {
	mkdir -p "$(dirname "$OUT")"
	cp "$1" "$OUT.tmp.$$"
	mv -f "$OUT.tmp.$$" "$OUT"
}

# Extract the source tree once per package version (into a temp dir, then rename).
ensure_source() {
	SRC="$CACHE_ROOT/src/$SRC_VERSION/linux-source-6.1"
	[ -f "$SRC/Makefile" ] && return 0
	say "extracting $SRC_TARBALL (once per package version)"
	local tmp="$CACHE_ROOT/src/.tmp.$SRC_VERSION.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	tar -xJf "$SRC_TARBALL" -C "$tmp" || die "cannot extract $SRC_TARBALL"
	[ -f "$tmp/linux-source-6.1/Makefile" ] || die "$SRC_TARBALL has no linux-source-6.1/Makefile"
	rm -rf "$CACHE_ROOT/src/$SRC_VERSION"
	mv "$tmp" "$CACHE_ROOT/src/$SRC_VERSION"
}

kmake() { make -C "$SRC" O="$OBJ" ARCH=x86_64 KBUILD_BUILD_USER=podvm KBUILD_BUILD_HOST=podvm "$@"; }

# Every CONFIG_X=value / "# CONFIG_X is not set" / CONFIG_X=n line of the fragments must hold in
# the final .config; olddefconfig silently drops options whose dependencies are unmet.
# shellcheck disable=SC2094 # reading the fragment and the final config, writing neither
verify_config() {
	local final=$1 bad=() line sym val f
	for f in "$FRAG_DIR"/*.config; do
		while IFS= read -r line; do
			if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
				sym=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
			elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
				sym=${BASH_REMATCH[1]} val=n
			else
				continue
			fi
			if [ "$val" = n ]; then
				grep -q "^$sym=" "$final" && bad+=("$sym=n wanted, got $(grep "^$sym=" "$final") ($(basename "$f"))")
			else
				grep -qxF "$sym=$val" "$final" ||
					bad+=("$sym=$val wanted, got '$(grep -E "^(# )?${sym}[= ]" "$final" || echo absent)' ($(basename "$f"))")
			fi
		done <"$f"
	done
	if [ ${#bad[@]} -gt 0 ]; then
		echo "kernel: error: ${#bad[@]} fragment option(s) did not survive olddefconfig (missing dependency or typo):" >&2
		printf '  %s\n' "${bad[@]}" >&2
		echo "kernel: final config kept at $final" >&2
		exit 1
	fi
}

# Print a short progress line every PROGRESS_EVERY build steps instead of the full flood.
progress() {
	awk -v every="$PROGRESS_EVERY" '
		/^  [A-Z]+ / { n++; if (n % every == 0) { printf "kernel: %5d steps, now %s %s\n", n, $1, $2; fflush() } }
		/^  LD +vmlinux$/ { printf "kernel: linking vmlinux\n"; fflush() }
		END { printf "kernel: %d build steps\n", n }'
}

build() {
	local log="$CACHE_DIR/build.log" start=$SECONDS
	mkdir -p "$CACHE_DIR" "$OBJ"
	: >"$log"
	say "cache miss ($HASH): building $SRC_PKG $SRC_VERSION in $OBJ (log: $log)"

	kmake tinyconfig >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "make tinyconfig failed"; }
	(cd "$SRC" && scripts/kconfig/merge_config.sh -m -O "$OBJ" "$OBJ/.config" "$FRAG_DIR"/*.config) \
		>>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "merge_config.sh failed"; }
	kmake olddefconfig >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "make olddefconfig failed"; }
	verify_config "$OBJ/.config"
	say "config verified: every fragment option is in the final .config"

	if ! nice -n 10 make -C "$SRC" O="$OBJ" ARCH=x86_64 KBUILD_BUILD_USER=podvm KBUILD_BUILD_HOST=podvm \
		-j"$(nproc)" vmlinux 2>&1 | tee -a "$log" | progress; then
		echo "kernel: ---- last 40 lines of $log ----" >&2
		tail -n 40 "$log" >&2
		die "kernel build failed (full log: $log)"
	fi

	local tmp="$CACHE_DIR/vmlinux.tmp.$$"
	strip --strip-debug -o "$tmp" "$OBJ/vmlinux"
	readelf -h "$tmp" | grep -q 'Class:.*ELF64' || die "$tmp is not an ELF64 file"
	readelf -n "$tmp" | grep -qi xen || die "$tmp has no Xen/PVH ELF note (is CONFIG_PVH set?)"
	cp "$OBJ/.config" "$CACHE_DIR/config"
	mv -f "$tmp" "$CACHE_DIR/vmlinux"
	say "built in $((SECONDS - start))s: $CACHE_DIR/vmlinux ($(stat -c %s "$CACHE_DIR/vmlinux") bytes)"
}

# --- main ------------------------------------------------------------------------------------
ls "$FRAG_DIR"/*.config >/dev/null 2>&1 || die "no fragments in $FRAG_DIR"
ensure_deps
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG") || die "cannot query $SRC_PKG version"
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing (reinstall $SRC_PKG)"
HASH=$(compute_hash)
CACHE_DIR="$CACHE_ROOT/$HASH"

if [ -f "$CACHE_DIR/vmlinux" ]; then
	install_out "$CACHE_DIR/vmlinux"
	say "cache hit ($HASH): copied $CACHE_DIR/vmlinux to $OUT"
	exit 0
fi

# One build at a time per cache (the object dir is shared); re-check the cache after waiting.
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
	say "another kernel build holds $CACHE_ROOT/.lock; waiting"
	flock 9
fi
if [ -f "$CACHE_DIR/vmlinux" ]; then
	install_out "$CACHE_DIR/vmlinux"
	say "cache hit ($HASH, built meanwhile): copied $CACHE_DIR/vmlinux to $OUT"
	exit 0
fi

ensure_source
OBJ="$CACHE_ROOT/obj/$SRC_VERSION"
build
install_out "$CACHE_DIR/vmlinux"
say "copied $CACHE_DIR/vmlinux to $OUT"
