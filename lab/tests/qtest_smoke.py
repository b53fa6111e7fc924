#!/usr/bin/python3
"""qtest_guest.QemuGuest on a real kernel, without the daemon: Debian's QEMU holds the lab's
e1000e through vfio-pci and the test plays its guest.

Runs inside the lab guest, on each kernel:

    lab/lab.sh run --timeout 300 -- /usr/bin/python3 lab/tests/qtest_smoke.py
    LAB_KERNEL=newest lab/lab.sh run --timeout 300 -- /usr/bin/python3 lab/tests/qtest_smoke.py

Every check asserts what the host's sysfs and /proc say, or what the guest reads through
QEMU; the closing line is "N passed, N failed" (exit 1 on a failure).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qtest_guest import QemuError, QemuGuest, holders, host_sysfs, iommu_group, wait_for  # noqa: E402
from tap import check, finish  # noqa: E402

NIC = os.environ["LAB_VFIO_DEVICES"].split()[0]
KERNEL = os.uname().release

def host(attribute):
    return host_sysfs(NIC, attribute)


def both():
    return f"power_state={host('power_state')} runtime_status={host('power/runtime_status')}"


GROUP = f"/dev/vfio/{iommu_group(NIC)}"
print(f"# kernel {KERNEL}, device {NIC} ({GROUP})", flush=True)

# --- nobody holds it ------------------------------------------------------------------------
check("before QEMU the unheld device is runtime-suspended",
      wait_for(lambda: host("power/runtime_status") == "suspended", 10), both())
check("and nobody has its group open", holders(GROUP) == [], str(holders(GROUP)))

# --- QEMU holds it ----------------------------------------------------------------------------
try:
    guest = QemuGuest(NIC)
except QemuError as e:
    check("QEMU starts on the device and answers over qtest", False, str(e))
    finish()
print(f"# QEMU pid {guest.pid} answered after {guest.start_seconds:.2f} s", flush=True)
check("QEMU starts on the device and answers over qtest", guest.alive())
check(f"QEMU (pid {guest.pid}) is the one holding {GROUP} (found in /proc/*/fd)",
      holders(GROUP) == [guest.pid], f"holders {holders(GROUP)}")
fds = guest.fds()
check("it also holds the container and the device fd",
      "/dev/vfio/vfio" in fds.values() and guest.device_fd() is not None, str(sorted(fds.values())))
check("the held device is awake on the host", host("power/runtime_status") == "active", both())
vendor, device = guest.vendor_device()
check("the guest reads vendor:device 8086:10d3 through config cycles",
      (vendor, device) == (0x8086, 0x10d3), f"{vendor:04x}:{device:04x}")
pm = guest.pm_capability()
check("the guest finds the PM capability (0xc8 on the e1000e)", pm == 0xc8, f"{pm:#x}")
check("the guest sees the device in D0", guest.power_state() == "D0", f"PMCSR {guest.pmcsr():#06x}")

# --- a second VMM can not start while the first holds the group ---------------------------
t0 = time.monotonic()
try:
    QemuGuest(NIC).close()
    check("a second QEMU on the held device fails", False, "it started")
except QemuError as e:
    check("a second QEMU on the held device fails with 'Device or resource busy' in the error",
          "Device or resource busy" in str(e), str(e))
print(f"# the second QEMU failed after {time.monotonic() - t0:.2f} s", flush=True)
check("the first QEMU still answers", guest.vendor_device() == (0x8086, 0x10d3) and guest.alive())

# --- the guest's power states reach the host ----------------------------------------------
t0 = time.monotonic()
guest.set_power_state("D3hot")
reached = guest.wait_power_state("D3hot", 5)
print(f"# host power_state D3hot {time.monotonic() - t0:.3f} s after the guest's write started", flush=True)
check("after the guest writes D3hot the host's power_state is D3hot", reached, both())
time.sleep(0.5)
check("but runtime_status stays active (vfio holds a runtime-PM reference while QEMU has it open)",
      host("power/runtime_status") == "active", both())
check("the guest reads D3hot back", guest.power_state() == "D3hot", f"PMCSR {guest.pmcsr():#06x}")

t0 = time.monotonic()
guest.set_power_state("D0")
reached = guest.wait_power_state("D0", 5)
print(f"# host power_state D0 {time.monotonic() - t0:.3f} s after the guest's write started", flush=True)
check("after the guest writes D0 the host's power_state is D0", reached, both())
check("the guest reads D0 back", guest.power_state() == "D0", f"PMCSR {guest.pmcsr():#06x}")

bar = guest.enable_bar0()
check("BAR0 is programmed and memory decode is on",
      guest.bar0() == bar and guest.config_read(0x04, 2) & 0x2, f"BAR0 {guest.bar0():#x}")
try:
    value = guest.readl(bar)
    check(f"readl(BAR0) returns ({value:#010x}, e1000e CTRL) and QEMU lives", guest.alive(), guest.stderr_text())
except QemuError as e:
    check("readl(BAR0) returns and QEMU lives", False, str(e))
    finish()

# --- what /proc says about QEMU's device fd -------------------------------------------------
info = guest.fdinfo()
syspath = info.get("vfio-device-syspath")
print(f"# fdinfo of QEMU's device fd {guest.device_fd()}: vfio-device-syspath "
      + (f"= {syspath}" if syspath else "absent"), flush=True)
if KERNEL.startswith("6.1."):
    check("6.1: fdinfo of the device fd has no vfio-device-syspath line", syspath is None, str(info))
else:
    check(f"{KERNEL}: fdinfo of the device fd names the device in vfio-device-syspath",
          syspath is not None and syspath.endswith("/" + NIC), str(info))

# --- kill it; the device is free for the next VMM --------------------------------------------
pid = guest.pid
t0 = time.monotonic()
status = guest.kill()
print(f"# SIGKILL to reaped in {time.monotonic() - t0:.3f} s", flush=True)
check("QEMU is killed (SIGKILL) and gone", status == -9 and not os.path.exists(f"/proc/{pid}"), f"status {status}")
check("nobody holds the group any more", holders(GROUP) == [], str(holders(GROUP)))
t0 = time.monotonic()
check("the device runtime-suspends again", wait_for(lambda: host("power/runtime_status") == "suspended", 10), both())
print(f"# suspended {time.monotonic() - t0:.3f} s after QEMU was reaped; {both()}", flush=True)
guest.close()

try:
    with QemuGuest(NIC) as second:
        check("a second QemuGuest starts on the same device",
              second.alive() and second.vendor_device() == (0x8086, 0x10d3) and holders(GROUP) == [second.pid])
        print(f"# second QEMU pid {second.pid} answered after {second.start_seconds:.2f} s", flush=True)
        t0 = time.monotonic()
    print(f"# close() (SIGTERM) took {time.monotonic() - t0:.3f} s, status {second.returncode}", flush=True)
    check("close() ends it with SIGTERM", second.returncode in (0, -15) and holders(GROUP) == [],
          f"status {second.returncode}, holders {holders(GROUP)}")
except QemuError as e:
    check("a second QemuGuest starts on the same device", False, str(e))

finish()
