#!/bin/bash
# The lab's VM test, as the systemd-mode guest runs it: install vfio-powerd as daemon_setup.sh
# does, make the NIC a `vmm` device, then play a VM holding it (vmm_under_systemd.py).
set -euo pipefail
here=$(dirname "$0")
LAB_TEST_WATCHDOG=${LAB_TEST_WATCHDOG:-10s} "$here/daemon_setup.sh"
read -r nic _ <<< "$LAB_VFIO_DEVICES"
export LAB_TEST_GUEST_D3_INTERVAL_MS=${LAB_TEST_GUEST_D3_INTERVAL_MS:-500}
export LAB_TEST_REARM=${LAB_TEST_REARM:-1}
cat > /etc/vfio-powerd/vfio-powerd.conf <<CONF
# The lab's VM test: sample quickly, re-arm quickly.
[daemon]
guest_d3_interval = "${LAB_TEST_GUEST_D3_INTERVAL_MS}ms"

[defaults]
rearm_delay = "${LAB_TEST_REARM}s"
CONF
cat > /etc/vfio-powerd/devices.d/10-lab.conf <<CONF
# The e1000e belongs to VMs (source = "vmm", the default).
[[device]]
address = "$nic"
name = "nic"
CONF
chmod 644 /etc/vfio-powerd/vfio-powerd.conf /etc/vfio-powerd/devices.d/10-lab.conf
exec /usr/bin/python3 "$here/vmm_under_systemd.py"
