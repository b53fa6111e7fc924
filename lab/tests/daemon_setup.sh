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

"$repo/lab/tests/lab_config.sh"
systemctl daemon-reload
