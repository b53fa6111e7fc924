#!/usr/bin/env python3
"""Issue 6 §3 in the lab guest: through the real daemon under systemd, on a real kernel (TCG).

- access → wake seen: from a write to the NIC's d3cold_allowed (the kernel resumes the device,
  as for a VMM's access, and the one-shot eventfd fires) to the daemon's `woke` journal entry
  (its __MONOTONIC_TIMESTAMP: journald's reception, an upper bound for "eventfd readable").
- access → suspended again: from the same write to runtime_status reading "suspended" after
  it was seen awake (polled every 1 ms): the kernel's resume, the wake, the daemon's re-arm
  (rearm_delay = 0s) and the kernel's runtime suspend, all measured by this script.
- rearmed entry → suspended: journald's reception of the daemon's `rearmed` entry to the
  same suspended reading. Reception lags the ioctl by a few ms, so this can be negative.
Every time is CLOCK_MONOTONIC of the guest. Prints one JSON line prefixed "LAB_RESULT ".
"""
import json, os, re, subprocess, time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NIC = os.environ["LAB_VFIO_DEVICES"].split()[0]
SAMPLES = int(os.environ.get("LAB_TEST_SAMPLES", "10"))
with open(os.path.join(REPO, "Sources/PowerDaemon/DaemonEvent.swift")) as f:
    MESSAGE_ID = dict(re.findall(r'case \.(\w+): return "([0-9a-f]{32})"', f.read()))


def mono_us():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def runtime_status():
    with open(f"/sys/bus/pci/devices/{NIC}/power/runtime_status") as f:
        return f.read().strip()


def entries(event):
    out = subprocess.run(["journalctl", "-u", "vfio-powerd", "-o", "json", "--no-pager",
                          f"MESSAGE_ID={MESSAGE_ID[event]}"], capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait(condition, timeout=20.0, step=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


result = {"kernel": os.uname().release, "device": NIC, "access_to_woke_ms": [], "rearm_to_suspended_ms": [],
          "access_to_suspended_ms": [],
          "initial_arm_to_suspended_ms": None, "errors": []}
t0 = mono_us()
start = subprocess.run(["systemctl", "start", "vfio-powerd"], capture_output=True, text=True)
if start.returncode != 0:
    result["errors"].append("systemctl start failed: " + start.stderr)
else:
    result["start_to_ready_ms"] = (mono_us() - t0) / 1000
    if wait(lambda: runtime_status() == "suspended"):
        armed = wait(lambda: entries("armed"), timeout=10, step=0.05)
        if armed:
            result["initial_arm_to_suspended_ms"] = (mono_us() - int(armed[-1]["__MONOTONIC_TIMESTAMP"])) / 1000
    for i in range(SAMPLES):
        if not wait(lambda: runtime_status() == "suspended"):
            result["errors"].append(f"sample {i}: not suspended before the access")
            break
        time.sleep(0.5)
        woke0, rearmed0 = len(entries("woke")), len(entries("rearmed"))
        with open(f"/sys/bus/pci/devices/{NIC}/d3cold_allowed") as f:
            value = f.read()
        t_access = mono_us()
        with open(f"/sys/bus/pci/devices/{NIC}/d3cold_allowed", "w") as f:
            f.write(value)
        # The re-arm follows at once (rearm_delay = 0s): watch for suspended first, read the journal after.
        seen_awake = False
        t_suspended = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = runtime_status()
            if status != "suspended":
                seen_awake = True
            elif seen_awake or len(entries("rearmed")) > rearmed0:
                t_suspended = mono_us()
                break
            time.sleep(0.001)
        woke = wait(lambda: (lambda e: e if len(e) > woke0 else None)(entries("woke")), timeout=10, step=0.05)
        rearmed = wait(lambda: (lambda e: e if len(e) > rearmed0 else None)(entries("rearmed")), timeout=10, step=0.05)
        if not woke or not rearmed or t_suspended is None:
            result["errors"].append(f"sample {i}: woke={bool(woke)} rearmed={bool(rearmed)} suspended={t_suspended is not None}")
            continue
        t_woke = int(woke[-1]["__MONOTONIC_TIMESTAMP"])
        t_rearmed = int(rearmed[-1]["__MONOTONIC_TIMESTAMP"])
        result["access_to_woke_ms"].append((t_woke - t_access) / 1000)
        result["rearm_to_suspended_ms"].append((t_suspended - t_rearmed) / 1000)
        result["access_to_suspended_ms"].append((t_suspended - t_access) / 1000)
    subprocess.run(["systemctl", "stop", "vfio-powerd"], capture_output=True)
print("LAB_RESULT " + json.dumps(result), flush=True)
