#!/usr/bin/env bash
# The vmm-device measures (issue 9): N adopted devices, each held by its own simulated VMM,
# through the real Manager at the shipped guest_d3_interval (1s), in release with Swift's
# runtime linked in as `make install` builds it. Writes bench/results/vmm-N.json; bench/report.py
# puts them in docs/BENCHMARKS.md. Run by bench/run.sh (make bench), or alone:
#
#   BENCH_DEVICES="1 64 1024 4096" BENCH_VMM_SECONDS=30 bench/vmm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-$(command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)}
DEVICES=${BENCH_DEVICES:-"1 64 1024 4096"}
SECONDS_SAMPLED=${BENCH_VMM_SECONDS:-30}
RESULTS=${BENCH_RESULTS:-bench/results}
SCRATCH=.build-bench
"$SWIFT" build -c release --static-swift-stdlib --scratch-path "$SCRATCH" --product vfio-powerd-bench
mkdir -p "$RESULTS"
for n in $DEVICES; do
	echo "== vmm devices: N=$n"
	timeout 600 "$SCRATCH/release/vfio-powerd-bench" --vmm 1 --devices "$n" --idle-seconds "$SECONDS_SAMPLED" \
		--out "$RESULTS/vmm-$n.json"
done
date -u +"%Y-%m-%d %H:%M UTC" > "$RESULTS/vmm-date.txt"
git rev-parse --short HEAD >> "$RESULTS/vmm-date.txt"
