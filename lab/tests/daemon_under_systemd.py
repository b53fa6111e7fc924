#!/usr/bin/env python3
"""vfio-powerd as an operator runs it: the installed unit under real systemd (PID 1) and
journald, on a real kernel with the lab's e1000e and nvme bound to vfio-pci.

Runs inside the guest (lab/lab.sh systemd -- this file). Every check asserts what systemd,
the journal and sysfs say; the closing line is "N passed, N failed".

A device the daemon holds cannot be opened by anyone else, so an access from outside is a
write to its d3cold_allowed attribute: the kernel resumes the device for it
(pm_runtime_resume), exactly as it does for a VMM's access, and the one-shot eventfd fires.
"""
import grp
import json
import os
import pwd
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import check, failed, finish, summary, wait  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(REPO, os.environ.get("LAB_TEST_BUILD", ".build/debug"))
NIC, DISK = os.environ["LAB_VFIO_DEVICES"].split()[:2]
UNIT = "vfio-powerd"

# MESSAGE_IDs come from the daemon's own table, so the test and the daemon cannot disagree.
with open(os.path.join(REPO, "Sources/PowerDaemon/DaemonEvent.swift")) as f:
    MESSAGE_ID = dict(re.findall(r'case \.(\w+): return "([0-9a-f]{32})"', f.read()))

def run(*cmd, check_rc=False):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check_rc and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.returncode}: {result.stderr}")
    return result


def sysfs(address, attribute):
    with open(f"/sys/bus/pci/devices/{address}/{attribute}") as f:
        return f.read().strip()


def runtime_status(address):
    return sysfs(address, "power/runtime_status")


def access(address):
    """Resumes the device from outside: a write to d3cold_allowed, keeping its value."""
    with open(f"/sys/bus/pci/devices/{address}/d3cold_allowed", "w") as f:
        f.write(sysfs(address, "d3cold_allowed"))


def show(prop):
    return run("systemctl", "show", "-p", prop, "--value", UNIT).stdout.strip()


def journal(event=None, device=None):
    out = run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    if event:
        entries = [e for e in entries if e.get("MESSAGE_ID") == MESSAGE_ID[event]]
    if device:
        entries = [e for e in entries if e.get("VFIO_DEVICE") == device]
    return entries


def count(event, device=None):
    return len(journal(event, device))


def dump_and_exit():
    print("--- systemctl status", flush=True)
    print(run("systemctl", "status", "--no-pager", "-l", UNIT).stdout)
    print("--- journalctl -u vfio-powerd", flush=True)
    print(run("journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic").stdout)
    print(summary())
    sys.exit(1)


# --- start -------------------------------------------------------------------------------
print(f"# kernel {os.uname().release}, devices nic={NIC} disk={DISK}", flush=True)
start = run("systemctl", "start", UNIT)
if not check("systemctl start vfio-powerd succeeds (Type=notify: READY=1 arrived)", start.returncode == 0, start.stderr):
    dump_and_exit()
check("the unit is active", show("ActiveState") == "active", show("ActiveState"))
check("STATUS tells the truth: both armed",
      wait(lambda: show("StatusText") == "2 devices: 2 in low power; 0 wakes"), show("StatusText"))
for name, address in (("nic", NIC), ("disk", DISK)):
    check(f"{name} runtime-suspends after arming", wait(lambda: runtime_status(address) == "suspended"),
          runtime_status(address))
    check(f"{name} reaches D3hot", sysfs(address, "power_state") == "D3hot", sysfs(address, "power_state"))
    armed = journal("armed", address)
    check(f"journal: armed {name} with MESSAGE_ID, VFIO_DEVICE and VFIO_MODE",
          len(armed) == 1 and armed[0].get("VFIO_MODE") == "oneshot" and armed[0].get("PRIORITY") == "6"
          and armed[0].get("SYSLOG_IDENTIFIER") == "vfio-powerd", json.dumps(armed))
check("d3cold = forbid wrote d3cold_allowed=0 for disk", sysfs(DISK, "d3cold_allowed") == "0")
check("d3cold = allow left nic's d3cold_allowed=1", sysfs(NIC, "d3cold_allowed") == "1")
started = journal("started")
check("journal: started", len(started) == 1 and "2 in low power" in started[0]["MESSAGE"], json.dumps(started))
noise = [line for line in run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat").stdout.splitlines()
         if "Failed to set thread priority" in line]
check("a healthy start's journal has no 'Failed to set thread priority' lines (libdispatch vs the unit's filter)",
      not noise and len(run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat").stdout.splitlines()) >= 3, "\n".join(noise[:3]))
explained = run("journalctl", "-u", UNIT, "-x", "--no-pager", f"MESSAGE_ID={MESSAGE_ID['armed']}").stdout
check("journalctl -x explains the armed message from the catalog", "Documentation: man:vfio-powerd(8)" in explained
      or "vfio-powerd" in explained.split("--")[-1], explained[-400:])

# --- a wake, then re-arm after rearm_delay -----------------------------------------------
access(NIC)
# Read at once: under TCG on a loaded host the journal can take longer than rearm_delay.
status_after_access = runtime_status(NIC)
check("an access wakes nic: journal has woke with VFIO_WAKES=1",
      wait(lambda: count("woke", NIC) == 1) and journal("woke", NIC)[0].get("VFIO_WAKES") == "1",
      json.dumps(journal("woke", NIC)))
low_power_usec = journal("woke", NIC)[0].get("VFIO_LOW_POWER_USEC", "0")
check("woke carries VFIO_LOW_POWER_USEC > 0", int(low_power_usec) > 0, low_power_usec)
check("the access left nic awake (a one-shot wake disarms)", status_after_access == "active", status_after_access)
check("disk was not disturbed", runtime_status(DISK) == "suspended", runtime_status(DISK))
check("STATUS shows the wake", wait(lambda: show("StatusText").endswith("; 1 wake")), show("StatusText"))
check("nic is re-armed after rearm_delay", wait(lambda: count("rearmed", NIC) == 1, timeout=10))
quiet_usec = (int(journal("rearmed", NIC)[0]["__MONOTONIC_TIMESTAMP"]) - int(journal("woke", NIC)[0]["__MONOTONIC_TIMESTAMP"]))
check("it stayed awake for the whole re-arm delay (journal: woke to re-armed >= 2s)", quiet_usec >= 2_000_000, f"{quiet_usec} us")
check("nic suspends again", wait(lambda: runtime_status(NIC) == "suspended"), runtime_status(NIC))
check("STATUS: both in low power again, 1 wake",
      wait(lambda: show("StatusText") == "2 devices: 2 in low power; 1 wake"), show("StatusText"))

# --- vfio-powerctl against the running daemon agrees with sysfs and the journal ----------
POWERCTL = "/usr/local/bin/vfio-powerctl"


def powerctl(*args):
    return run(POWERCTL, *args)


def status_json():
    result = powerctl("status", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr}


status = status_json()
states = {d["address"]: d["state"] for d in status.get("devices", [])}
check("vfio-powerctl status --json lists both devices in low power, as sysfs says",
      states == {NIC: "low_power", DISK: "low_power"} and runtime_status(NIC) == runtime_status(DISK) == "suspended",
      json.dumps(status))
check("its wake count agrees with the journal's",
      {d["address"]: d["wakes"] for d in status["devices"]}.get(NIC) == count("woke", NIC), json.dumps(status))
table = powerctl("status")
check("vfio-powerctl status prints the STATUS line and a row per device",
      table.returncode == 0 and table.stdout.startswith("vfio-powerd: 2 devices: 2 in low power; 1 wake\n")
      and f"{NIC}  nic" in table.stdout, table.stdout + table.stderr)

monitor = subprocess.Popen([POWERCTL, "monitor", "--json"], stdout=subprocess.PIPE, text=True)
wake = powerctl("wake", NIC, "--for", "3s")
check("vfio-powerctl wake --for 3s holds nic awake", wake.returncode == 0 and "held awake for 3s" in wake.stdout,
      wake.stdout + wake.stderr)
check("sysfs: nic is awake", wait(lambda: runtime_status(NIC) == "active"), runtime_status(NIC))
check("journal: held awake by the operator", wait(lambda: count("heldAwake", NIC) == 1))
check("after 3s the daemon arms it again by itself", wait(lambda: runtime_status(NIC) == "suspended", timeout=10),
      runtime_status(NIC))
powerctl("wake", NIC)
check("vfio-powerctl wake without --for holds it until arm",
      wait(lambda: runtime_status(NIC) == "active") and json.loads(powerctl("show", NIC, "--json").stdout)["state"] == "held_awake")
time.sleep(1)
check("and it stays awake", runtime_status(NIC) == "active", runtime_status(NIC))
arm = powerctl("arm", NIC)
check("vfio-powerctl arm puts it back into low power", arm.returncode == 0 and wait(lambda: runtime_status(NIC) == "suspended"),
      arm.stdout + arm.stderr)
time.sleep(0.5)
monitor.terminate()
seen = [json.loads(line) for line in monitor.communicate(timeout=5)[0].splitlines() if line.startswith("{")]
nic_states = [d["state"] for d in seen if d["address"] == NIC]
check("vfio-powerctl monitor streamed each change: held awake, armed again",
      nic_states[:1] == ["low_power"] and "held_awake" in nic_states and nic_states[-1] == "low_power", str(nic_states))
detail = json.loads(powerctl("show", NIC, "--json").stdout)
check("the daemon's own wake count did not grow from the operator's wakes (they are its own EXITs)",
      detail["wakes"] == count("woke", NIC) and detail["selfWakes"] >= 1, json.dumps(detail))

# --- flapping: more than flap_max_wakes (3) wakes within flap_window (1m) ---------------
for _ in range(3):
    wait(lambda: runtime_status(NIC) == "suspended" and show("StatusText").startswith("2 devices: 2 in low power"), timeout=15)
    access(NIC)
    time.sleep(0.3)
check("a flapping nic is reported once", wait(lambda: count("flappingStarted", NIC) == 1, timeout=15),
      str(count("flappingStarted", NIC)))
check("STATUS says it is flapping", wait(lambda: "1 flapping" in show("StatusText")), show("StatusText"))
check("re-arms while flapping are summarised, not logged", count("rearmed", NIC) <= 3, str(count("rearmed", NIC)))

# --- reload with a broken file changes nothing ------------------------------------------
status_before = show("StatusText")
armed_before = count("armed")
with open("/etc/vfio-powerd/devices.d/30-typo.conf", "w") as f:
    f.write('[[device]]\naddress = "0000:00:1f.0"\nrearm_dealy = "5s"\n')
reload = run("systemctl", "reload", UNIT)
check("systemctl reload returns", reload.returncode == 0, reload.stderr)
rejected = lambda: journal("configRejected")
check("the broken file is rejected with file:line:column and advice",
      wait(lambda: any("30-typo.conf:3:1: device.rearm_dealy: unknown key; did you mean `rearm_delay`?" in e["MESSAGE"]
                       for e in rejected())), json.dumps([e["MESSAGE"] for e in rejected()]))
check("the daemon keeps running", show("ActiveState") == "active", show("ActiveState"))
check("no device was re-armed by the rejected reload", count("armed") == armed_before)
check("disk is still in low power", runtime_status(DISK) == "suspended", runtime_status(DISK))
os.remove("/etc/vfio-powerd/devices.d/30-typo.conf")
run("systemctl", "reload", UNIT)
check("a good reload is applied and logged", wait(lambda: count("reloaded") == 1), str(count("reloaded")))
check("an unchanged device gets no call on reload: disk stays suspended", runtime_status(DISK) == "suspended")

# --- the kernel keeps an armed device awake: power/control=on ---------------------------
def show_json(address):
    result = powerctl("show", address, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr}


KEPT = "kept_awake"
woke_before = count("woke", DISK)
with open(f"/sys/bus/pci/devices/{DISK}/power/control", "w") as f:
    f.write("on")  # forbids runtime PM: resumes the armed disk (a wake), and keeps it awake
check("power/control=on wakes the armed disk (the one-shot eventfd fires)",
      wait(lambda: count("woke", DISK) == woke_before + 1), str(count("woke", DISK)))
check("after its re-arm the kernel keeps it awake: the status says so, not 'low power'",
      wait(lambda: show_json(DISK).get("state") == KEPT, timeout=20), json.dumps(show_json(DISK)))
kept = journal("keptAwake", DISK)
check("the journal says why, once: power/control is \"on\", with the fix",
      len(kept) == 1 and 'power/control is "on"' in kept[0]["MESSAGE"] and f"{DISK}/power/control" in kept[0]["MESSAGE"],
      json.dumps([e["MESSAGE"] for e in kept]))
check("sysfs agrees: the disk is active", runtime_status(DISK) == "active", runtime_status(DISK))
kept_view = show_json(DISK)
check("vfio-powerctl show gives runtime_status and power_state as sysfs has them",
      kept_view.get("runtimeStatus") == runtime_status(DISK) and kept_view.get("powerState") == sysfs(DISK, "power_state"),
      json.dumps(kept_view))
with open(f"/sys/bus/pci/devices/{DISK}/power/control", "w") as f:
    f.write("auto")
check("power/control=auto: the disk suspends, the status says low power again",
      wait(lambda: runtime_status(DISK) == "suspended" and show_json(DISK).get("state") == "low_power", timeout=10),
      json.dumps(show_json(DISK)))
check("journal: suspended at last", wait(lambda: count("suspendedAtLast", DISK) == 1), str(count("suspendedAtLast", DISK)))
check("and it was said only once that it was kept awake", count("keptAwake", DISK) == 1, str(count("keptAwake", DISK)))
wait(lambda: (show_json(DISK).get("runtimeSuspendedMs") or 0) > (kept_view.get("runtimeSuspendedMs") or 0) + 1000, timeout=5)
later = show_json(DISK)
# Time in low power is the kernel's count since management began: the two records differ
# from the kernel's counter by the same baseline, although the disk was armed all along.
offsets = [v["runtimeSuspendedMs"] - v["lowPowerUsec"] // 1000 for v in (kept_view, later)]
check("time in low power is the kernel's runtime_suspended_time (kept-awake time is not counted)",
      later["runtimeSuspendedMs"] > kept_view["runtimeSuspendedMs"] + 1000 and abs(offsets[0] - offsets[1]) <= 2,
      f"offsets {offsets}, {json.dumps(kept_view)} -> {json.dumps(later)}")

# --- unbind while armed: released at once, managed again when bound ---------------------
unbind = subprocess.Popen(["sh", "-c", f"echo {DISK} > /sys/bus/pci/drivers/vfio-pci/unbind"])
try:
    unbind.wait(timeout=10)
    finished = True
except subprocess.TimeoutExpired:
    finished = False
check("unbinding the armed disk completes (the daemon released it)", finished and unbind.returncode == 0)
if not finished:
    dump_and_exit()
check("journal: disk gone", wait(lambda: count("deviceGone", DISK) == 1), str(journal("deviceGone", DISK)))
check("STATUS counts it missing", wait(lambda: "1 missing" in show("StatusText")), show("StatusText"))
with open("/sys/bus/pci/drivers_probe", "w") as f:
    f.write(DISK)
check("bound again, disk is back and re-armed within the rescan interval",
      wait(lambda: count("deviceBack", DISK) == 1 and count("armed", DISK) == 2, timeout=10))
check("disk suspends again", wait(lambda: runtime_status(DISK) == "suspended"), runtime_status(DISK))

# --- a stuck daemon is restarted by the watchdog ----------------------------------------
pid = show("MainPID")
check("no restart so far: one 'started' entry and a running main process", count("started") == 1 and pid != "0",
      f"{count('started')} started, MainPID {pid}")
run("systemctl", "kill", "-s", "SIGSTOP", UNIT)
check("the watchdog restarts a stopped daemon",
      wait(lambda: show("MainPID") not in (pid, "0") and show("ActiveState") == "active", timeout=60),
      f"MainPID {pid} -> {show('MainPID')}, {show('ActiveState')}")
check("journal: systemd saw the watchdog timeout",
      "Watchdog timeout" in run("journalctl", "-u", UNIT, "--no-pager").stdout)
check("after the restart both devices are armed again",
      wait(lambda: count("started") == 2 and show("StatusText").startswith("2 devices: 2 in low power"), timeout=15),
      f"{count('started')} started, {show('StatusText')}")

# --- socket_group and admin_group under the shipped units (socket activation) ------------
for group in ("vfioread", "vfioadmin"):
    run("groupadd", "-f", group)
run("useradd", "-M", "-N", "-g", "vfioread", "reader")
run("useradd", "-M", "-N", "-g", "vfioread", "-G", "vfioadmin", "admin")
run("useradd", "-M", "-N", "outsider")
run(os.path.join(REPO, "lab/tests/socket_group.sh"), "vfioread", "vfioadmin", check_rc=True)
run("systemctl", "stop", UNIT, "vfio-powerd.socket")
restarted = run("systemctl", "start", UNIT)
check("with the socket unit's SocketGroup= the service starts", restarted.returncode == 0, restarted.stderr)
sock = os.stat("/run/vfio-powerd/io.vfiopowerd.Manager")
check("systemd made the socket: root:vfioread 0660", sock.st_uid == 0 and grp.getgrgid(sock.st_gid).gr_name == "vfioread"
      and sock.st_mode & 0o777 == 0o660, f"{sock.st_uid}:{sock.st_gid} {oct(sock.st_mode)}")


def powerctl_as(user, *args):
    return run("setpriv", "--reuid", user, "--regid", pwd.getpwnam(user).pw_gid.__str__(), "--init-groups", POWERCTL, *args)


read_status = powerctl_as("reader", "status")
check("a member of socket_group reads the status", read_status.returncode == 0 and "vfio-powerd: 2 devices" in read_status.stdout,
      read_status.stdout + read_status.stderr)
denied = powerctl_as("reader", "arm", NIC)
check("it may not arm: a clear refusal that names admin_group", denied.returncode == 77 and "admin_group" in denied.stderr,
      f"{denied.returncode}: {denied.stderr}")
armed = powerctl_as("admin", "arm", NIC)
check("a member of admin_group arms", armed.returncode == 0 and f"{NIC}:" in armed.stdout, f"{armed.returncode}: {armed.stdout}{armed.stderr}")
outside = powerctl_as("outsider", "status")
check("anyone else is refused at the socket, told which group lets them in",
      outside.returncode != 0 and "vfioread" in outside.stderr, f"{outside.returncode}: {outside.stderr}")
check("the daemon did not report socket_group and the socket's group as different",
      not any("is not the group of" in e["MESSAGE"] for e in journal()))

# --- the Prometheus exporter under its shipped units -------------------------------------
# Socket-activated on port 9843, a DynamicUser whose one supplementary group must be the
# daemon's socket_group (here vfioread: the drop-in an operator writes for another name).
EXPORTER = "vfio-powerd-exporter"
# Every value of Device.state, from the interface file: one series each per device.
with open(os.path.join(REPO, "Sources/ControlProtocol/io.vfiopowerd.Manager.varlink")) as f:
    STATES = [v.strip() for v in re.search(r"\bstate: \(([^)]*)\)", f.read()).group(1).split(",")]
os.makedirs(f"/etc/systemd/system/{EXPORTER}.service.d", exist_ok=True)
with open(f"/etc/systemd/system/{EXPORTER}.service.d/group.conf", "w") as f:
    f.write("[Service]\nSupplementaryGroups=\nSupplementaryGroups=vfioread\n")
run("systemctl", "daemon-reload")
listening = run("systemctl", "start", f"{EXPORTER}.socket")
check("systemctl start vfio-powerd-exporter.socket succeeds", listening.returncode == 0, listening.stderr)


def exporter_show(prop):
    return run("systemctl", "show", "-p", prop, "--value", EXPORTER).stdout.strip()


check("no exporter runs before the first scrape", exporter_show("ActiveState") == "inactive", exporter_show("ActiveState"))


def scrape():
    """GET /metrics: (status, content type, {(name, labels): value}, text)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:9843/metrics", timeout=30) as reply:
            text = reply.read().decode()
            status, kind = reply.status, reply.headers.get("Content-Type")
    except Exception as error:  # noqa: BLE001 - reported as the check's detail
        return None, None, {}, str(error)
    series = {}
    for line in text.splitlines():
        match = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
        if match:
            labels = tuple(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            series[(match.group(1), labels)] = float(match.group(3))
    return status, kind, series, text


def value(series, metric, **labels):
    """The value of the first series of `metric` that has all of `labels`; None if none."""
    return next((v for (n, ls), v in series.items() if n == metric and all((k, labels[k]) in ls for k in labels)), None)


# The daemon was restarted above: one reload now, for the reload series.
reloaded = run("systemctl", "reload", UNIT)
check("systemctl reload vfio-powerd", reloaded.returncode == 0, reloaded.stderr)
status, kind, series, text = scrape()
check("curl 127.0.0.1:9843/metrics: 200 in Prometheus' text format", status == 200 and kind.startswith("text/plain; version=0.0.4"),
      f"{status} {kind}: {text[-400:]}")
check("the exporter was started by its socket and is active", exporter_show("ActiveState") == "active", exporter_show("ActiveState"))
pid = exporter_show("MainPID")
with open(f"/proc/{pid}/status") as f:
    proc_status = f.read()
uid = int(re.search(r"^Uid:\s+(\d+)", proc_status, re.M).group(1))
groups = re.search(r"^Groups:\s*(.*)$", proc_status, re.M).group(1).split()
check("it runs as a dynamic user with vfioread as its supplementary group",
      uid >= 61184 and str(grp.getgrnam("vfioread").gr_gid) in groups, f"uid {uid}, groups {groups}")
check("it reads the daemon: vfio_powerd_up 1", value(series, "vfio_powerd_up") == 1.0, text[:600])
records = {address: show_json(address) for address in (NIC, DISK)}
for name, address in (("nic", NIC), ("disk", DISK)):
    record = records[address]
    check(f"{name}: wakes, arms and state as the daemon has them, labelled address, name, source and vmm",
          value(series, "vfio_powerd_device_wakes_total", address=address, name=name, source="own", vmm="") == record.get("wakes")
          and value(series, "vfio_powerd_device_arms_total", address=address) == record.get("arms")
          and value(series, "vfio_powerd_device_state", address=address, state=record.get("state")) == 1.0,
          f"{json.dumps(record)} / {[(k, v) for k, v in series.items() if address in str(k) and v]}")
    states = [ls for (n, ls) in series if n == "vfio_powerd_device_state" and ("address", address) in ls]
    check(f"{name}: one state series per state, exactly one of them 1", sorted(v for ls in states for k, v in ls if k == "state") == sorted(STATES)
          and sum(series[("vfio_powerd_device_state", ls)] for ls in states) == 1.0, str(len(states)))
    seconds = value(series, "vfio_powerd_device_low_power_seconds_total", address=address)
    check(f"{name}: time in low power from the kernel's counter, > 0 and no more than the daemon's figure read after",
          seconds is not None and 0 < seconds <= show_json(address).get("lowPowerUsec", 0) / 1e6, f"{seconds} s, {json.dumps(record)}")
check("daemon series: one reload since the daemon's last start, applied, a moment ago",
      value(series, "vfio_powerd_reloads_total") == 1.0 and value(series, "vfio_powerd_last_reload_success") == 1.0
      and abs(time.time() - (value(series, "vfio_powerd_last_reload_timestamp_seconds") or 0)) < 120
      and value(series, "vfio_powerd_devices", category="low_power") is not None, text[:1500])

# A wake shows at the next scrape; scrapes themselves wake nothing.
check("nic is in low power before the wake", wait(lambda: runtime_status(NIC) == "suspended", timeout=15), runtime_status(NIC))
wakes_before = show_json(NIC).get("wakes", -1)
access(NIC)
check("the daemon counts the wake", wait(lambda: show_json(NIC).get("wakes") == wakes_before + 1, timeout=10))
_, _, series, _ = scrape()
check("the next scrape shows it: vfio_powerd_device_wakes_total + 1",
      value(series, "vfio_powerd_device_wakes_total", address=NIC) == wakes_before + 1,
      str(value(series, "vfio_powerd_device_wakes_total", address=NIC)))
check("nic suspends again after the re-arm delay", wait(lambda: runtime_status(NIC) == "suspended", timeout=15), runtime_status(NIC))
wakes_before = show_json(NIC).get("wakes", -1)
for _ in range(5):
    scrape()
check("five scrapes later nic is still suspended and has no new wake",
      runtime_status(NIC) == "suspended" and runtime_status(DISK) == "suspended" and show_json(NIC).get("wakes") == wakes_before,
      f"{runtime_status(NIC)}, {runtime_status(DISK)}, wakes {show_json(NIC).get('wakes')} (was {wakes_before})")
security = run("systemd-analyze", "security", "--no-pager", EXPORTER).stdout
exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security)
check("systemd-analyze security rates the running exporter at most 2.0", exposure and float(exposure.group(1)) <= 2.0,
      security[-1500:])

# The daemon stopped: the scrape still answers, with vfio_powerd_up 0 and no device series.
run("systemctl", "stop", UNIT, "vfio-powerd.socket")
status, _, series, text = scrape()
check("with the daemon stopped, /metrics answers 200 with vfio_powerd_up 0 and no device series",
      status == 200 and value(series, "vfio_powerd_up") == 0.0 and "vfio_powerd_device_" not in text, f"{status}: {text[:400]}")
exporter_log = run("journalctl", "-u", EXPORTER, "--no-pager", "-o", "cat").stdout
check("the exporter's journal says where it serves and that the daemon cannot be read",
      "serving /metrics on" in exporter_log and "cannot be read" in exporter_log, exporter_log[-800:])
run("systemctl", "start", UNIT)
check("the daemon is back with both devices in low power",
      wait(lambda: show("StatusText").startswith("2 devices: 2 in low power"), timeout=15), show("StatusText"))
_, _, series, _ = scrape()
check("and the exporter reads it again", value(series, "vfio_powerd_up") == 1.0)

# --- READY=1 only once the control socket listens ---------------------------------------
failures = []
for attempt in range(20):
    run("systemctl", "stop", UNIT)
    started_ok = run("systemctl", "start", UNIT).returncode == 0
    answer = powerctl("status")
    if not started_ok or answer.returncode != 0:
        failures.append(f"#{attempt}: start ok={started_ok}, status rc={answer.returncode}: {answer.stderr.strip()}")
check("systemctl start vfio-powerd && vfio-powerctl status, 20 times back to back: the status answers every time",
      not failures, "; ".join(failures[:3]))
wait(lambda: show("StatusText").startswith("2 devices: 2 in low power"), timeout=15)

# --- a busy device is taken when its holder exits -----------------------------------------
run("systemctl", "stop", UNIT)
group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{NIC}/iommu_group"))
holder = subprocess.Popen(["/usr/bin/python3", "-c", f"import os, time; fd = os.open('/dev/vfio/{group}', os.O_RDWR); "
                           "print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
check("a process holds nic's group", holder.stdout.readline().strip() == "held")
armed_nic = count("armed", NIC)
run("systemctl", "start", UNIT)
held = show_json(NIC)
check("the status names the holder (pid and command) under the shipped unit",
      held.get("state") == "failed" and f"(pid {holder.pid})" in (held.get("lastError") or "") and "python3" in held["lastError"],
      json.dumps(held))
skipped = [e["MESSAGE"] for e in journal("deviceSkipped", NIC)]
check("the journal names it and says the device is taken once it exits",
      any(f"(pid {holder.pid})" in m and "taken as soon as that process exits" in m for m in skipped), json.dumps(skipped[-2:]))
reloads = count("reloaded")
killed_at = time.time()
holder.kill()
holder.wait()
wait(lambda: count("armed", NIC) == armed_nic + 1, timeout=10)
rearmed = journal("armed", NIC)[armed_nic:]
# By the journal's stamp (when the daemon logged it), not when this script saw it.
after = (int(rearmed[0].get("_SOURCE_REALTIME_TIMESTAMP", rearmed[0]["__REALTIME_TIMESTAMP"])) / 1e6 - killed_at) if rearmed else None
check("the holder exits, and nic is armed within 2 s, without a reload",
      after is not None and after <= 2 and count("reloaded") == reloads, f"armed {after}s after the kill, {json.dumps(rearmed)}")
check("journal: the holder's exit is said", any("the process that held its group exited" in e["MESSAGE"]
                                                for e in journal("deviceBack", NIC)))
check("nic suspends", wait(lambda: runtime_status(NIC) == "suspended"), runtime_status(NIC))

# --- stop leaves every device usable ------------------------------------------------------
stop = run("systemctl", "stop", UNIT)
check("systemctl stop succeeds", stop.returncode == 0, stop.stderr)
check("the daemon exited 0", show("Result") == "success" and show("ExecMainStatus") == "0",
      f"Result={show('Result')} ExecMainStatus={show('ExecMainStatus')}")
check("journal: stopping", count("stopping") >= 1)
probe = run(os.path.join(BUILD, "vfio-powerctl"), "probe", "--cycle", "--json", NIC)
report = json.loads(probe.stdout) if probe.returncode in (0, 1) and probe.stdout.startswith("{") else {}
check("after stop nic is free and usable: vfio-powerctl probe --cycle succeeds",
      probe.returncode == 0 and report.get("manageable") is True, probe.stdout[-600:] + probe.stderr)

if failed():
    dump_and_exit()
finish()
