#!/usr/bin/env python3
"""vfio-powerd with a device a VM holds: the installed unit under real systemd and journald,
on a real kernel, and Debian's own unmodified qemu-system-x86_64 as the VMM holding the lab's
e1000e through vfio-pci. The test plays the VM's guest over QEMU's qtest protocol
(qtest_guest.py): PMCSR writes through configuration cycles, BAR reads with readl.

Runs inside the guest (lab/lab.sh systemd -- lab/tests/vmm.sh) after vmm.sh installed a
configuration with the NIC as a `vmm` device. Every check asserts what sysfs, the journal,
vfio-powerctl and QEMU say; the closing line is "N passed, N failed".
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from qtest_guest import QemuGuest, QemuError  # noqa: E402
from tap import check, failed, finish, summary, wait  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NIC = os.environ["LAB_VFIO_DEVICES"].split()[0]
UNIT = "vfio-powerd"
POWERCTL = "/usr/local/bin/vfio-powerctl"
INTERVAL = int(os.environ.get("LAB_TEST_GUEST_D3_INTERVAL_MS", "500")) / 1000
REARM = float(os.environ.get("LAB_TEST_REARM", "1"))
# How long the daemon may take to notice an open or an exit. It is quick on a host; in the
# lab's TCG guest on a busy CI machine one look at /proc took seconds. A deadline, not a sleep:
# a passing check returns as soon as it sees the event.
NOTICE = 20
NEW_KERNEL = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) >= (6, 18)

with open(os.path.join(REPO, "Sources/PowerDaemon/DaemonEvent.swift")) as f:
    MESSAGE_ID = dict(re.findall(r'case \.(\w+): return "([0-9a-f]{32})"', f.read()))

def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def sysfs(attribute):
    with open(f"/sys/bus/pci/devices/{NIC}/{attribute}") as f:
        return f.read().strip()


def runtime_status():
    return sysfs("power/runtime_status")


def journal(event=None):
    out = run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    entries = [e for e in entries if e.get("_COMM") == "vfio-powerd" or e.get("SYSLOG_IDENTIFIER") == "vfio-powerd"]
    if event:
        entries = [e for e in entries if e.get("MESSAGE_ID") == MESSAGE_ID[event] and e.get("VFIO_DEVICE") == NIC]
    return entries


def count(event):
    return len(journal(event))


def device():
    result = run(POWERCTL, "show", NIC, "--json")
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"error": result.stderr}


def dump_and_exit(qemus=()):
    for q in qemus:
        q.close()
    print("--- systemctl status", flush=True)
    print(run("systemctl", "status", "--no-pager", "-l", UNIT).stdout)
    print("--- journalctl -u vfio-powerd", flush=True)
    print(run("journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic").stdout)
    print(summary())
    sys.exit(1)


def guest_wakes(q):
    """The guest takes the device back: D0, then memory decode and a BAR read."""
    q.set_power_state("D0")
    q.enable_bar0()
    return q.readl(0xe0000000)


print(f"# kernel {os.uname().release}, vmm device nic={NIC}, guest_d3_interval={INTERVAL}s, rearm_delay={REARM}s",
      flush=True)
start = run("systemctl", "start", UNIT)
if not check("systemctl start vfio-powerd succeeds", start.returncode == 0, start.stderr):
    dump_and_exit()

# --- no VM: the daemon touches nothing --------------------------------------------------
check("no VM holds nic: the daemon shows it idle", wait(lambda: device().get("state") == "idle"), json.dumps(device()))
check("an idle device is left to the kernel, which keeps it suspended",
      runtime_status() == "suspended" and sysfs("power_state") == "D3hot", runtime_status())
check("the daemon holds no file of it: no VFIO node open in vfio-powerd",
      not any("vfio" in os.readlink(f"/proc/{pid}/fd/{fd}") for pid in [run("systemctl", "show", "-p", "MainPID", "--value", UNIT).stdout.strip()]
              for fd in os.listdir(f"/proc/{pid}/fd")))

# --- a VM starts: adopted ---------------------------------------------------------------
spawned = time.monotonic()  # CLOCK_MONOTONIC, the journal's __MONOTONIC_TIMESTAMP clock
q = QemuGuest(NIC)
answered = time.monotonic()
print(f"# QEMU spawned at {spawned:.3f}, answered at {answered:.3f} (monotonic)", flush=True)
adopted = wait(lambda: count("adopted") == 1, timeout=NOTICE)
# Timed by the journal's own stamp: reading the journal takes a while under TCG.
adopted_after = int(journal("adopted")[0]["__MONOTONIC_TIMESTAMP"]) / 1e6 - answered if adopted else float("inf")
# The target is 2 s. Under TCG everything in the guest runs many times slower than on
# hardware, and a starting QEMU takes most of the guest's CPU: measured here, adoption came
# 0.8 to 3.1 s after QEMU answered, slower the longer QEMU itself took to start (3.6 to 7.5 s,
# where the docs measured 2 to 4 s). The bound grows with that measure of the guest's load.
bound = 2.0 + 0.25 * (answered - spawned)
if not check(f"QEMU's device is adopted within {bound:.1f} s of QEMU answering (2 s, plus a quarter of QEMU's own "
             f"start time of {answered - spawned:.1f} s under TCG)",
             adopted and adopted_after <= bound, f"{adopted_after:.2f}s, {json.dumps(journal('adopted'))}"):
    dump_and_exit([q])
for e in journal():
    if "looked for its VMM" in e.get("MESSAGE", "") or "group node was opened" in e.get("MESSAGE", ""):
        print(f"# {int(e['__MONOTONIC_TIMESTAMP']) / 1e6:.3f} {e['MESSAGE']}", flush=True)
entry = journal("adopted")[0]
check("journal: adopted names QEMU's pid and executable",
      entry.get("VFIO_VMM_PID") == str(q.pid) and entry.get("VFIO_VMM_EXE", "").endswith("qemu-system-x86_64"), json.dumps(entry))
how = "the kernel names the device in its fdinfo" if NEW_KERNEL else "its only VFIO device file"
check(f"{'7.x: found by fdinfo' if NEW_KERNEL else '6.1: found by the unambiguous rule'}", how in entry.get("MESSAGE", ""),
      entry.get("MESSAGE"))
d = device()
check("vfio-powerctl show: source vmm, held by QEMU, in use by the guest",
      d.get("source") == "vmm" and d.get("holderPid") == q.pid and d.get("state") == "guest_active", json.dumps(d))

# --- the guest uses the device (D0): never armed ----------------------------------------
states = set()
deadline = time.monotonic() + 3 * INTERVAL + 0.5
while time.monotonic() < deadline:
    states.add(runtime_status())
    time.sleep(0.02)
check(f"guest in D0 for {3 * INTERVAL + 0.5:.1f}s (3 intervals): not armed, the device stays active",
      states == {"active"} and count("armedInGuestD3") == 0, f"{states}, arms: {count('armedInGuestD3')}")

# --- the guest puts the device into D3hot: armed -----------------------------------------
q.set_power_state("D3hot")
t0 = time.monotonic()
suspended = wait(lambda: runtime_status() == "suspended", timeout=INTERVAL + NOTICE)
took = time.monotonic() - t0
check("guest D3hot: armed and runtime-suspended within the interval + 1 s",
      suspended and took <= INTERVAL + 1.0 and count("armedInGuestD3") == 1, f"{took:.2f}s, {runtime_status()}")
check("vfio-powerctl show: low power, the kernel says suspended",
      wait(lambda: device().get("state") == "low_power") and device().get("runtimeStatus") == "suspended", json.dumps(device()))

# --- the guest writes D0: the wake is seen and the VM carries on -------------------------
value = guest_wakes(q)
check("guest D0: the daemon logs the wake", wait(lambda: count("woke") == 1), json.dumps(journal("woke")))
check("the device is active in D0", runtime_status() == "active" and sysfs("power_state") == "D0", runtime_status())
check("the guest's BAR read returns the device's value and QEMU lives", q.alive() and value not in (None, 0xffffffff),
      f"{value}, alive={q.alive()}")

# --- and again: D3hot after the re-arm delay is armed once more --------------------------
time.sleep(0.2)
q.set_power_state("D3hot")
check("guest D3hot again: armed again after the re-arm delay",
      wait(lambda: count("armedInGuestD3") == 2 and runtime_status() == "suspended", timeout=REARM + INTERVAL + NOTICE),
      f"{count('armedInGuestD3')}, {runtime_status()}")

# --- the daemon SIGKILLed while armed: nothing is stuck ---------------------------------
kill = run("systemctl", "kill", "--signal=SIGKILL", UNIT)
check("daemon SIGKILLed while the device is armed", kill.returncode == 0, kill.stderr)
check("the device stays suspended without the daemon", runtime_status() == "suspended", runtime_status())
wakes_before = count("woke")
value = guest_wakes(q)
check("the guest's D0 write still wakes it; its BAR read works and QEMU lives",
      runtime_status() == "active" and q.alive() and value not in (None, 0xffffffff), f"{runtime_status()}, {value}")
check("systemd restarts the daemon (Restart=on-failure) and it adopts the running VM again",
      wait(lambda: count("adopted") == 2, timeout=NOTICE), json.dumps(journal("adopted")[-1:]))
check("the wake while the daemon was down is counted (its eventfd came back from the fd store)",
      wait(lambda: device().get("wakes") == 1), json.dumps(device()))

# --- a restart while armed wakes nothing --------------------------------------------------
q.set_power_state("D3hot")
check("armed again in guest D3hot", wait(lambda: count("armedInGuestD3") == 3 and runtime_status() == "suspended",
                                          timeout=REARM + INTERVAL + NOTICE), runtime_status())
before = int(sysfs("power/runtime_suspended_time"))
active_before = int(sysfs("power/runtime_active_time"))
restart = run("systemctl", "restart", UNIT)
check("systemctl restart succeeds", restart.returncode == 0, restart.stderr)
check("the restarted daemon adopts the VM again", wait(lambda: count("adopted") == 3, timeout=NOTICE))
time.sleep(2 * INTERVAL)
after = int(sysfs("power/runtime_suspended_time"))
check("after the restart the device did not wake: still suspended, runtime_active_time unchanged, suspended time grew",
      runtime_status() == "suspended" and int(sysfs("power/runtime_active_time")) == active_before and after > before,
      f"{runtime_status()}, active {active_before}->{sysfs('power/runtime_active_time')}, suspended {before}->{after}")
check("the restarted daemon knows it is still armed (fd store), without an ioctl",
      wait(lambda: device().get("state") == "low_power")
      and any("from before the daemon restarted" in e.get("MESSAGE", "") for e in journal("armedInGuestD3")),
      json.dumps(device()))
woke_before = count("woke")
value = guest_wakes(q)
check("the guest wakes it after the restart, the new run sees the wake, and QEMU lives",
      q.alive() and runtime_status() == "active" and wait(lambda: count("woke") == woke_before + 1), runtime_status())

# --- QEMU is killed: released, and the next VM starts --------------------------------------
released_before = count("vmmReleased")
t0 = time.monotonic()
q.kill()
released = wait(lambda: count("vmmReleased") == released_before + 1, timeout=NOTICE)
# Timed by the journal's stamp (CLOCK_MONOTONIC), not by how long reading the journal takes.
took = int(journal("vmmReleased")[-1]["__MONOTONIC_TIMESTAMP"]) / 1e6 - t0 if released else float("inf")
check("QEMU killed: the duplicate is released within 1 s", released and took <= 1.0, f"{took:.2f}s")
try:
    q2 = QemuGuest(NIC)
    check("a new QEMU starts on the device", q2.alive())
except QemuError as e:
    check("a new QEMU starts on the device", False, str(e))
    dump_and_exit()
check("and is adopted", wait(lambda: count("adopted") == 4, timeout=NOTICE) and device().get("holderPid") == q2.pid,
      json.dumps(device()))
q2.close()
check("QEMU stopped: released, the device idle again", wait(lambda: device().get("state") == "idle", timeout=NOTICE), json.dumps(device()))

# --- a holder that is not an allowed VMM is left alone ------------------------------------
other = "/run/lab-not-a-vmm"
shutil.copy("/usr/bin/qemu-system-x86_64", other)
os.chmod(other, 0o755)
# A copied binary finds its firmware only where -L says.
q3 = QemuGuest(NIC, qemu=other, extra_args=("-L", "/usr/share/seabios", "-L", "/usr/share/qemu"))
check("a holder whose executable is not in vmm_executables is refused and named",
      wait(lambda: count("adoptionRefused") == 1, timeout=NOTICE) and "lab-not-a-vmm" in journal("adoptionRefused")[0].get("MESSAGE", ""),
      json.dumps(journal("adoptionRefused")))
d = device()
check("vfio-powerctl show: not adopted, held by it", d.get("state") == "not_adopted" and d.get("holderPid") == q3.pid, json.dumps(d))
q3.set_power_state("D3hot")
states = set()
deadline = time.monotonic() + 3 * INTERVAL
while time.monotonic() < deadline:
    states.add(runtime_status())
    time.sleep(0.02)
check("its guest's D3hot is not armed: the device stays active", states == {"active"}, f"{states}")
q3.close()
os.unlink(other)
check("it exited: the device is idle again", wait(lambda: device().get("state") == "idle", timeout=NOTICE), json.dumps(device()))

# --- a launcher that opened the device itself hands its file over ------------------------
launcher_bin = "/run/handoff-launcher"
build = run("cc", "-O2", "-Wall", "-o", launcher_bin, os.path.join(os.path.dirname(__file__), "handoff_launcher.c"))
check("the test launcher builds against <linux/vfio.h>", build.returncode == 0, build.stderr)
launcher = subprocess.Popen([launcher_bin, "/run/vfio-powerd/io.vfiopowerd.Manager", NIC], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
reply = json.loads(launcher.stdout.readline().strip().rstrip("\0") or "{}")


def launcher_says(command):
    launcher.stdin.write(command + "\n")
    launcher.stdin.flush()
    return launcher.stdout.readline().strip()


if NEW_KERNEL:
    check("handoff: the daemon takes the launcher's device file (fdinfo names the device)",
          reply.get("parameters", {}).get("device", {}).get("holderPid") == launcher.pid, json.dumps(reply))
    check("journal: handoff received", wait(lambda: count("handoffReceived") == 1), json.dumps(journal("handoffReceived")))
    launcher_says("d3hot")
    check("the launcher's guest-style D3hot write is armed like an adopted device's",
          wait(lambda: runtime_status() == "suspended", timeout=INTERVAL + NOTICE), runtime_status())
    launcher_says("d0")
    check("its D0 write wakes the device", wait(lambda: runtime_status() == "active") and sysfs("power_state") == "D0",
          runtime_status())
    released_before = count("vmmReleased")
    launcher_says("exit")
    launcher.wait(timeout=10)
    check("the launcher exits: its file is released and the device is idle",
          wait(lambda: count("vmmReleased") == released_before + 1 and device().get("state") == "idle", timeout=NOTICE),
          json.dumps(device()))
else:
    reason = reply.get("parameters", {}).get("reason", "")
    check("6.1 cannot say which device a VFIO file is: the handoff is refused, with the reason",
          reply.get("error") == "io.vfiopowerd.Manager.HandoffRefused" and "cannot be checked" in reason, json.dumps(reply))
    launcher_says("exit")
    launcher.wait(timeout=10)
    # The launcher's open of the group starts looks for its VMM that go on for up to 5 s
    # (look_again), each of them seconds long under TCG: the device is idle once they end.
    check("the device stays idle", wait(lambda: device().get("state") == "idle", timeout=15), json.dumps(device()))

# --- check-config refuses what would kill a VM ---------------------------------------------
for key, value, words in (("trigger", '"immediate"', "kills the VM"), ("mode", '"reentrant"', "BARs blocked")):
    path = "/etc/vfio-powerd/devices.d/90-bad.conf"
    with open(path, "w") as f:
        f.write(f'[[device]]\naddress = "0000:00:1f.7"\n{key} = {value}\n')
    os.chmod(path, 0o644)
    result = run("/usr/local/sbin/vfio-powerd", "--check-config")
    os.unlink(path)
    check(f"check-config refuses {key} = {value} for a vmm device, with the reason",
          result.returncode == 78 and "90-bad.conf:3:" in result.stdout + result.stderr and words in result.stdout + result.stderr,
          f"rc={result.returncode}\n{result.stdout}{result.stderr}")

stop = run("systemctl", "stop", UNIT)
check("systemctl stop succeeds", stop.returncode == 0, stop.stderr)
if failed():
    dump_and_exit()
finish()
