#!/bin/bash
# Installs the project's vfio-powerd into the lab guest the way `make install` would put it
# on a host: the unit (its ExecStart pointed at the build in the shared tree), the journal
# catalog, and a configuration in /etc/vfio-powerd for the lab's two devices. Runs inside
# the guest under systemd (lab/lab.sh systemd); writes land in the guest's tmpfs overlay.
#
# Environment: LAB_TEST_BUILD (default .build/debug), LAB_TEST_REARM (default 2s),
# LAB_TEST_WATCHDOG (WatchdogSec for the lab, default: the unit's own).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=$repo/${LAB_TEST_BUILD:-.build/debug}
read -r nic disk <<< "$LAB_VFIO_DEVICES"

# Installed like `make install` would (into the guest's tmpfs overlay), not run from the build
# tree: the unit's PrivateTmp= hides a checkout under /tmp from the service.
install -Dm755 "$build/vfio-powerd" /usr/local/sbin/vfio-powerd
install -Dm755 "$build/vfio-powerctl" /usr/local/bin/vfio-powerctl
install -Dm644 "$repo/systemd/vfio-powerd.service" /etc/systemd/system/vfio-powerd.service
install -Dm644 "$repo/systemd/vfio-powerd.socket" /etc/systemd/system/vfio-powerd.socket
mkdir -p /etc/systemd/system/vfio-powerd.service.d
{
	echo "[Service]"
	echo "ExecStart="
	echo "ExecStart=/usr/local/sbin/vfio-powerd${LAB_TEST_LOG_LEVEL:+ --log-level $LAB_TEST_LOG_LEVEL}"
	[ -n "${LAB_TEST_WATCHDOG:-}" ] && echo "WatchdogSec=$LAB_TEST_WATCHDOG"
} > /etc/systemd/system/vfio-powerd.service.d/lab.conf
# The Prometheus exporter and its units, its ExecStart pointed at the installed copy.
install -Dm755 "$build/vfio-powerd-exporter" /usr/local/sbin/vfio-powerd-exporter
install -Dm644 "$repo/systemd/vfio-powerd-exporter.service" /etc/systemd/system/vfio-powerd-exporter.service
install -Dm644 "$repo/systemd/vfio-powerd-exporter.socket" /etc/systemd/system/vfio-powerd-exporter.socket
mkdir -p /etc/systemd/system/vfio-powerd-exporter.service.d
printf '[Service]\nExecStart=\nExecStart=/usr/local/sbin/vfio-powerd-exporter\n' \
	> /etc/systemd/system/vfio-powerd-exporter.service.d/lab.conf
install -Dm644 "$repo/systemd/vfio-powerd.catalog" /usr/lib/systemd/catalog/vfio-powerd.catalog
journalctl --update-catalog

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
systemctl daemon-reload
