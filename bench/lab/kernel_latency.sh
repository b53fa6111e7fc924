#!/bin/bash
# §3 of issue 6, inside the lab's systemd guest (bench/lab/run.sh → lab/lab.sh systemd -- this):
# the real daemon (release build) under systemd on a real kernel, rearm_delay = 0s. Installs it
# with the lab's own set-up, then replaces its configuration with the benchmark's and measures.
set -euo pipefail
here=$(dirname "$0")
repo=$(cd "$here/../.." && pwd)
LAB_TEST_BUILD=${LAB_TEST_BUILD:-.build-bench/release} LAB_TEST_WATCHDOG= "$repo/lab/tests/daemon_setup.sh" >/dev/null
read -r nic disk <<< "$LAB_VFIO_DEVICES"
cat > /etc/vfio-powerd/vfio-powerd.conf <<CONF
[defaults]
source = "own"
mode = "oneshot"
rearm_delay = "0s"
flap_max_wakes = 1000
flap_window = "1s"
flap_backoff_max = "1s"
CONF
cat > /etc/vfio-powerd/devices.d/10-lab.conf <<CONF
[[device]]
address = "$nic"
name = "nic"
CONF
exec /usr/bin/python3 "$here/kernel_latency.py"
