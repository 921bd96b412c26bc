//! End-to-end tests of the bidirectional host<->agent protocol: stdin, signals and graceful stop,
//! users from the guest's passwd, exec sessions into a running VM through its control socket
//! (with and without a tty, and refused to another user). All checks run in ONE nested L1 boot (or directly on a host with real KVM).
//! Large output is covered by e2e_boot (`big_output`).

mod support;

use std::path::Path;

use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};

/// Builds a busybox root tree with a passwd and group that know an `app` user.
const SETUP_ROOTFS: &str = "mkdir -p rootfs/bin rootfs/etc rootfs/tmp && cp lib/podvm/busybox rootfs/bin/busybox \
     && for a in $(rootfs/bin/busybox --list); do [ $a = busybox ] || ln -sf busybox rootfs/bin/$a; done \
     && printf 'root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000:App:/home/app:/bin/sh\\n' > rootfs/etc/passwd \
     && printf 'root:x:0:\\napp:x:1000:\\nwheel:x:10:app\\nstaff:x:50:\\n' > rootfs/etc/group \
     && echo rootfs-ready";

/// tmux drives the interactive --tty check (brought into L1 with its libraries).
const TMUX: &str = "/usr/bin/tmux";
/// The locale tmux needs.
const C_UTF8: &str = "/usr/lib/locale/C.utf8";

/// Size of the large-stdin check (5 MiB).
const BIG_STDIN_BYTES: u64 = 5 << 20;

/// Waits (up to 60 s) until file $1 contains the text $2.
const WAIT_FOR: &str = "wait_for() { n=0; until grep -q \"$2\" \"$1\" 2>/dev/null; do \
     n=$((n+1)); [ $n -lt 600 ] || { echo \"timeout waiting for $2 in $1\"; return 1; }; sleep 0.1; done; }";

static RESULTS: E2e = E2e::new("setup");

/// setpriv from util-linux (busybox's cannot change uids), brought into L1.
const SETPRIV: &str = "/usr/bin/setpriv";

/// One VM with exec sessions through its control socket: plain, with stdin, on a tty, and from
/// another user (refused); then stopped.
fn exec_script(boot: &str) -> String {
    format!(
        "{WAIT_FOR}; rm -f ex.sock; {boot} --exec-info ex.sock -- /bin/sh -c 'echo up; exec sleep 120' \
         > vm.out 2> vm.err & vm=$!; wait_for vm.out up || {{ cat vm.err; exit 1; }}; \
         [ -S ex.sock ] && echo is-a-socket; echo mode=$(stat -c %a ex.sock); \
         podvm exec --exec-info ex.sock -- /bin/sh -c 'echo in-exec; exit 5'; echo plain=$?; \
         echo piped | podvm exec --exec-info ex.sock -- /bin/cat; echo stdin=$?; \
         podvm exec --exec-info ex.sock --user app -- /bin/id -u; echo user=$?; \
         podvm exec --exec-info ex.sock --tty -- /bin/sh -c 'tty; exit 6' < /dev/null; echo tty=$?; \
         chmod 666 ex.sock; \
         {SETPRIV} --reuid=65534 --regid=65534 --clear-groups podvm exec --exec-info ex.sock -- /bin/echo should-not-run 2> bad.err; \
         echo bad=$?; chmod 600 ex.sock; cat bad.err; \
         podvm exec --exec-info ex.sock -- /bin/echo still-served; \
         kill -TERM $vm; wait $vm; echo vm=$?; grep 'refused a connection' vm.err; \
         [ -e ex.sock ] && echo socket-left || echo socket-removed"
    )
}

/// Drives `podvm boot --tty -- /bin/sh` in a tmux pane like a person would: types commands,
/// resizes the window (SIGWINCH must reach the guest pty), exits with 3, and saves the pane's
/// terminal mode after podvm returned (it must be restored, not raw).
fn tmux_script(boot: &str) -> String {
    format!(
        "T={TMUX}; [ -x $T ] || {{ echo 'skipping: no tmux on the host (apt-get install tmux)'; exit 0; }}; \
         export TMUX_TMPDIR=$PWD LC_ALL=C.UTF-8; \
         pane_has() {{ n=0; until $T capture-pane -p -t tty | grep -q \"$1\"; do n=$((n+1)); \
           [ $n -lt 600 ] || {{ echo \"timeout waiting for $1\"; $T capture-pane -p -t tty; return 1; }}; \
           sleep 0.2; done; }}; \
         $T -u new-session -d -s tty -x 100 -y 30 \"{boot} --tty -- /bin/sh; echo rc=\\$?; stty -a > stty.after; sleep 600\" \
         && $T send-keys -t tty 'stty size; echo mark-$((1+1))' Enter && pane_has mark-2 \
         && $T resize-window -t tty -x 120 -y 40 \
         && $T send-keys -t tty 'stty size; echo mark-$((2+2))' Enter && pane_has mark-4 \
         && $T send-keys -t tty 'exit 3' Enter && pane_has rc=3; \
         $T capture-pane -p -t tty | grep -v '^$'; $T kill-server; \
         grep -q -- -icanon stty.after && echo terminal-left-raw || echo terminal-restored"
    )
}

/// The result of check `name`, or `None` (test skipped) when artifacts are missing.
fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    let boot = "podvm boot --initrd-dir rootfs";
    let batch = e2e::batch("e2e-agent")?
        .check("setup", SETUP_ROOTFS)
        .check("stdin_echo", &format!("echo data | {boot} -- /bin/cat"))
        .check(
            "stdin_big",
            &format!(
                "head -c {BIG_STDIN_BYTES} /dev/urandom > big.in && md5sum < big.in \
                 && {boot} --memory 512 -- /bin/sh -c 'cat > /tmp/in; md5sum < /tmp/in; wc -c < /tmp/in' < big.in \
                 && {boot} --memory 512 -- /bin/cat < big.in | md5sum; rm -f big.in"
            ),
        )
        .check(
            "stdin_and_streams",
            &format!(
                "printf 'one\\ntwo\\n' | {boot} -- /bin/sh -c 'while read l; do echo out-$l; echo err-$l >&2; done'"
            ),
        )
        .check(
            "user_by_name",
            &format!("{boot} --user app -- /bin/sh -c 'id; echo home=$HOME'"),
        )
        .check(
            "user_and_group",
            &format!("{boot} --user app --group staff -- /bin/sh -c 'id -u; id -g'"),
        )
        .check("unknown_user", &format!("{boot} --user ghost -- /bin/true"))
        .check(
            "sigterm_trap",
            &format!(
                "{WAIT_FOR}; {boot} -- /bin/sh -c 'trap \"echo got-term; exit 3\" TERM; echo ready; \
                 while :; do sleep 1; done' > term.out 2> term.err & pid=$!; \
                 wait_for term.out ready && kill -TERM $pid; wait $pid; echo rc=$?; cat term.out"
            ),
        )
        .check(
            "sigterm_ignored",
            &format!(
                "{WAIT_FOR}; {boot} --stop-timeout 2 -- /bin/sh -c 'trap \"\" TERM; echo ready; \
                 while :; do sleep 1; done' > ign.out 2> ign.err & pid=$!; \
                 wait_for ign.out ready && kill -TERM $pid; wait $pid; echo rc=$?; cat ign.err"
            ),
        )
        .check(
            "boot_tty",
            &format!("{boot} --tty -- /bin/sh -c 'tty; test -t 0 && echo stdin-is-a-tty; exit 4' < /dev/null"),
        )
        .check("exec", &exec_script(boot))
        .check("interactive_tty", &tmux_script(boot))
        .host_tool(SETPRIV);
    let batch = match Path::new(TMUX).exists() {
        // tmux insists on a UTF-8 locale: bring glibc's C.UTF-8 along.
        true => batch.host_tool(TMUX).host_tool(C_UTF8),
        false => batch,
    };
    Some(batch)
}

/// The value after `key=` on its own line of stdout.
fn value<'a>(result: &'a CheckResult, key: &str) -> Option<&'a str> {
    result
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
}

#[test]
fn piped_stdin_reaches_the_app() {
    let Some(result) = check("stdin_echo") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "data\n", "{result:?}");
}

#[test]
fn large_stdin_arrives_byte_exact_both_ways() {
    let Some(result) = check("stdin_big") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    let lines: Vec<&str> = result.stdout.lines().collect();
    let sums: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| word.len() == 32)
        .collect();
    assert_eq!(
        sums.len(),
        3,
        "host, guest and round-trip checksums: {result:?}"
    );
    assert_eq!(sums[0], sums[1], "guest saw other bytes: {result:?}");
    assert_eq!(sums[0], sums[2], "round trip changed bytes: {result:?}");
    assert!(
        lines
            .iter()
            .any(|line| line.trim() == BIG_STDIN_BYTES.to_string()),
        "{result:?}"
    );
}

#[test]
fn stdin_lines_come_back_on_separate_streams() {
    let Some(result) = check("stdin_and_streams") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "out-one\nout-two\n", "{result:?}");
    assert!(result.stderr.contains("err-one\nerr-two\n"), "{result:?}");
    assert!(!result.stdout.contains("err-"), "{result:?}");
}

#[test]
fn user_by_name_gets_uid_groups_and_home_from_passwd() {
    let Some(result) = check("user_by_name") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert!(
        result.stdout.contains("uid=1000(app) gid=1000(app)"),
        "{result:?}"
    );
    assert!(result.stdout.contains("10(wheel)"), "{result:?}");
    assert_eq!(value(result, "home"), Some("/home/app"), "{result:?}");
}

#[test]
fn group_by_name_overrides_the_primary_group() {
    let Some(result) = check("user_and_group") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "1000\n50\n", "{result:?}");
}

#[test]
fn unknown_user_is_126_with_a_clear_error() {
    let Some(result) = check("unknown_user") else {
        return;
    };
    assert_eq!(result.code, 126, "{result:?}");
    assert!(
        result.stderr.contains("unknown user \"ghost\""),
        "{result:?}"
    );
}

#[test]
fn sigterm_reaches_the_app_which_exits_with_its_code() {
    let Some(result) = check("sigterm_trap") else {
        return;
    };
    assert_eq!(value(result, "rc"), Some("3"), "{result:?}");
    assert!(result.stdout.contains("got-term"), "{result:?}");
}

#[test]
fn an_app_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let Some(result) = check("sigterm_ignored") else {
        return;
    };
    assert_eq!(value(result, "rc"), Some("143"), "{result:?}");
    assert!(result.stdout.contains("stopping it hard"), "{result:?}");
}

#[test]
fn boot_tty_gives_the_app_a_terminal() {
    let Some(result) = check("boot_tty") else {
        return;
    };
    assert_eq!(result.code, 4, "{result:?}");
    assert!(result.stdout.contains("/dev/pts/"), "{result:?}");
    assert!(result.stdout.contains("stdin-is-a-tty"), "{result:?}");
}

#[test]
fn exec_runs_commands_in_a_running_vm() {
    let Some(result) = check("exec") else { return };
    assert!(result.stdout.contains("is-a-socket\n"), "{result:?}");
    assert_eq!(value(result, "mode"), Some("600"), "{result:?}");
    assert!(result.stdout.contains("in-exec\n"), "{result:?}");
    assert_eq!(value(result, "plain"), Some("5"), "{result:?}");
    assert!(result.stdout.contains("piped\nstdin=0"), "{result:?}");
    assert!(result.stdout.contains("1000\nuser=0"), "{result:?}");
    assert!(result.stdout.contains("/dev/pts/"), "{result:?}");
    assert_eq!(value(result, "tty"), Some("6"), "{result:?}");
    // The VM's app was `sleep`, killed by the forwarded SIGTERM.
    assert_eq!(value(result, "vm"), Some("143"), "{result:?}");
    assert!(result.stdout.contains("socket-removed"), "{result:?}");
}

/// Attack: another user connects to the VM's control socket (opened to everyone for the test,
/// so that only the peer credential check stands) to run a command. It is refused, the VM's
/// podvm logs the refusal and goes on serving root.
#[test]
fn exec_from_another_user_is_refused() {
    let Some(result) = check("exec") else { return };
    assert_eq!(value(result, "bad"), Some("125"), "{result:?}");
    assert!(
        result.stdout.contains("permission denied: uid 65534"),
        "{result:?}"
    );
    assert!(!result.stdout.contains("should-not-run"), "{result:?}");
    assert!(result.stdout.contains("still-served\n"), "{result:?}");
    assert!(
        result
            .stdout
            .contains("refused a connection from uid 65534"),
        "the refusal is logged: {result:?}"
    );
}

#[test]
fn an_interactive_tty_session_resizes_and_restores_the_terminal() {
    let Some(result) = check("interactive_tty") else {
        return;
    };
    if result.stdout.starts_with("skipping:") {
        eprintln!("{}", result.stdout.trim());
        return;
    }
    assert_eq!(result.code, 0, "{result:?}");
    let screen = &result.stdout;
    assert!(screen.contains("30 100\n"), "initial size: {result:?}");
    assert!(
        screen.contains("40 120\n"),
        "size after SIGWINCH: {result:?}"
    );
    assert!(screen.contains("rc=3"), "{result:?}");
    assert!(screen.contains("terminal-restored"), "{result:?}");
}
