#!/usr/bin/env python3
"""Prints what bench/load-inner.sh measured: per round of N pods at once, how many were right,
the spread of start-to-first-output and exit times, pods per minute and memory per pod; for a
soak, pods per minute and failures by cause."""
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

results = Path(sys.argv[1])
SILENT = "the guest stopped before the agent"
TIMEOUT_CS = {"at-once": 600 * 100, "soak": 120 * 100}  # load-inner.sh's per-pod limits (cs)


def lines(name):
    path = results / name
    return [line.split(" ") for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def errors():
    """ROUND -> I -> podvm's stderr lines (and the console's last line) of failed pods."""
    by = defaultdict(lambda: defaultdict(list))
    for row in lines("errors.txt"):
        by[row[0]][row[1]].append(" ".join(row[2:]).strip())
    return by


def spread(values_cs):
    """min / median / max in seconds."""
    s = [v / 100 for v in values_cs]
    return f"min {min(s):6.1f}  median {statistics.median(s):6.1f}  max {max(s):6.1f} s"


def cause(rc, want, output, expected, err, took_cs, mode="at-once"):
    if took_cs >= TIMEOUT_CS[mode] or rc in (124, 143):
        return "timeout"
    named = [line.split(": ", 1)[1] for line in err if line.startswith("cause: ")]
    if named and named[0] != "none":
        # The cause podvm's status names: guest-panic, triple-fault, no-agent, killed, ...
        return f"guest ended without an exit status ({named[0]})"
    if any(SILENT in line for line in err):
        return "guest died silently"
    if rc != want:
        return f"exit code wrong ({rc})"
    if output != expected:
        return "output wrong"
    return "right"


def at_once(errs):
    rounds = defaultdict(list)
    for row in lines("at-once.txt"):
        n, i, t0, first, t1, rc = (int(x) for x in row[:6])
        rounds[n].append((i, t0, first, t1, rc, " ".join(row[6:]).strip()))
    peaks = defaultdict(dict)
    avail = defaultdict(list)
    for row in lines("mem.txt"):
        if len(row) < 3 or not row[2]:
            continue
        if row[1] == "avail":
            avail[int(row[0])].append(int(row[2]))
        else:
            peaks[int(row[0])][row[1]] = max(int(row[2]), peaks[int(row[0])].get(row[1], 0))
    for row in lines("skipped.txt"):
        print(f"{row[0]} pods at once: skipped: {' '.join(row[1:])}")
    for n, pods in sorted(rounds.items()):
        causes = Counter(
            cause(rc, i, out, f"pod-{i}", errs.get(str(n), {}).get(str(i), []), t1 - t0) for i, t0, _, t1, rc, out in pods
        )
        start = min(p[1] for p in pods)
        end = max(p[3] for p in pods)
        print(f"{n} pods at once: {causes['right']}/{len(pods)} right "
              f"({', '.join(f'{c}: {k}' for c, k in causes.items() if c != 'right') or 'no failures'})")
        print(f"  start to first output: {spread([p[2] - p[1] for p in pods])}")
        print(f"  start to exit:         {spread([p[3] - p[1] for p in pods])}")
        print(f"  launches spread over {(max(p[1] for p in pods) - start) / 100:.1f} s; all done after "
              f"{(end - start) / 100:.1f} s: {len(pods) * 6000 / (end - start):.1f} pods per minute")
        mib = [v / 2**20 for v in peaks[n].values()]
        if mib:
            print(f"  memory per pod (peak of its cgroup: VMM + guest RAM touched, {len(mib)} pods): "
                  f"median {statistics.median(mib):.1f} MiB, max {max(mib):.1f} MiB")
        if avail[n]:
            print(f"  L1 MemAvailable: lowest {min(avail[n]) / 1024:.0f} MiB during the round")
        for i, lines_ in sorted(errs.get(str(n), {}).items(), key=lambda kv: int(kv[0])):
            print(f"  pod {i}: {' | '.join(lines_)}")


def soak(errs):
    pods = []
    for row in lines("soak.txt"):
        i, want, t0, first, t1, rc = (int(x) for x in row[:6])
        pods.append((i, want, t0, first, t1, rc, " ".join(row[6:]).strip()))
    if not pods:
        return
    causes = Counter(
        cause(rc, want, out, f"pod-{i}", errs.get("soak", {}).get(str(i), []), t1 - t0, "soak") for i, want, t0, _, t1, rc, out in pods
    )
    for row in lines("soak-stopped.txt"):
        print(f"soak stopped early: {' '.join(row)}")
    took = sum(p[4] - p[2] for p in pods)
    wall = max(p[4] for p in pods) - min(p[2] for p in pods)
    print(f"soak: {causes['right']}/{len(pods)} sequential pods right, {len(pods) * 6000 / took:.1f} pods per "
          f"minute of pod time, {len(pods) * 6000 / wall:.1f} per minute of wall time ({wall / 100:.0f} s, "
          f"gc every 10 pods included)")
    for what, count in causes.most_common():
        if what != "right":
            print(f"  {what}: {count}")
    print(f"  start to first output: {spread([p[3] - p[2] for p in pods])}")
    print(f"  start to exit:         {spread([p[4] - p[2] for p in pods])}")
    for i, lines_ in sorted(errs.get("soak", {}).items(), key=lambda kv: int(kv[0])):
        print(f"  pod {i}: {' | '.join(lines_)}")


errs = errors()
at_once(errs)
soak(errs)
