#!/usr/bin/env bash
# Builds podvm's fuzz targets (fuzz/: libFuzzer through libfuzzer-sys, on the stable toolchain)
# and runs each for FUZZ_SECONDS (default 20), after replaying its committed inputs (seed corpus
# and regressions). A target that crashes, hangs past FUZZ_TIMEOUT seconds on one input or runs
# out of memory fails the run and leaves the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                      every target (make fuzz)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh layer virtio_fs
#   FUZZ_FLAGS="-fork=2 -ignore_crashes=1" scripts/fuzz.sh virtio_fs   (more libFuzzer flags)
#
# Coverage instrumentation without nightly: rustc's stable -C passes=sancov-module and the LLVM
# SanitizerCoverage options that cargo-fuzz passes (inline 8-bit counters, PC table, compare
# tracing), with --cfg fuzzing; no sanitizer (-Zsanitizer is nightly-only), so the oracles are
# panics, debug assertions and overflow checks. libFuzzer's C++ is compiled by libfuzzer-sys
# with the system C++ compiler (g++).
#
# As root every target runs in a private mount namespace, chrooted into an overlay of / whose
# writes land in a tmpfs (only fuzz/artifacts and the working corpus are the real directories):
# an input that escapes the layer applier or the virtio-fs share cannot damage this machine.
# Without root the targets that write files (layer, virtio_fs*) are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${FUZZ_SECONDS:-20}
timeout=${FUZZ_TIMEOUT:-10}
triple=x86_64-unknown-linux-gnu
bin_dir=$root/fuzz/target/$triple/release

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
start=$(date +%s)
cargo build --manifest-path fuzz/Cargo.toml --release --target $triple --features engine --bins
echo "fuzz: built in $(($(date +%s) - start)) s"

jail=no
if [ "$(id -u)" -eq 0 ] && unshare --mount true 2>/dev/null; then
  jail=yes
fi

# run_jailed CMD...: CMD in a private mount namespace, chrooted into an overlay of / (writes go
# to a tmpfs) with the real fuzz/artifacts and working corpus bound in, and the same cwd.
run_jailed() {
  local scratch
  scratch=$(mktemp -d /tmp/podvm-fuzz-jail.XXXXXX)
  # shellcheck disable=SC2016
  unshare --mount --fork bash -euc '
    scratch=$1 root=$2; shift 2
    mount --make-rprivate /
    mount -t tmpfs -o mode=0700 podvm-fuzz "$scratch"
    mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
    mount -t proc proc "$scratch/root/proc"
    mount --rbind /dev "$scratch/root/dev"
    mount -t tmpfs -o mode=1777 tmp "$scratch/root/tmp"
    for dir in "$root/fuzz/artifacts" "$root/fuzz/target/corpus"; do
      mount --bind "$dir" "$scratch/root$dir"
    done
    exec chroot "$scratch/root" bash -c "cd \"\$0\" && exec \"\$@\"" "$PWD" "$@"
  ' jail "$scratch" "$root" "$@"
  local status=$?
  rmdir "$scratch" 2>/dev/null || true
  return $status
}

failed=()
summary=()
for target in "${targets[@]}"; do
  bin=$bin_dir/$target
  if [ ! -x "$bin" ]; then
    echo "fuzz: no target $target (fuzz/fuzz_targets/$target.rs)" >&2
    exit 2
  fi
  if [ $jail = no ] && [[ $target == layer || $target == virtio_fs* ]]; then
    echo "fuzz: $target skipped: it writes files and runs only as root, in a mount namespace"
    summary+=("$target: skipped (not root)")
    continue
  fi
  artifacts=$root/fuzz/artifacts/$target
  work=$root/fuzz/target/corpus/$target
  mkdir -p "$artifacts" "$work" fuzz/target/logs
  log=$root/fuzz/target/logs/$target.log
  seeds=(fuzz/corpus/"$target")
  [ -d fuzz/regressions/"$target" ] && seeds+=(fuzz/regressions/"$target")
  run=("$bin" -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 -max_len=8192
    -artifact_prefix="$artifacts/" -print_final_stats=1)
  # shellcheck disable=SC2206
  run+=(${FUZZ_FLAGS:-} "$work" "${seeds[@]}")
  echo "fuzz: $target for $seconds s"
  status=0
  if [ $jail = yes ]; then
    run_jailed "${run[@]}" >"$log" 2>&1 || status=$?
  else
    "${run[@]}" >"$log" 2>&1 || status=$?
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ $status -ne 0 ]; then
    grep -v '^podvm: ' "$log" | tail -40 >&2
    echo "fuzz: $target FAILED (exit $status); input in fuzz/artifacts/$target/, log $log" >&2
    failed+=("$target")
    summary+=("$target: FAILED")
  else
    summary+=("$target: ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}")
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
echo "fuzz: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
