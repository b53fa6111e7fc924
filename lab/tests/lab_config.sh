#!/bin/bash
# The lab's daemon configuration in /etc/vfio-powerd: short delays, and the lab's two devices
# (the e1000e by address, the NVMe controller by its IDs), both held by the daemon itself.
# Shared by daemon_setup.sh (the build tree's daemon) and package.sh (the .deb's).
#
# Environment: LAB_VFIO_DEVICES (the lab's), LAB_TEST_REARM (default 2s).
set -euo pipefail
read -r nic disk <<< "$LAB_VFIO_DEVICES"

install -dm755 /etc/vfio-powerd /etc/vfio-powerd/devices.d
cat > /etc/vfio-powerd/vfio-powerd.conf <<CONF
# The lab's daemon settings: short delays so a test sees every transition quickly.
[daemon]
rescan_interval = "1s"

[defaults]
# The lab's first daemon test is about devices the daemon holds itself.
source = "own"
mode = "oneshot"
rearm_delay = "${LAB_TEST_REARM:-2s}"
flap_max_wakes = 3
flap_window = "1m"
CONF
cat > /etc/vfio-powerd/devices.d/10-lab.conf <<CONF
# The e1000e by address.
[[device]]
address = "$nic"
name = "nic"

# QEMU's NVMe controller by its IDs, kept out of D3cold.
[[device]]
name = "disk"
match = { vendor = "1b36", device = "0010" }
d3cold = "forbid"
CONF
chmod 644 /etc/vfio-powerd/vfio-powerd.conf /etc/vfio-powerd/devices.d/10-lab.conf
