#!/bin/bash
# The demo: a VM holds a passthrough device; its guest puts the device into D3hot; vfio-powerd
# arms low power; the guest takes the device back. Runs inside the lab's systemd guest (make
# demo → lab/lab.sh systemd -- lab/tests/vmm_demo.sh), with Debian's own QEMU as the VMM and
# the demo playing its guest over qtest (qtest_guest.py). The own-device demo follows.
set -euo pipefail
here=$(dirname "$0")
read -r nic _ <<< "$LAB_VFIO_DEVICES"
LAB_TEST_REARM=2 "$here/vmm_setup.sh" >/dev/null
PYTHONPATH=$here exec /usr/bin/python3 - "$nic" <<'PY'
import subprocess, sys, time
from qtest_guest import QemuGuest

nic = sys.argv[1]
bold = lambda text: print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(*cmd):
    print(f"\033[2m$ {' '.join(cmd)}\033[0m", flush=True)
    subprocess.run(cmd)


def power():
    read = lambda a: open(f"/sys/bus/pci/devices/{nic}/{a}").read().strip()
    print(f"  {nic}  runtime_status={read('power/runtime_status'):<9} power_state={read('power_state'):<6} "
          f"suspended_time={read('power/runtime_suspended_time')}ms", flush=True)


bold("No VM holds the NIC: the kernel keeps it suspended by itself; vfio-powerd touches nothing")
run("systemctl", "start", "vfio-powerd")
power()
run("vfio-powerctl", "status")

bold("A VM starts: Debian's qemu-system-x86_64 opens the NIC (vfio-pci); vfio-powerd adopts QEMU's device file")
q = QemuGuest(nic)
time.sleep(1.5)
power()
print("  (QEMU holds it open, so the kernel keeps it awake, even when the guest is not using it)")
run("vfio-powerctl", "status")

bold("The guest's driver puts the NIC into D3hot (a PMCSR write through QEMU)")
q.set_power_state("D3hot")
power()
print("  ...the guest no longer uses it, but QEMU's open file keeps it awake. vfio-powerd samples power_state:")
time.sleep(1.5)
power()
run("vfio-powerctl", "show", nic)

bold("The guest wants the NIC back: it writes D0; the device wakes, and its registers answer")
q.set_power_state("D0")
q.enable_bar0()
print(f"  guest readl(BAR0) = {q.readl(0xe0000000):#010x}; QEMU alive: {q.alive()}", flush=True)
time.sleep(0.5)
power()

bold("The VM stops: vfio-powerd lets go at once, so the next VM can start on the device")
q.close()
time.sleep(0.5)
power()
run("systemctl", "status", "--no-pager", "-l", "vfio-powerd")
bold("journalctl -u vfio-powerd")
run("journalctl", "-u", "vfio-powerd", "--no-pager", "-o", "cat")
run("systemctl", "stop", "vfio-powerd")
PY
