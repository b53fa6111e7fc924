#!/usr/bin/env bash
# make bench: builds the daemon's benchmark (release) and the C baseline, runs both for each N
# in the same run, one process per N and side, keeps the JSON under bench/results/, and writes
# docs/BENCHMARKS.md and docs/benchmark-latency.png (bench/report.py).
#
#   BENCH_DEVICES="1 64 1024 4096"  BENCH_SAMPLES=10000  BENCH_IDLE_SECONDS=30  BENCH_LAB=1  bench/run.sh
# (BENCH_LAB=0 skips §3, the VM lab run, about a minute under TCG.)
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-$(command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)}
DEVICES=${BENCH_DEVICES:-"1 64 1024 4096"}
SAMPLES=${BENCH_SAMPLES:-10000}
IDLE=${BENCH_IDLE_SECONDS:-30}
RESULTS=${BENCH_RESULTS:-bench/results}
SCRATCH=.build-bench
# Debian's python3 (python3-matplotlib is installed for it), not whatever python3 is first on PATH.
PYTHON=${PYTHON:-$([ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)}

# Built as `make install` builds the daemon (release, Swift's runtime linked in statically):
# memory is measured on the form that ships, not on one that maps every shared Swift library.
echo "== building (release, static Swift runtime)"
BUILD=("$SWIFT" build -c release --static-swift-stdlib --scratch-path "$SCRATCH")
"${BUILD[@]}" --product vfio-powerd-bench
cc -O2 -Wall -pthread -o "$SCRATCH/baseline" bench/baseline.c
# The vmm-device measures (bench/vmm.sh).
BENCH_DEVICES="$DEVICES" BENCH_RESULTS="$RESULTS" SWIFT="$SWIFT" bench/vmm.sh
if [ "${BENCH_LAB:-1}" = 1 ]; then  # §3 runs the real daemon (release) in the VM lab
	"${BUILD[@]}" --product vfio-powerd
	"${BUILD[@]}" --product vfio-powerctl
fi
mkdir -p "$RESULTS"

# The machine and the moment, for the document.
SWIFT_BIN="$SWIFT" "$PYTHON" - "$RESULTS/machine.json" "$DEVICES" "$SAMPLES" "$IDLE" <<'PY'
import json, os, subprocess, sys, datetime, platform
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
    "loadavg_before": open("/proc/loadavg").read().split()[:3],
    "commit": git("rev-parse", "--short", "HEAD"), "dirty": git("status", "--porcelain", "--", "Sources", "Package.swift").split("\n") if git("status", "--porcelain", "--", "Sources", "Package.swift") else [],
    "swift": subprocess.run([os.environ.get("SWIFT_BIN", "swift"), "--version"], capture_output=True, text=True).stdout.split("\n")[0],
    "devices": [int(n) for n in sys.argv[2].split()], "samples": int(sys.argv[3]), "idle_seconds": float(sys.argv[4]),
}, open(sys.argv[1], "w"), indent=2)
PY

for n in $DEVICES; do
    # At 4096 every storm round takes long (see docs/BENCHMARKS.md): fewer rounds, still >= 12k wakes.
    rounds=$(( n >= 4096 ? 3 : 0 ))
    args=(--devices "$n" --samples "$SAMPLES" --idle-seconds "$IDLE" --rounds "$rounds")
    echo "== N=$n: baseline"
    timeout 600 "$SCRATCH/baseline" "${args[@]}" --out "$RESULTS/baseline-$n.json"
    echo "== N=$n: daemon"
    timeout 1200 "$SCRATCH/release/vfio-powerd-bench" "${args[@]}" --out "$RESULTS/daemon-$n.json"
done
# The loop's own cost without its journal entries: the largest N again with the daemon's logger
# at notice (`vfio-powerd --log-level notice`), which skips the two info entries of every wake.
largest=${DEVICES##* }
echo "== N=$largest: daemon, log level notice"
timeout 1200 "$SCRATCH/release/vfio-powerd-bench" --devices "$largest" --samples "$SAMPLES" --idle-seconds 0 \
	--rounds $(( largest >= 4096 ? 3 : 0 )) --log-level notice --out "$RESULTS/daemon-$largest-notice.json"
"$PYTHON" - "$RESULTS/machine.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
json.dump(m, open(sys.argv[1], "w"), indent=2)
PY
# §3: the real kernel in the VM lab (TCG), after the host runs so it does not disturb them.
if [ "${BENCH_LAB:-1}" = 1 ]; then
	echo "== the real daemon on a real kernel in the VM lab (TCG)"
	bench/lab/run.sh "$RESULTS/lab.json" || echo "bench: the lab run failed; docs/BENCHMARKS.md keeps no lab figures" >&2
fi
"$PYTHON" bench/report.py "$RESULTS"
