#!/usr/bin/env bash
# Reliability under load (issue 20), inside one L1: N pods started at once for each N given
# (default 10 25 50; a round L1 has too little memory for is skipped with the reason), or a soak
# of COUNT sequential pods. Not a pass/fail test: prints how many pods were right, the spread of
# start-to-first-output and exit times, pods per minute, memory per pod (peak of each pod's
# cgroup) and, for the soak, failures by cause.
# Usage: bench/load.sh OUT_DIR [N...]        e.g. bench/load.sh out 10 25
#        bench/load.sh OUT_DIR soak COUNT [MAX_SECS]
#                                            e.g. bench/load.sh out soak 300 780: 300 pods, or
#                                            as many as start in 780 s (an L1 run blocks every
#                                            other L1 user of the machine)
set -euo pipefail
out=${1:?usage: load.sh OUT_DIR [N...] | load.sh OUT_DIR soak COUNT [MAX_SECS]}
shift
if [ "${1:-}" = soak ]; then
  args="soak ${2:?usage: load.sh OUT_DIR soak COUNT [MAX_SECS]} ${3:-}"
else
  args="at-once ${*:-10 25 50}"
fi
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
payload=$work/payload
mkdir -p "$work/results"
. "$here/bench/lib.sh"; bench_payload "$out" "$payload"
"$here/scripts/demo-image.sh" "$payload/demo" >/dev/null
cp "$here/bench/load-inner.sh" "$payload/"
# The default network's CNI plugins and iptables, as the E2E tests give L1 (tests/support/artifacts.rs).
tools=()
for tool in /usr/lib/cni /usr/sbin/iptables /usr/sbin/iptables-save /usr/sbin/iptables-restore \
  /usr/sbin/ip6tables /usr/lib/x86_64-linux-gnu/xtables /usr/sbin/ip /usr/sbin/tc; do
  [ -e "$tool" ] && tools+=(-b "$tool")
done
# A failed or stopped L1 still leaves the results so far (l1.sh copies them out): summarize those.
status=0
"$here/tests/nested/l1.sh" -m "${L1_MEMORY_MIB:-3072}" -t 3600 "${tools[@]}" \
  "$payload" "$work/results" -- "sh /payload/load-inner.sh $args" || status=$?
[ $status -eq 0 ] || echo "load.sh: L1 ended with status $status; results so far:"
python3 "$here/bench/load-summarize.py" "$work/results"
# LOAD_RESULTS=DIR keeps the raw results (and L1's console log) there.
[ -z "${LOAD_RESULTS:-}" ] || { mkdir -p "$LOAD_RESULTS"; cp -a "$work/results" "$work"/*.log "$LOAD_RESULTS/" 2>/dev/null || true; }
exit $status
