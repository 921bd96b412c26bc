//! End-to-end tests of pods: `run`, `prepare` + `run-prepared`, `status`, `list` and `gc` with
//! real microVMs, all checks in ONE nested L1 boot (or directly on a host with real KVM).

mod support;

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::time::Duration;

use registry_support::Fixtures;
use serde_json::Value;
use support::e2e::{self, E2e};
use support::nested::{Batch, CheckResult};
use support::privilege;

/// podvm with its own data dir inside the run directory, and the busybox image.
const PODVM: &str = "podvm --dir state";
const IMAGE: &str = "oci:busybox-layout:latest";
/// An appc pod manifest of two apps sharing an empty volume: the first writes, the second waits
/// for it and reads.
const POD_MANIFEST: &str = r#"{"acKind":"PodManifest","acVersion":"0.8.11","apps":[
{"name":"first","image":{"name":"oci:busybox-layout:latest"},"mounts":[{"volume":"v","path":"/v"}],
 "app":{"exec":["/bin/sh","-c","echo first-from-$FROM; echo reads-first > /v/x"],"environment":[{"name":"FROM","value":"manifest"}]}},
{"name":"second","image":{"name":"oci:busybox-layout:latest"},"mounts":[{"volume":"v","path":"/v"}],
 "app":{"exec":["/bin/sh","-c","for i in $(seq 100); do [ -s /v/x ] && break; sleep 0.1; done; echo second-$(cat /v/x)"]}}],
"volumes":[{"name":"v","kind":"empty"}]}"#;

/// The `layers` fixture: user `app`, working dir /data, a volume (mount point) at /data whose
/// image files include owners, modes, links, a fifo and a hard link.
const LAYERS: &str = "oci:layers-layout:latest";
/// setpriv from util-linux (busybox's cannot change uids), brought into L1.
const SETPRIV: &str = "/usr/bin/setpriv";

static RESULTS: E2e = E2e::new("fetch");

fn check(name: &str) -> Option<&'static CheckResult> {
    RESULTS.check(name, batch)
}

/// Every check of this file, run in one L1 boot (or on a host with real KVM).
fn batch() -> Option<Batch> {
    if registry_support::skip() {
        return None;
    }
    let fixtures = Fixtures::get();
    let batch = e2e::batch("e2e-pods")?
        .payload_dir(fixtures.layout("busybox"), "busybox-layout")
        .payload_dir(fixtures.layout("layers"), "layers-layout")
        .host_tool(SETPRIV)
        .check("fetch", &format!("{PODVM} fetch {IMAGE} {LAYERS}"))
        .check(
            "run_exit42",
            &format!(
                "{PODVM} run --uuid-file-save run.uuid {IMAGE} --exec /bin/sh -- -c 'echo hi from the pod; exit 42'"
            ),
        )
        .check("status_after_run", &format!("{PODVM} status --format json $(cat run.uuid)"))
        .check(
            "env_precedence",
            &format!(
                "{PODVM} run --set-env WHO=pod --set-env KEEP=pod {IMAGE} --environment WHO=app --exec /bin/sh -- -c 'echo $WHO $KEEP'"
            ),
        )
        .check(
            "prepare_then_run",
            &format!(
                "u=$({PODVM} prepare {IMAGE} --exec /bin/sh -- -c 'cat /etc/passwd | head -1; kill -9 $$') && \
                 {PODVM} status $u | grep state= && {PODVM} run-prepared $u; echo rc=$?; {PODVM} status $u | grep -E 'state=|app-'"
            ),
        )
        .check("list_json", &format!("{PODVM} list --format json"))
        .check(
            "sized_vm",
            &format!(
                "{PODVM} run {IMAGE} --memory 600Mi --cpu 1500m --exec /bin/sh -- -c 'nproc; grep MemTotal /proc/meminfo'"
            ),
        )
        // Memory reclaim at the limit is slow under nested TCG before the OOM kill comes.
        .check_with_timeout(
            "app_cgroup",
            &format!(
                "{PODVM} run {IMAGE} --memory 64Mi --cpu 500m --exec /bin/sh -- -c \
                 'cat /proc/self/cgroup; cd /sys/fs/cgroup/app-busybox-layout && cat memory.max cpu.max; \
                  x=$(head -c 80000000 /dev/zero | tr \"\\0\" a); echo survived'; echo rc=$?"
            ),
            Duration::from_secs(480),
        )
        .check(
            "logs",
            &format!(
                "{PODVM} run --uuid-file-save logs.uuid {IMAGE} --exec /bin/sh -- -c 'echo to-out; echo to-err >&2; exit 3' >/dev/null 2>&1; \
                 {PODVM} logs $(cat logs.uuid) 2>logs.err; echo \"stderr: $(cat logs.err)\""
            ),
        )
        .check(
            "enter_then_stop",
            &format!(
                "{PODVM} run --uuid-file-save s.uuid {IMAGE} --user 1000 --group 1000 --exec /bin/sh -- -c 'trap \"echo got-term; exit 3\" TERM; echo started as $(id -u):$(id -g); sleep 600 & wait' >s.out 2>&1 & pid=$!; \
                 for i in $(seq 600); do grep -q started s.out 2>/dev/null && break; sleep 0.2; done; \
                 {PODVM} enter $(cat s.uuid) /bin/sh -c 'echo entered as $(id -u) in $(cat /etc/hostname 2>/dev/null || hostname); ls /proc/1 >/dev/null && exit 4'; echo enter-rc=$?; \
                 {PODVM} stop $(cat s.uuid) >/dev/null; echo stop-rc=$?; wait $pid; echo run-rc=$?; cat s.out; \
                 {PODVM} status $(cat s.uuid) | grep app-; \
                 {PODVM} run --uuid-file-save f.uuid {IMAGE} --exec /bin/sh -- -c 'trap \"\" TERM; echo started; sleep 600' >f.out 2>&1 & pid=$!; \
                 for i in $(seq 600); do grep -q started f.out 2>/dev/null && break; sleep 0.2; done; \
                 {PODVM} stop --force $(cat f.uuid) >/dev/null; echo force-rc=$?; wait $pid; echo forced-run-rc=$?; \
                 {PODVM} status $(cat f.uuid) | grep reason="
            ),
        )
        .check(
            "control_socket",
            &format!(
                "{PODVM} run --uuid-file-save c.uuid {IMAGE} --exec /bin/sh -- -c 'trap \"echo got-term; exit 3\" TERM; echo started; sleep 600 & wait' >c.out 2>c.err & pid=$!; \
                 for i in $(seq 600); do grep -q started c.out 2>/dev/null && break; sleep 0.2; done; \
                 u=$(cat c.uuid); d=state/pods/run/$u; \
                 [ -S $d/control.sock ] && echo socket-while-running; echo socket-mode=$(stat -c %a $d/control.sock); \
                 [ -e $d/exec.json ] && echo exec-json-while-running; \
                 {PODVM} status $u | grep -E '^(state|pid|uptime)=' | sed \"s/=$pid$/=PID/; s/uptime=[0-9]*s/uptime=Ns/\"; \
                 {PODVM} status --format json $u | grep -c uptime_secs; \
                 vp=$({PODVM} status --format json $u | tr -d '\\n ' | sed -n 's/.*\"vmm_pid\":\\([0-9]*\\).*/\\1/p'); \
                 f_sep=$([ -n \"$vp\" ] && [ \"$vp\" != \"$pid\" ] && echo yes || echo no); \
                 f_table=$([ \"$({PODVM} status $u | sed -n 's/^vmm-pid=//p')\" = \"$vp\" ] && echo yes || echo no); \
                 f_cmd=$(tr '\\0' ' ' </proc/$vp/cmdline | cut -d' ' -f2-3); \
                 f_ppid=$(grep '^PPid:' /proc/$vp/status | tr -dc 0-9); \
                 f_kvm=$(ls -l /proc/$vp/fd | grep -c ' /dev/kvm$'); \
                 f_kvmvm=$(ls -l /proc/$vp/fd | grep -c 'anon_inode:kvm-vm'); \
                 f_sup=$(ls -l /proc/$pid/fd | grep -c -e /dev/kvm -e 'anon_inode:kvm'); \
                 {PODVM} enter $u /bin/sh -c 'echo entered; exit 4'; echo enter-rc=$?; \
                 {SETPRIV} --reuid=65534 --regid=65534 --clear-groups podvm exec --exec-info $d/control.sock -- /bin/true 2>&1 | grep -o 'Permission denied' | head -1; \
                 chmod 711 state state/pods state/pods/run $d && chmod 666 $d/control.sock; \
                 {SETPRIV} --reuid=65534 --regid=65534 --clear-groups podvm exec --exec-info $d/control.sock -- /bin/echo should-not-run 2>&1; echo nobody-rc=$?; \
                 chmod 700 state state/pods state/pods/run $d && chmod 600 $d/control.sock; \
                 {PODVM} status $u | grep state=; \
                 {PODVM} stop $u >/dev/null; echo stop-rc=$?; wait $pid; echo run-rc=$?; cat c.out; grep -c 'refused a connection from uid 65534' c.err; \
                 [ -e $d/control.sock ] && echo socket-left; [ -e $d/exec.json ] && echo exec-json-left; \
                 {PODVM} status $u | grep -E '^(state|vmm-pid|uptime)='; echo end; \
                 echo vmm-separate=$f_sep vmm-in-table=$f_table; echo \"vmm-cmd=$f_cmd\"; \
                 echo vmm-parent=$([ \"$f_ppid\" = \"$pid\" ] && echo supervisor || echo \"$f_ppid\"); \
                 echo vmm-kvm=$f_kvm vmm-kvm-vm=$f_kvmvm supervisor-kvm=$f_sup; \
                 echo vmm-left=$(test -e /proc/$vp && echo yes || echo no); \
                 echo vmm-processes=$(grep -la '[_]_vmm' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
            ),
        )
        .check(
            "detach_attach",
            &format!(
                "u=$({PODVM} run --detach {IMAGE} --exec /bin/sh -- -c 'trap \"echo got-term; exit 3\" TERM; echo started; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.5; done'); \
                 echo detach-rc=$? uuid-lines=$(echo \"$u\" | grep -cE '^[0-9a-f-]{{36}}$'); \
                 {PODVM} status $u | grep state=; sp=$({PODVM} status $u | sed -n 's/^pid=//p'); \
                 echo supervisor: $(tr '\\0' ' ' < /proc/$sp/cmdline | cut -d' ' -f2-4); \
                 {PODVM} attach --sig-proxy=false $u > a1.out 2>&1 & a1=$!; \
                 for i in $(seq 300); do grep -q tick- a1.out 2>/dev/null && break; sleep 0.2; done; \
                 kill -TERM $a1; wait $a1; echo detached-rc=$?; {PODVM} status $u | grep state=; \
                 {PODVM} attach $u > a2.out 2>&1 & a2=$!; \
                 for i in $(seq 300); do grep -q tick- a2.out 2>/dev/null && break; sleep 0.2; done; \
                 {PODVM} stop $u >/dev/null; echo stop-rc=$?; wait $a2; echo attach-rc=$?; \
                 echo attach-saw-term=$(grep -c got-term a2.out) attach-saw-start=$(grep -c started a2.out); \
                 echo logs-have-start=$({PODVM} logs $u 2>/dev/null | grep -c started); \
                 {PODVM} status $u | grep -E '^(state|app-busybox-layout)='; \
                 for i in $(seq 50); do grep -q supervise /proc/$sp/cmdline 2>/dev/null || break; sleep 0.1; done; \
                 grep -q supervise /proc/$sp/cmdline 2>/dev/null && echo supervisor-left; [ -e state/pods/run/$u/control.sock ] && echo socket-left; \
                 u2=$({PODVM} run -d -i {IMAGE} --exec /bin/sh -- -c 'read line; echo got:$line; exit 5'); \
                 echo hello | {PODVM} attach $u2; echo attach-i-rc=$?; {PODVM} stop $u2 >/dev/null 2>&1; \
                 u3=$({PODVM} run -d {IMAGE} --exec /bin/sleep -- 600); {PODVM} stop --force $u3 >/dev/null; echo force-rc=$?; \
                 {PODVM} status $u3 | grep -E '^(state|reason)='; \
                 {PODVM} run -d --vm-memory 1 {IMAGE} --exec /bin/true 2>bad.err; echo bad-rc=$?; \
                 grep -c 'did not start in the background' bad.err; grep -c 'at least' bad.err"
            ),
        )
        .check(
            "kill9_then_gc",
            &format!(
                "{PODVM} run --uuid-file-save k.uuid {IMAGE} --exec /bin/sh -- -c 'echo started; sleep 600' >k.out 2>&1 & pid=$!; \
                 for i in $(seq 600); do grep -q started k.out 2>/dev/null && break; sleep 0.2; done; \
                 {PODVM} status $(cat k.uuid) | grep state=; cg=/sys/fs/cgroup/podvm/pod-$(cat k.uuid); \
                 grep -qx $pid $cg/cgroup.procs && echo podvm-in-pod-cgroup; echo memory.max=$(cat $cg/memory.max) cpu.max=$(cat $cg/cpu.max); \
                 kill -9 $pid; wait $pid; echo rc=$?; \
                 {PODVM} status $(cat k.uuid) | grep -E 'state=|reason='; \
                 {PODVM} gc --grace-period 0s >/dev/null; \
                 echo pods-left=$(find state/pods -mindepth 2 -maxdepth 2 | wc -l); echo vm-procs=$(ps | grep -c -e '[p]odvm run' -e '[_]_vmm'); \
                 [ -e $cg ] || echo cgroup-gone"
            ),
        )
        .check(
            "gc",
            &format!(
                "{PODVM} run {IMAGE} --exec /bin/true && {PODVM} gc >/dev/null && echo kept-within-30m=$({PODVM} list --no-legend | wc -l) && \
                 {PODVM} gc --grace-period 0s >/dev/null && {PODVM} list --format json"
            ),
        )
        .check(
            "cow_rootfs",
            &format!(
                "{PODVM} run --uuid-file-save a.uuid {IMAGE} --exec /bin/sh -- -c 'echo from-a > /etc/mark; cat /etc/mark; sleep 600' >a.out 2>&1 & pa=$!; \
                 for i in $(seq 600); do grep -q from-a a.out 2>/dev/null && break; sleep 0.2; done; cat a.out; \
                 {PODVM} run --uuid-file-save b.uuid {IMAGE} --exec /bin/sh -- -c 'cat /etc/mark 2>/dev/null || echo b-sees-nothing; echo from-b > /etc/mark'; \
                 {PODVM} enter $(cat a.uuid) cat /etc/mark; {PODVM} stop $(cat a.uuid) >/dev/null; wait $pa; \
                 a=$(cat a.uuid); b=$(cat b.uuid); find state -name mark | sed \"s/$a/A/;s/$b/B/\" | sort; grep -c 'stage2.* overlay ' /proc/mounts; \
                 mkdir -p state/pods/run/$a/stage1/left && mount -t tmpfs leftover state/pods/run/$a/stage1/left && \
                 {PODVM} rm $a $b >/dev/null && grep -c leftover /proc/mounts; ls state/pods/run | wc -l"
            ),
        )
        .check(
            "two_apps",
            &format!(
                "{PODVM} run --uuid-file-save m.uuid {IMAGE} --name one --exec /bin/sh -- -c 'echo from-one' \
                 --- {IMAGE} --name two --exec /bin/sh -- -c 'echo from-two >&2'; echo rc=$?; \
                 {PODVM} status $(cat m.uuid) | grep app- | sort; \
                 echo \"one: $({PODVM} logs --app one $(cat m.uuid) 2>&1)\"; \
                 echo \"two: $({PODVM} logs --app two $(cat m.uuid) 2>&1)\"; \
                 {PODVM} run -i {IMAGE} --- {IMAGE} 2>&1; echo interactive-rc=$?"
            ),
        )
        .check(
            "second_app_fails",
            &format!(
                "{PODVM} run --uuid-file-save mf.uuid {IMAGE} --name sleeper --exec /bin/sh -- -c 'echo sleeping; sleep 600' \
                 --- {IMAGE} --name failer --exec /bin/sh -- -c 'sleep 2; exit 7'; echo rc=$?; \
                 {PODVM} status --format json $(cat mf.uuid)"
            ),
        )
        .check(
            "enter_second_app",
            &format!(
                "{PODVM} run --uuid-file-save me.uuid {IMAGE} --name a --exec /bin/sh -- -c 'echo a-up; sleep 600' \
                 --- {IMAGE} --name b --exec /bin/sh -- -c 'echo only-in-b > /b-mark; echo b-up; sleep 600' >me.out 2>&1 & pid=$!; \
                 for i in $(seq 600); do grep -q b-up me.out 2>/dev/null && grep -q a-up me.out && break; sleep 0.2; done; \
                 {PODVM} enter --app b $(cat me.uuid) /bin/sh -c 'cat /b-mark; exit 5'; echo enter-b-rc=$?; \
                 {PODVM} enter --app a $(cat me.uuid) /bin/sh -c 'cat /b-mark 2>/dev/null || echo a-sees-no-mark; exit 6'; echo enter-a-rc=$?; \
                 {PODVM} stop $(cat me.uuid) >/dev/null; wait $pid; echo run-rc=$?; \
                 {PODVM} status $(cat me.uuid) | grep app- | sort"
            ),
        )
        .check(
            "readonly_rootfs",
            &format!(
                "{PODVM} run --volume scratch,kind=empty --hosts-entry 10.1.2.3=db.internal {IMAGE} --readonly-rootfs \
                 --mount volume=scratch,target=/scratch --exec /bin/sh -- -c \
                 'echo x > /etc/x 2>/dev/null || echo rootfs-read-only; echo y > /scratch/y && echo volume-writable; \
                  echo z > /tmp/z && echo tmp-writable; grep db.internal /etc/hosts | tr -s \"[:blank:]\" \" \"'; echo rc=$?"
            ),
        )
        .check(
            "image_defaults",
            &format!(
                "{PODVM} run {LAYERS} --exec /bin/sh -- -c \
                 'echo as $(id -un):$(id -gn) in $(pwd); cat keep.txt hard.txt; [ keep.txt -ef hard.txt ] && echo hard-link-kept; \
                  stat -c \"%n %u:%g %a\" /data /data/odd-owner.txt /data/sticky /data/exec.sh; readlink /data/link-abs; \
                  [ -p /data/fifo ] && echo fifo-kept; echo new > /data/new && echo data-writable'; echo rc=$?; \
                 {PODVM} run {LAYERS} --user nobody --group nogroup --working-dir /tmp --exec /bin/sh -- -c \
                 'echo as $(id -un):$(id -gn) in $(pwd)'; \
                 echo store-untouched=$(find state -name new | grep -vc /pods/)"
            ),
        )
        .check(
            "volumes",
            &format!(
                "mkdir -p hostvol && {PODVM} run --volume data,kind=host,source=$PWD/hostvol {IMAGE} --mount volume=data,target=/data \
                 --exec /bin/sh -- -c 'echo written-in-guest > /data/f && cat /data/f'; echo rw-rc=$?; echo \"host: $(cat hostvol/f)\"; \
                 {PODVM} run --volume data,kind=host,source=$PWD/hostvol,readOnly=true {IMAGE} --mount volume=data,target=/data \
                 --exec /bin/sh -- -c 'cat /data/f; echo nope > /data/g || exit 9'; echo ro-rc=$?; echo host-files: $(ls hostvol); \
                 {PODVM} run --uuid-file-save v.uuid --volume shared,kind=empty {IMAGE} --name w --mount volume=shared,target=/v \
                 --exec /bin/sh -- -c 'echo from-w > /v/x' --- {IMAGE} --name r --mount volume=shared,target=/mnt/v \
                 --exec /bin/sh -- -c 'for i in $(seq 100); do [ -f /mnt/v/x ] && break; sleep 0.1; done; cat /mnt/v/x'; echo shared-rc=$?; \
                 echo in-pod: $(ls state/pods/run/$(cat v.uuid)/volumes/shared); {PODVM} rm $(cat v.uuid) >/dev/null; \
                 echo left: $(ls -d state/pods/*/$(cat v.uuid) 2>/dev/null | wc -l)"
            ),
        )
        .check(
            "rkt_parity",
            &format!(
                "mkdir -p clampvol && {PODVM} run --volume c,kind=host,source=$PWD/clampvol {IMAGE} --mount volume=c,target=/dir1/../../../x \
                 --exec /bin/sh -- -c 'echo clamped > /x/f'; echo clamp-rc=$? clamp-host=$(cat clampvol/f); \
                 {PODVM} run --uuid-file-save e.uuid {IMAGE} --exec /bin/sleep -- 600 >e.out 2>&1 & pid=$!; \
                 for i in $(seq 1200); do [ -s e.uuid ] && {PODVM} status $(cat e.uuid) 2>/dev/null | grep -q state=running && break; sleep 0.05; done; \
                 {PODVM} enter $(cat e.uuid) /bin/echo entered-at-once; echo enter-at-once-rc=$?; \
                 {PODVM} stop --force $(cat e.uuid) >/dev/null; wait $pid; \
                 printf '%s' '{POD_MANIFEST}' > pod.json; \
                 {PODVM} run --pod-manifest pod.json > manifest.out 2>&1; echo manifest-rc=$?; sort manifest.out; \
                 {PODVM} run --uuid-file-save x.uuid {IMAGE} --exec /bin/sh -- -c 'echo from-the-pod > /exported; rm /bin/true'; \
                 {PODVM} export $(cat x.uuid) $PWD/out.aci; echo export-rc=$?; \
                 {PODVM} export $(cat x.uuid) $PWD/out.aci 2>&1; echo again-rc=$?; \
                 {PODVM} run --insecure-options=image $PWD/out.aci --exec /bin/sh -- -c 'cat /exported; [ -e /bin/true ] || echo removed-stays-removed'; echo exported-run-rc=$?"
            ),
        )
        .check(
            "ci_job",
            &format!(
                "{PODVM} run --uuid-file-save t.uuid --timeout 8s --stop-timeout 2s {IMAGE} --exec /bin/sleep -- 600; echo timeout-rc=$?; \
                 {PODVM} status $(cat t.uuid) | grep reason=; \
                 {PODVM} run --rm --uuid-file-save r.uuid {IMAGE} --exec /bin/sh -- -c 'echo job-output; exit 7'; echo rm-rc=$?; \
                 echo rm-pods-left=$(ls -d state/pods/*/$(cat r.uuid) 2>/dev/null | wc -l); \
                 [ -e /sys/fs/cgroup/podvm/pod-$(cat r.uuid) ] || echo rm-cgroup-gone; \
                 mkdir -p src && head -c 300000 /dev/urandom > src/input && \
                 {PODVM} run --rm --timeout 60s --uuid-file-save j.uuid --copy-in $PWD/src:/src --copy-out /src/out:$PWD/artifacts {IMAGE} \
                 --exec /bin/sh -- -c 'cd /src && mkdir -p out && cp input out/ && sha256sum input > out/sum && exit 3'; echo job-rc=$?; \
                 cmp src/input artifacts/input && echo artifacts-exact; (cd src && sha256sum input) | cmp - artifacts/sum && echo sum-exact; \
                 echo job-pods-left=$(ls -d state/pods/*/$(cat j.uuid) 2>/dev/null | wc -l); \
                 {PODVM} run --uuid-file-save b.uuid {IMAGE} --exec /bin/sh -- -c 'end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do :; done'; \
                 echo usage=$({PODVM} status --format json $(cat b.uuid) | tr -d ' \n'); \
                 {PODVM} image render {IMAGE} built >/dev/null && printf '#!/bin/sh\necho built-image-says $MODE\n' > built/job && chmod 755 built/job && \
                 printf '{{\"entrypoint\":[\"/job\"],\"env\":[\"MODE=ci\"]}}' > spec.json && \
                 {PODVM} image build --tag localhost/job:1 --spec spec.json built > build1.out && {PODVM} image build --tag localhost/job:2 --spec spec.json built > build2.out && \
                 [ \"$(cut -d' ' -f2 build1.out)\" = \"$(cut -d' ' -f2 build2.out)\" ] && echo build-reproducible; \
                 {PODVM} run docker://localhost/job:1; echo built-rc=$?; \
                 grep -c $(cat r.uuid) /proc/mounts"
            ),
        )
        .check(
            "ci_oom",
            &format!(
                "{PODVM} run --uuid-file-save o.uuid {IMAGE} --memory 64Mi --exec /bin/sh -- -c 'head -c 629145600 /dev/zero | tail' 2>oom.err; \
                 echo oom-rc=$?; grep -o 'podvm: oom-killed: .*' oom.err; {PODVM} status $(cat o.uuid) | grep -E '^(app-|cause=)'; \
                 echo oom-json=$({PODVM} status --format json $(cat o.uuid) | tr -d '\n'); \
                 {PODVM} run --uuid-file-save n.uuid {IMAGE} --memory 64Mi --exec /bin/sh -- -c 'head -c 31457280 /dev/zero | wc -c'; echo normal-rc=$?; \
                 echo normal-json=$({PODVM} status --format json $(cat n.uuid) | tr -d '\n')"
            ),
        )
        .check(
            "ci_bytes",
            &format!(
                "mkdir -p bytesvol && {PODVM} run --uuid-file-save y.uuid --volume v,kind=host,source=$PWD/bytesvol {IMAGE} --mount volume=v,target=/vol \
                 --exec /bin/sh -- -c 'head -c 8388608 /dev/zero > /vol/f; sync; set -- $(ip route | grep ^default); \
                 wget -q -T 3 -O /dev/null http://$3:9/; echo gw=$3 > /vol/done; sync; exec sleep 600' >bytes.out 2>&1 & bpid=$!; \
                 for i in $(seq 1200); do [ -s bytesvol/done ] && break; sleep 0.05; done; cat bytesvol/done; \
                 echo live-json=$({PODVM} status --format json $(cat y.uuid) | tr -d '\n'); \
                 {PODVM} stop $(cat y.uuid) >/dev/null; wait $bpid; \
                 echo exited-json=$({PODVM} status --format json $(cat y.uuid) | tr -d '\n')"
            ),
        )
        .check(
            "ci_build_from",
            &format!(
                "pods_before=$(ls -d state/pods/*/* 2>/dev/null | wc -l); \
                 {PODVM} image build --from {IMAGE} --run 'echo built > /built; rm /bin/vi' --tag localhost/from:1 > from1.out; echo from1-rc=$?; \
                 {PODVM} image build --from {IMAGE} --run 'echo built > /built; rm /bin/vi' --tag localhost/from:2 > from2.out; echo from2-rc=$?; \
                 cat from1.out from2.out; [ -n \"$(cut -d' ' -f2 from1.out)\" ] && [ \"$(cut -d' ' -f2 from1.out)\" = \"$(cut -d' ' -f2 from2.out)\" ] && echo from-reproducible; \
                 {PODVM} run --rm docker://localhost/from:1 --exec /bin/sh -- -c 'cat /built; [ -e /bin/vi ] || echo vi-gone; [ -e /bin/ls ] && echo ls-kept'; echo from-run-rc=$?; \
                 {PODVM} image build --from {IMAGE} --run 'echo first-ok' --run 'echo failing-output; exit 5' --run 'echo never-runs' --tag localhost/from:3 2>&1; echo from3-rc=$?; \
                 {PODVM} image list --no-legend --fields=name | grep -c from:3; \
                 echo pods-left=$(( $(ls -d state/pods/*/* 2>/dev/null | wc -l) - pods_before ))"
            ),
        )
        .check(
            "privilege",
            &format!(
                "mkdir -p privvol && printf \"#!/bin/sh\\n\" > privvol/victim && chmod 6755 privvol/victim && \
                 {PODVM} run --uuid-file-save p.uuid --volume data,kind=host,source=$PWD/privvol {IMAGE} \
                 --mount volume=data,target=/data --exec /bin/sh -- -c '{}; {}'; echo rc=$?; \
                 up=$(ls -d state/pods/*/$(cat p.uuid)/overlay/*/upper) && {}; {}",
                privilege::attempts(""),
                privilege::attempts("/data"),
                privilege::host_scan("$up", "upper"),
                privilege::host_scan("privvol", "volume"),
            ),
        );
    Some(batch)
}

#[test]
fn run_exits_with_the_apps_code_and_relays_its_output() {
    let Some(result) = check("run_exit42") else {
        return;
    };
    assert_eq!(result.code, 42, "{result:?}");
    assert_eq!(result.stdout.trim(), "hi from the pod", "{result:?}");
}

#[test]
fn status_records_the_exit() {
    let Some(result) = check("status_after_run") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    let status: Value = serde_json::from_str(&result.stdout).expect("json");
    assert_eq!(status["state"], "exited", "{status}");
    assert_eq!(status["apps"][0]["exit_code"], 42, "{status}");
    assert!(
        status["started"].as_u64().is_some() && status["finished"].as_u64().is_some(),
        "{status}"
    );
}

#[test]
fn app_environment_wins_over_pod_environment() {
    let Some(result) = check("env_precedence") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "app pod", "{result:?}");
}

#[test]
fn prepared_pod_runs_and_reports_a_signal_death() {
    let Some(result) = check("prepare_then_run") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("state=prepared"), "{result:?}");
    assert!(
        out.contains("root:x:0:0"),
        "the image's /etc/passwd: {result:?}"
    );
    assert!(out.contains("rc=137"), "{result:?}");
    assert!(
        out.contains("state=exited") && out.contains("app-busybox-layout=137"),
        "{result:?}"
    );
}

#[test]
fn list_shows_exited_pods() {
    let Some(result) = check("list_json") else {
        return;
    };
    let pods: Value = serde_json::from_str(&result.stdout).expect("json");
    let pods = pods.as_array().expect("array");
    assert_eq!(pods.len(), 3, "{result:?}");
    assert!(
        pods.iter().all(|pod| pod["state"] == "exited"),
        "{result:?}"
    );
}

#[test]
fn the_vm_is_sized_from_the_apps_limits() {
    let Some(result) = check("sized_vm") else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    let mut lines = result.stdout.lines();
    assert_eq!(lines.next(), Some("2"), "1500m -> 2 vCPUs: {result:?}");
    let kib: u64 = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("MemTotal");
    // 600 MiB + 128 MiB guest overhead, minus what the kernel keeps for itself.
    assert!((600 * 1024..=728 * 1024).contains(&kib), "{result:?}");
}

#[test]
fn an_app_runs_in_its_own_guest_cgroup_with_its_limits() {
    let Some(result) = check("app_cgroup") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "0::/app-busybox-layout",
            &(64u64 << 20).to_string(),
            "50000 100000",
            "rc=137"
        ],
        "64Mi and 500m in the app's cgroup; 80 MB in a shell variable is killed: {result:?}"
    );
}

#[test]
fn logs_replays_the_apps_stdout_and_stderr_apart() {
    let Some(result) = check("logs") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout.trim(), "to-out\nstderr: to-err", "{result:?}");
}

#[test]
fn enter_runs_in_the_app_and_stop_is_graceful_or_forced() {
    let Some(result) = check("enter_then_stop") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("entered as 0 in "),
        "enter runs as root by default: {result:?}"
    );
    assert!(out.contains("enter-rc=4"), "{result:?}");
    assert!(
        out.contains("started as 1000:1000"),
        "--user/--group: {result:?}"
    );
    assert!(out.contains("stop-rc=0"), "{result:?}");
    assert!(
        out.contains("got-term") && out.contains("run-rc=3"),
        "the app saw SIGTERM and its code is run's: {result:?}"
    );
    assert!(out.contains("app-busybox-layout=3"), "{result:?}");
    assert!(
        out.contains("force-rc=0") && out.contains("forced-run-rc=137"),
        "{result:?}"
    );
    assert!(
        out.contains("reason=") && out.contains("--force"),
        "{result:?}"
    );
}

/// Issue 13: the VM of a running pod is run by a VMM process of its own, not by its
/// supervisor: `status` (JSON and table) names its pid, which differs from the supervisor's;
/// it is the supervisor's child running the internal `__vmm` subcommand, it holds /dev/kvm and
/// the VM (a kvm-vm descriptor) while the supervisor holds neither; once `stop` ended the pod,
/// no VMM process is left.
#[test]
fn a_running_pod_s_vm_is_run_by_a_vmm_process_of_its_own() {
    let Some(result) = check("control_socket") else {
        return;
    };
    let value = |key: &str| {
        result
            .stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {result:?}"))
            .to_string()
    };
    assert_eq!(value("vmm-separate"), "yes", "{result:?}");
    assert_eq!(value("vmm-in-table"), "yes", "{result:?}");
    assert!(
        result.stdout.contains("\nvmm-cmd=__vmm --parent\n"),
        "{result:?}"
    );
    assert_eq!(value("vmm-parent"), "supervisor", "{result:?}");
    assert_ne!(value("vmm-kvm"), "0", "the VMM holds /dev/kvm: {result:?}");
    assert_ne!(value("vmm-kvm-vm"), "0", "the VMM holds the VM: {result:?}");
    assert_eq!(
        value("supervisor-kvm"),
        "0",
        "the supervisor holds neither /dev/kvm nor the VM: {result:?}"
    );
    assert_eq!(value("vmm-left"), "no", "{result:?}");
    assert_eq!(value("vmm-processes"), "0", "{result:?}");
}

/// `enter`, `status` and `stop` of a running pod go over its control socket (no exec.json);
/// attack: another user runs a command in the pod through the socket, once with podvm's modes
/// (the pod's directory stops it) and once with the directories and socket opened to everyone
/// (the supervisor's peer credential check refuses it, logs it and goes on serving root).
#[test]
fn a_running_pod_is_reached_over_its_control_socket_and_only_by_root() {
    let Some(result) = check("control_socket") else {
        return;
    };
    let lines: Vec<&str> = result
        .stdout
        .lines()
        .filter(|line| !line.starts_with("vmm-"))
        .collect();
    assert!(lines.len() > 9, "{result:?}");
    assert_eq!(
        lines[..9],
        [
            "socket-while-running",
            "socket-mode=600",
            "state=running",
            "pid=PID",
            "uptime=Ns",
            "1",
            "entered",
            "enter-rc=4",
            "Permission denied",
        ],
        "the socket is there and private while the pod runs, status comes from the supervisor \
         (pid, vmm-pid, uptime), enter works, and another user cannot reach the socket: {result:?}"
    );
    let out = &result.stdout;
    assert!(
        out.contains("permission denied: uid 65534") && out.contains("nobody-rc=125"),
        "{result:?}"
    );
    assert!(!out.contains("should-not-run"), "{result:?}");
    let after: Vec<&str> = lines
        .iter()
        .copied()
        .skip_while(|line| !line.starts_with("nobody-rc="))
        .skip(1)
        .collect();
    assert_eq!(
        after,
        [
            "state=running",
            "stop-rc=0",
            "run-rc=3",
            "started",
            "got-term",
            "1",
            "state=exited",
            "end"
        ],
        "still served after the refusal; stopped over the socket (the app saw SIGTERM); the \
         refusal logged; no socket or exec.json left, and status reads the files: {result:?}"
    );
    assert!(!out.contains("exec-json"), "{result:?}");
}

/// `run --detach` prints the uuid and leaves the pod running under a supervisor in the
/// background; `attach --sig-proxy=false` ends alone and the pod runs on; `attach` follows the
/// app and exits with its code when `stop` ends the pod over the control socket; `logs` has
/// what came before; an interactive detached pod takes `attach`'s stdin; `stop --force` finds
/// the detached supervisor holding the pod's lock it was handed; a detached pod that cannot
/// start says why.
#[test]
fn run_detach_attach_and_stop_end_to_end() {
    let Some(result) = check("detach_attach") else {
        return;
    };
    result.expect_lines(&[
        "detach-rc=0 uuid-lines=1",
        "state=running",
        "supervisor: --dir state supervise",
        "detached-rc=143",
        "state=running",
        "stop-rc=0",
        "attach-rc=3",
        "attach-saw-term=1 attach-saw-start=0",
        "logs-have-start=1",
        "state=exited",
        "app-busybox-layout=3",
        "got:hello",
        "attach-i-rc=5",
        "force-rc=0",
        "state=exited",
        "reason=killed by `podvm stop --force`",
        "bad-rc=125",
        "1",
        "1",
    ]);
}

#[test]
fn a_killed_podvm_leaves_an_exited_pod_that_gc_removes_with_its_vm() {
    let Some(result) = check("kill9_then_gc") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("state=running"), "{result:?}");
    assert!(out.contains("rc=137"), "{result:?}");
    assert!(
        out.contains("state=exited") && out.contains("died without recording"),
        "{result:?}"
    );
    assert!(out.contains("pods-left=0"), "{result:?}");
    assert!(out.contains("vm-procs=0"), "{result:?}");
    // The default VM: 256 MiB guest + 192 MiB VMM margin, one vCPU.
    assert!(out.contains("podvm-in-pod-cgroup"), "{result:?}");
    assert!(
        out.contains(&format!(
            "memory.max={} cpu.max=100000 100000",
            (256 + 192) << 20
        )),
        "{result:?}"
    );
    assert!(
        out.contains("cgroup-gone"),
        "gc removes the cgroup: {result:?}"
    );
}

#[test]
fn gc_removes_exited_pods_after_the_grace_period() {
    let Some(result) = check("gc") else { return };
    assert_eq!(result.code, 0, "{result:?}");
    let (kept, listed) = result.stdout.split_once('\n').expect("two parts");
    let kept: usize = kept
        .strip_prefix("kept-within-30m=")
        .and_then(|n| n.trim().parse().ok())
        .expect("count");
    assert_eq!(
        kept, 1,
        "the default grace period keeps a fresh exited pod: {result:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(listed).expect("json"),
        serde_json::json!([]),
        "{result:?}"
    );
}

#[test]
fn two_apps_that_succeed_exit_0_with_both_outputs_and_logs_apart() {
    let Some(result) = check("two_apps") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("from-one\n"), "{result:?}");
    assert!(
        result.stderr.contains("from-two") || out.contains("from-two"),
        "{result:?}"
    );
    assert!(out.contains("rc=0"), "{result:?}");
    assert!(
        out.contains("app-one=0\napp-two=0"),
        "each app's code in status: {result:?}"
    );
    assert!(out.contains("one: from-one\n"), "{result:?}");
    assert!(out.contains("two: from-two\n"), "{result:?}");
    assert!(
        out.contains("--interactive with 2 apps") && !out.contains("interactive-rc=0"),
        "a terminal only for a single app: {result:?}"
    );
}

#[test]
fn the_first_app_to_fail_stops_the_pod_and_gives_its_code() {
    let Some(result) = check("second_app_fails") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("sleeping"), "{result:?}");
    assert!(out.contains("rc=7"), "{result:?}");
    let json = out
        .split_once("rc=7")
        .map(|(_, json)| json)
        .expect("status after rc");
    assert_eq!(json.matches("\"apps\"").count(), 1, "one apps key: {json}");
    let status: Value = serde_json::from_str(json.trim()).expect("json");
    let code = |name: &str| {
        status["apps"]
            .as_array()
            .and_then(|apps| apps.iter().find(|app| app["name"] == name))
            .map(|app| app["exit_code"].clone())
    };
    assert_eq!(code("failer"), Some(Value::from(7)), "{status}");
    assert_eq!(
        code("sleeper"),
        Some(Value::from(143)),
        "the other app was terminated (SIGTERM): {status}"
    );
}

#[test]
fn enter_runs_in_the_named_app_of_a_two_app_pod() {
    let Some(result) = check("enter_second_app") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("only-in-b\nenter-b-rc=5"),
        "enter --app b runs in b's root: {result:?}"
    );
    assert!(
        out.contains("a-sees-no-mark\nenter-a-rc=6"),
        "enter --app a runs in a's root: {result:?}"
    );
    assert!(out.contains("run-rc=143"), "{result:?}");
    assert!(
        out.contains("app-a=143\napp-b=143"),
        "stop terminates every app: {result:?}"
    );
}

#[test]
fn a_readonly_rootfs_refuses_writes_but_volumes_tmp_and_etc_hosts_work() {
    let Some(result) = check("readonly_rootfs") else {
        return;
    };
    result.expect_lines(&[
        "rootfs-read-only",
        "volume-writable",
        "tmp-writable",
        "10.1.2.3 db.internal",
        "rc=0",
    ]);
}

#[test]
fn the_images_user_workdir_and_volume_apply_and_flags_override_them() {
    let Some(result) = check("image_defaults") else {
        return;
    };
    result.expect_lines(&[
        "as app:app in /data",
        "keep me",
        "keep me",
        "hard-link-kept",
        "/data 1000:1000 755",
        "/data/odd-owner.txt 4242:4343 600",
        "/data/sticky 0:0 1777",
        "/data/exec.sh 1000:1000 750",
        "/data/keep.txt",
        "fifo-kept",
        "data-writable",
        "rc=0",
        "as nobody:nogroup in /tmp",
        "store-untouched=0",
    ]);
    assert!(
        result
            .stderr
            .contains("no volume for the image's mount point"),
        "{result:?}"
    );
}

#[test]
fn host_volumes_rw_and_ro_and_an_empty_volume_shared_by_two_apps() {
    let Some(result) = check("volumes") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("written-in-guest\nrw-rc=0\nhost: written-in-guest\n"),
        "a write in the guest lands in the host directory: {result:?}"
    );
    assert!(
        out.contains("written-in-guest\nro-rc=9") && out.contains("host-files: f\n"),
        "a read-only volume reads but refuses writes: {result:?}"
    );
    assert!(
        result.stderr.contains("Read-only file system"),
        "{result:?}"
    );
    assert!(
        out.contains("from-w\nshared-rc=0") && out.contains("in-pod: x\n"),
        "two apps share an empty volume that lives in the pod: {result:?}"
    );
    assert!(out.contains("left: 0"), "rm removes it: {result:?}");
}

#[test]
fn a_mount_target_with_dot_dots_lands_inside_the_apps_root_as_in_rkt() {
    let Some(result) = check("rkt_parity") else {
        return;
    };
    assert!(
        result.stdout.contains("clamp-rc=0 clamp-host=clamped"),
        "/dir1/../../../x is /x, where the volume is mounted: {result:?}"
    );
}

#[test]
fn a_pod_manifest_runs_its_two_apps() {
    let Some(result) = check("rkt_parity") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("manifest-rc=0") && out.contains("first-from-manifest\n"),
        "{result:?}"
    );
    assert!(out.contains("second-reads-first\n"), "{result:?}");
}

#[test]
fn an_exported_app_runs_with_what_its_pod_wrote_and_removed() {
    let Some(result) = check("rkt_parity") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("export-rc=0"), "{result:?}");
    assert!(
        out.contains("exists: pass --overwrite") && out.contains("again-rc=125"),
        "a second export does not replace the first unasked: {result:?}"
    );
    assert!(
        out.contains("from-the-pod\nremoved-stays-removed\nexported-run-rc=0"),
        "the ACI holds the pod's writes and deletions over its image: {result:?}"
    );
}

#[test]
fn a_pod_past_its_timeout_is_stopped_with_124_and_status_says_timeout() {
    let Some(result) = check("ci_job") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("timeout-rc=124\n"), "{result:?}");
    assert!(
        out.contains("reason=timeout: the pod ran past its --timeout of 8s"),
        "{result:?}"
    );
}

#[test]
fn a_ci_job_gets_its_sources_in_and_its_artifacts_out_byte_exact() {
    let Some(result) = check("ci_job") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("job-rc=3\n"),
        "the job's exit code: {result:?}"
    );
    assert!(out.contains("artifacts-exact\n"), "{result:?}");
    assert!(out.contains("sum-exact\n"), "{result:?}");
    assert!(out.contains("job-pods-left=0\n"), "--rm: {result:?}");
}

#[test]
fn status_accounts_a_busy_loops_cpu_time_close_to_its_wall_time() {
    let Some(result) = check("ci_job") else {
        return;
    };
    let line = result
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("usage="))
        .unwrap_or_else(|| panic!("no usage= line: {result:?}"));
    let status: Value = serde_json::from_str(line).expect("status json");
    let usage = &status["usage"];
    let number = |key: &str| {
        usage[key]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.{key} in {status}"))
    };
    let cpu_usec = number("cpu_user_usec") + number("cpu_system_usec");
    let wall_usec = number("wall_ms") * 1000;
    // The app spins for 4 s of its pod's wall time (boot and exit included) on one vCPU.
    assert!(
        cpu_usec >= 3_000_000,
        "the busy loop's 4 s are counted: {cpu_usec} us of CPU; {status}"
    );
    assert!(
        cpu_usec <= wall_usec * 2,
        "no more than the VMM's threads could use: {cpu_usec} us of CPU in {wall_usec} us; {status}"
    );
    assert!(number("memory_peak_bytes") > 0, "{status}");
    assert!(number("vmm_peak_rss_kib") > 0, "{status}");
}

#[test]
fn a_built_image_is_reproducible_and_runs_as_a_pod() {
    let Some(result) = check("ci_job") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("build-reproducible\n"), "{result:?}");
    assert!(
        out.contains("built-image-says ci\nbuilt-rc=0\n"),
        "{result:?}"
    );
}

#[test]
fn a_pod_run_with_rm_keeps_its_exit_code_and_leaves_nothing() {
    let Some(result) = check("ci_job") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("job-output\nrm-rc=7\n"), "{result:?}");
    assert!(out.contains("rm-pods-left=0\n"), "{result:?}");
    assert!(out.contains("rm-cgroup-gone\n"), "{result:?}");
    assert!(
        out.trim_end().ends_with("\n0"),
        "no mount of the pod is left: {result:?}"
    );
}

/// The JSON after `key=` on its own line of `out`.
fn json_line(out: &str, key: &str) -> Value {
    let line = out
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in {out}"));
    serde_json::from_str(line).unwrap_or_else(|err| panic!("{key} {err}: {line}"))
}

#[test]
fn an_app_the_guest_oom_killer_struck_reads_oom_killed_and_a_normal_one_does_not() {
    let Some(result) = check("ci_oom") else {
        return;
    };
    let out = &result.stdout;
    // `tail` holds all of 600 MiB without a newline: past the app's 64Mi the guest kernel kills it.
    assert!(out.contains("oom-rc=137\n"), "{result:?}");
    assert!(
        out.contains("podvm: oom-killed: the guest kernel's OOM killer killed"),
        "run names it: {result:?}"
    );
    assert!(out.contains("-reason=oom-killed\n"), "{result:?}");
    assert!(out.contains("cause=oom-killed\n"), "{result:?}");
    let status = json_line(out, "oom-json=");
    let app = &status["apps"][0];
    assert_eq!(app["reason"], "oom-killed", "{status}");
    assert!(app["oom_kills"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert_eq!(app["exit_code"], 137, "{status}");
    assert_eq!(status["cause"], "oom-killed", "{status}");
    assert!(out.contains("31457280\nnormal-rc=0\n"), "{result:?}");
    let normal = json_line(out, "normal-json=");
    assert!(normal["apps"][0].get("reason").is_none(), "{normal}");
    assert!(normal["apps"][0].get("oom_kills").is_none(), "{normal}");
    assert!(normal.get("cause").is_none(), "{normal}");
}

#[test]
fn usage_counts_bytes_on_shares_and_network_live_and_after_exit() {
    let Some(result) = check("ci_bytes") else {
        return;
    };
    let out = &result.stdout;
    assert!(
        out.contains("gw="),
        "the app got its write done: {result:?}"
    );
    let bytes = |status: &Value, key: &str| {
        status["usage"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.{key} in {status}"))
    };
    let live = json_line(out, "live-json=");
    assert_eq!(live["state"], "running", "{live}");
    let exited = json_line(out, "exited-json=");
    for status in [&live, &exited] {
        // 8 MiB written to the volume and synced before the app said so.
        assert!(bytes(status, "share_written_bytes") >= 8 << 20, "{status}");
        assert!(
            bytes(status, "share_read_bytes") > 0,
            "busybox was read: {status}"
        );
        // ARP and a TCP attempt to the gateway, both ways.
        assert!(bytes(status, "net_rx_bytes") > 0, "{status}");
        assert!(bytes(status, "net_tx_bytes") > 0, "{status}");
    }
    for key in ["share_written_bytes", "net_rx_bytes", "net_tx_bytes"] {
        assert!(
            bytes(&exited, key) >= bytes(&live, key),
            "{key} kept and not less after the exit: {live} {exited}"
        );
    }
}

#[test]
fn an_image_built_from_an_image_and_commands_has_their_result_and_is_reproducible() {
    let Some(result) = check("ci_build_from") else {
        return;
    };
    let out = &result.stdout;
    assert!(out.contains("from1-rc=0\n"), "{result:?}");
    assert!(out.contains("from2-rc=0\n"), "{result:?}");
    assert!(out.contains("from-reproducible\n"), "{result:?}");
    assert!(
        out.contains("built\nvi-gone\nls-kept\nfrom-run-rc=0\n"),
        "the new layer's file and whiteout, the base's files: {result:?}"
    );
    // The failing command: its output and code; the next never ran; no image; no pod left.
    assert!(out.contains("first-ok\n"), "{result:?}");
    assert!(out.contains("failing-output\n"), "{result:?}");
    assert!(!out.contains("never-runs"), "{result:?}");
    assert!(out.contains("from3-rc=5\n0\n"), "{result:?}");
    assert!(out.contains("pods-left=0\n"), "{result:?}");
}

#[test]
fn enter_issued_the_moment_status_says_running_reaches_the_app() {
    let Some(result) = check("rkt_parity") else {
        return;
    };
    assert!(
        result
            .stdout
            .contains("entered-at-once\nenter-at-once-rc=0"),
        "enter waits for the booting pod's agent: {result:?}"
    );
}

#[test]
fn two_concurrent_pods_write_to_their_own_upper_dirs_not_the_store_nor_each_other() {
    let Some(result) = check("cow_rootfs") else {
        return;
    };
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "from-a",
            "b-sees-nothing",
            "from-a",
            "state/pods/run/A/overlay/busybox-layout/upper/etc/mark",
            "state/pods/run/B/overlay/busybox-layout/upper/etc/mark",
            "0",
            "0",
            "0"
        ],
        "pod B, run while A runs, sees nothing of A's write and A nothing of B's; each mark in its pod's upper dir; overlays unmounted after the runs; rm clears a leftover mount: {result:?}"
    );
}

/// Attack: guest root in a pod runs `chmod 4755`, `chown 0:0` + `chmod 6755`, `mknod` of char
/// and block devices in its rootfs (the pod's overlay upper dir on the host) and in a kind=host
/// volume, and rewrites a host file in the volume that is setuid root. Any of these left as is
/// would be a setuid-root program or a device node on the host. After the pod exits, neither
/// the upper dir nor the volume holds a setuid or setgid file or a device node.
#[test]
fn guest_root_leaves_no_setuid_file_or_device_node_in_the_upper_dir_or_a_volume() {
    let Some(result) = check("privilege") else {
        return;
    };
    eprintln!("{result}");
    privilege::assert_none_left(result, 2);
    let out = &result.stdout;
    assert_eq!(out.lines().filter(|l| *l == "rc=0").count(), 1, "{result}");
    for (label, victim) in [("upper", "644"), ("volume", "755")] {
        privilege::assert_host_modes(result, label, victim);
    }
    assert!(
        out.contains("#!/bin/sh\npwned\n"),
        "the volume's victim was rewritten: {result}"
    );
}
