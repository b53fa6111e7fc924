#!/bin/bash
# make daemon-tests: the lab's systemd tests, one lane per kernel, the lanes side by side.
#
# Each lane boots its kernel for lab/tests/daemon.sh, then for lab/tests/vmm.sh; the first
# lane also runs lab/tests/package.sh (the package does not depend on the kernel: once, on
# Debian 12's own). A lab guest has one vCPU, which QEMU's TCG runs on one host thread, so
# two lanes use the two cores of a CI machine instead of one and take about half the time.
# Each lane writes its own log, printed whole when the lanes are done, so the output reads
# as a serial run would. LAB_SERIAL=1 runs the lanes one after the other.
#
# Usage: lab/daemon-lanes.sh KERNEL...
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 KERNEL..." >&2; exit 2; }
logs=.build/lab-lanes
mkdir -p "$logs"
for k in "$@"; do rm -f "$logs/$k.log" "$logs/$k.status"; done

lane() { # kernel first?
	local k=$1 first=$2 status=0
	echo "== vfio-powerd under systemd on LAB_KERNEL=$k"
	LAB_KERNEL=$k lab/lab.sh systemd --timeout 600 -- lab/tests/daemon.sh || status=1
	echo "== vfio-powerd with Debian's QEMU holding a device, under systemd on LAB_KERNEL=$k"
	LAB_KERNEL=$k lab/lab.sh systemd --timeout 600 -- lab/tests/vmm.sh || status=1
	if [ "$first" = yes ]; then
		echo "== the Debian package, under systemd on LAB_KERNEL=$k"
		LAB_KERNEL=$k lab/lab.sh systemd --timeout 600 -- lab/tests/package.sh || status=1
	fi
	return $status
}

pids=() first=yes
for k in "$@"; do
	if [ -n "${LAB_SERIAL:-}" ]; then
		lane "$k" $first > "$logs/$k.log" 2>&1; echo $? > "$logs/$k.status"
	else
		( lane "$k" $first > "$logs/$k.log" 2>&1; echo $? > "$logs/$k.status" ) &
		pids+=($!)
		echo "lab: lane LAB_KERNEL=$k started (log: $logs/$k.log)"
	fi
	first=no
done
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"

failed=()
for k in "$@"; do
	cat "$logs/$k.log"
	[ "$(cat "$logs/$k.status" 2>/dev/null)" = 0 ] || failed+=("$k")
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "lab: the daemon tests failed on LAB_KERNEL=${failed[*]} (logs: $logs/)" >&2
	exit 1
fi
echo "lab: the daemon tests passed on LAB_KERNEL=$*"
