#!/bin/bash
# Installs vfio-powerd as daemon_setup.sh does, with the NIC as a `vmm` device (the default
# source) and short intervals: the setting of the lab's VM test (vmm.sh) and demo (vmm_demo.sh).
#
# Environment: LAB_TEST_GUEST_D3_INTERVAL_MS (default 500), LAB_TEST_REARM (seconds, default 1),
# and daemon_setup.sh's.
set -euo pipefail
here=$(dirname "$0")
LAB_TEST_WATCHDOG=${LAB_TEST_WATCHDOG:-10s} "$here/daemon_setup.sh"
read -r nic _ <<< "$LAB_VFIO_DEVICES"
cat > /etc/vfio-powerd/vfio-powerd.conf <<CONF
# The lab's VMs: sample quickly, re-arm quickly.
[daemon]
guest_d3_interval = "${LAB_TEST_GUEST_D3_INTERVAL_MS:-500}ms"

[defaults]
rearm_delay = "${LAB_TEST_REARM:-1}s"
CONF
cat > /etc/vfio-powerd/devices.d/10-lab.conf <<CONF
# The e1000e belongs to VMs (source = "vmm", the default).
[[device]]
address = "$nic"
name = "nic"
CONF
chmod 644 /etc/vfio-powerd/vfio-powerd.conf /etc/vfio-powerd/devices.d/10-lab.conf
