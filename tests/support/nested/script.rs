//! Generates the runner script that executes every check in sequence.

use std::fmt::Write as _;

/// One named check: a shell command with its own timeout.
#[derive(Debug, Clone)]
pub(super) struct Check {
    pub(super) name: String,
    pub(super) command: String,
    pub(super) timeout_secs: u64,
}

/// Shell functions of the runner; POSIX sh, works under busybox ash (L1) and dash (host).
/// `$PAYLOAD` is the payload root; results go to `$PAYLOAD/results/<name>.{out,err,rc}`.
/// busybox `timeout` reports 143 on expiry, coreutils 124: both are normalised to 124.
const PRELUDE: &str = r#"#!/bin/sh
: "${PAYLOAD:?PAYLOAD must name the payload root}"
R="$PAYLOAD/results"
mkdir -p "$R"
attempt_check() {
  # A heartbeat on the console while the check runs: a silent L1 is a stalled one (see
  # STALL_LIMIT_SECS in mod.rs), however long the check may take.
  (while sleep "$heartbeat"; do echo "=== check $name: running"; done) &
  beat=$!
  (cd "$PAYLOAD" && exec timeout "$limit" sh "$PAYLOAD/.batch/checks/$name.sh") \
    </dev/null >"$R/$name.out" 2>"$R/$name.err"
  rc=$?
  kill $beat 2>/dev/null; wait $beat 2>/dev/null
}
run_check() {
  name=$1; limit=$2
  echo "=== check $name (timeout ${limit}s)"
  start=$(date +%s)
  attempt_check
  # (stdout too: a check may redirect podvm's stderr into its output)
  if grep -qE "podvm: (pod [0-9a-f-]+: )?the guest stopped before the agent" "$R/$name.err" "$R/$name.out"; then
    # Known flake of nested KVM under TCG: a guest that dies silently (no panic, no console).
    # Retried once, visibly; a real crash happens again and fails the check.
    # The first attempt's evidence (podvm's own lines: how the guest ended, where its vCPU was)
    # is kept, shown on the console and appended to the check's stderr, so a retry never hides
    # what happened; the harness counts retries per run (retries.log).
    cp "$R/$name.err" "$R/$name.first-attempt.err"; cp "$R/$name.out" "$R/$name.first-attempt.out"
    grep -h "podvm:" "$R/$name.first-attempt.err" "$R/$name.first-attempt.out" | tail -n 6 \
      | cut -c1-800 >"$R/$name.first-attempt.evidence"
    echo "=== check $name: guest died without an exit status; retrying once (nested TCG flake); first attempt:"
    sed 's/^/===   /' "$R/$name.first-attempt.evidence"
    attempt_check
    {
      echo "NOTE: retried once after the first attempt's guest died without an exit status; its evidence:"
      sed 's/^/NOTE:   /' "$R/$name.first-attempt.evidence"
    } >>"$R/$name.err"
  fi
  took=$(( $(date +%s) - start ))
  if [ "$took" -ge "$limit" ] && { [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 143 ]; }; then
    echo "check $name timed out after ${limit}s" >>"$R/$name.err"
    rc=124
  fi
  echo "$rc" >"$R/$name.rc"
  echo "=== check $name: exit $rc after ${took}s"
}
"#;

/// Started before the first check: with the test probe in the payload and /dev/kvm present,
/// one KVM VM held open for the whole batch (`podvm-probe kvm-hold`: it keeps KVM's static
/// keys from being patched in and out of L1's kernel text as the checks' VMs come and go, which
/// most samples of L1's rare livelocks under TCG show; tests/nested/README.md).
const HOLD_KVM: &str = r#"probe="$PAYLOAD/test/podvm-probe"
if [ -x "$probe" ] && [ -c /dev/kvm ]; then
  "$probe" kvm-hold >"$R/.kvm-hold.out" 2>&1 &
  hold=$!
fi
"#;

/// Seconds between the runner's heartbeat lines while a check runs.
pub(super) const HEARTBEAT_SECS: u64 = 30;

/// The runner script for `checks`, in order.
pub(super) fn runner(batch: &str, checks: &[Check]) -> String {
    let mut script = String::from(PRELUDE);
    let _ = writeln!(script, "heartbeat={HEARTBEAT_SECS}");
    script.push_str(HOLD_KVM);
    let _ = writeln!(script, "echo '=== batch {batch}: {} checks'", checks.len());
    for check in checks {
        let _ = writeln!(script, "run_check {} {}", check.name, check.timeout_secs);
    }
    script.push_str("[ -z \"${hold:-}\" ] || kill \"$hold\" 2>/dev/null\n");
    script.push_str("sync\necho '=== batch done'\n");
    script
}

/// True if `name` is usable as a check (and file) name.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
