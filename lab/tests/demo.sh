#!/bin/bash
# The demo: vfio-powerd under systemd on a real kernel, as an operator meets it.
# Runs inside the lab's systemd guest (make demo → lab/lab.sh systemd -- lab/tests/demo.sh).
set -euo pipefail
here=$(dirname "$0")
repo=$(cd "$here/../.." && pwd)
read -r nic disk <<< "$LAB_VFIO_DEVICES"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
power() {
	for d in "$nic" "$disk"; do
		printf '  %s  runtime_status=%-9s power_state=%-6s suspended_time=%sms\n' "$d" \
			"$(cat /sys/bus/pci/devices/$d/power/runtime_status)" "$(cat /sys/bus/pci/devices/$d/power_state)" \
			"$(cat /sys/bus/pci/devices/$d/power/runtime_suspended_time)"
	done
}
# A device the daemon holds can't be opened by anyone else; a write to its d3cold_allowed
# makes the kernel resume it, just as a VM's access would.
touch_device() {
	local f=/sys/bus/pci/devices/$1/d3cold_allowed value
	value=$(cat "$f")
	echo "$value" > "$f"
}

say "A real kernel ($(uname -r)) with two emulated devices bound to vfio-pci"
for d in "$nic" "$disk"; do
	s=/sys/bus/pci/devices/$d
	printf '  %s  %s:%s class %s  driver %s  iommu_group %s\n' "$d" "$(cut -c3- $s/vendor)" "$(cut -c3- $s/device)" \
		"$(cat $s/class)" "$(basename "$(readlink $s/driver)")" "$(basename "$(readlink $s/iommu_group)")"
done

LAB_TEST_REARM=3s "$here/daemon_setup.sh"
# The Prometheus exporter (its unit's SupplementaryGroups= is vfio-powerd) reads the daemon
# as a member of the control socket's group: socket_group, and the same group on the socket
# systemd makes, as README "Metrics" says.
groupadd -f vfio-powerd
sed -i 's/^\[daemon\]$/[daemon]\nsocket_group = "vfio-powerd"/' /etc/vfio-powerd/vfio-powerd.conf
mkdir -p /etc/systemd/system/vfio-powerd.socket.d
printf '[Socket]\nSocketGroup=vfio-powerd\n' > /etc/systemd/system/vfio-powerd.socket.d/group.conf
systemctl daemon-reload
say "The configuration (/etc/vfio-powerd)"
run cat /etc/vfio-powerd/vfio-powerd.conf /etc/vfio-powerd/devices.d/10-lab.conf
say "Checking it before starting"
run "$repo/${LAB_TEST_BUILD:-.build/debug}/vfio-powerd" --check-config | sed -n '/^Devices:/,$p'

say "systemctl start vfio-powerd"
run systemctl start vfio-powerd
sleep 0.5
power

say "Something touches the NIC (as a VM would): it wakes, stays awake for rearm_delay (3s), then is armed again"
touch_device "$nic"
sleep 0.3
power
sleep 3.5
power

say "Two more wakes"
for _ in 1 2; do touch_device "$nic"; sleep 4; done
power

say "vfio-powerctl status: what each device is doing"
run vfio-powerctl status

say "vfio-powerctl wake $nic --for 5s: out of low power for maintenance, then the daemon takes it back"
run vfio-powerctl wake "$nic" --for 5s
power
sleep 5.5
power
run vfio-powerctl show "$nic"

say "systemctl status vfio-powerd"
run systemctl status vfio-powerd --no-pager -l || true

say "journalctl -u vfio-powerd"
run journalctl -u vfio-powerd --no-pager

say "One wake, with the fields to filter on (journalctl -u vfio-powerd VFIO_DEVICE=$nic -o verbose)"
journalctl -u vfio-powerd "VFIO_DEVICE=$nic" MESSAGE_ID=26b0b23d85094099b2b7dade736c3580 -o verbose --no-pager -n 1 \
	| grep -E '^ +(MESSAGE|MESSAGE_ID|PRIORITY|VFIO_[A-Z_]+)=|^[A-Z][a-z]{2} '

say "What it means (journalctl -x, from the installed catalog)"
journalctl -u vfio-powerd -x --no-pager -n 1 MESSAGE_ID=26b0b23d85094099b2b7dade736c3580 | sed -n '2,12p'

say "systemctl stop vfio-powerd: every device is left out of low power, closed, free for a VM"
run systemctl stop vfio-powerd
run systemctl show -p Result -p ExecMainStatus vfio-powerd
run journalctl -u vfio-powerd --no-pager -o cat -n 2

say "The fleet's view: vfio-powerd again, and Prometheus' text from vfio-powerd-exporter (socket-activated, port 9843)"
run systemctl start vfio-powerd vfio-powerd-exporter.socket
sleep 1
run vfio-powerctl status
printf '\033[2m$ %s\033[0m\n' "curl -s localhost:9843/metrics | grep vfio_powerd"
curl -s localhost:9843/metrics | grep vfio_powerd
