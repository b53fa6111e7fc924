"""The Debian package as an operator uses it, under systemd (PID 1) in the lab guest:
apt installs the .deb that `make deb` built (offline: its Depends are the host's, which the
guest's root is), the operator configures the lab's two devices and enables the daemon, then
apt removes the package (the daemon stops, /etc/vfio-powerd stays) and purges it (the
configuration goes). Writes land in the guest's tmpfs overlay, never on the host.

Environment: LAB_VFIO_DEVICES (the lab's), LAB_TEST_DEB (default: the checkout's
vfio-powerd_VERSION_ARCH.deb, VERSION from debian/changelog)."""
import glob
import grp
import json
import os
import re
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import check, finish, wait  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NIC, DISK = os.environ["LAB_VFIO_DEVICES"].split()[:2]
with open(os.path.join(REPO, "debian/changelog")) as f:
    VERSION = re.match(r"vfio-powerd \(([^)]+)\)", f.readline()).group(1)
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
DEB = os.environ.get("LAB_TEST_DEB") or os.path.join(REPO, f"vfio-powerd_{VERSION}_{ARCH}.deb")
# The catalog's first MESSAGE_ID: in journalctl's catalog after install, gone after remove.
with open(os.path.join(REPO, "systemd/vfio-powerd.catalog")) as f:
    CATALOG_ID = re.search(r"^-- ([0-9a-f]{32})", f.read(), re.M).group(1)
FILES = ["/usr/sbin/vfio-powerd", "/usr/bin/vfio-powerctl", "/usr/sbin/vfio-powerd-exporter",
         "/lib/systemd/system/vfio-powerd.service", "/lib/systemd/system/vfio-powerd.socket",
         "/lib/systemd/system/vfio-powerd-exporter.service",
         "/lib/systemd/system/vfio-powerd-exporter.socket",
         "/usr/lib/systemd/catalog/vfio-powerd.catalog",
         "/usr/share/man/man8/vfio-powerd.8.gz", "/usr/share/man/man8/vfio-powerctl.8.gz",
         "/usr/share/man/man8/vfio-powerd-exporter.8.gz", "/usr/share/man/man5/vfio-powerd.conf.5.gz",
         "/usr/share/bash-completion/completions/vfio-powerctl",
         "/usr/share/zsh/vendor-completions/_vfio-powerctl",
         "/usr/share/fish/vendor_completions.d/vfio-powerctl.fish",
         "/usr/share/doc/vfio-powerd/copyright"]
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def run(*cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def apt(*args):
    return run("apt-get", "-y", "-q", *args, env=APT_ENV)


def dpkg_status():
    return run("dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", "vfio-powerd").stdout.strip()


def unit(name, prop):
    return run("systemctl", "show", "-p", prop, "--value", name).stdout.strip()


def catalog_ids():
    return run("journalctl", "--list-catalog", "--no-pager").stdout


def status_json():
    result = run("/usr/bin/vfio-powerctl", "status", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr}


def sysfs(address, attribute):
    with open(f"/sys/bus/pci/devices/{address}/{attribute}") as f:
        return f.read().strip()


def scrape():
    try:
        with urllib.request.urlopen("http://127.0.0.1:9843/metrics", timeout=30) as reply:
            return reply.status, reply.read().decode()
    except Exception as error:  # noqa: BLE001 - reported as the check's detail
        return None, str(error)


def dump_and_exit():
    for cmd in (["systemctl", "status", "--no-pager", "vfio-powerd", "vfio-powerd-exporter"],
                ["journalctl", "-b", "--no-pager", "-n", "60", "-u", "vfio-powerd", "-u", "vfio-powerd-exporter"]):
        print("--- " + " ".join(cmd), flush=True)
        print(run(*cmd).stdout, flush=True)
    finish()


# The lab's root is a Docker image's, whose /usr/sbin/policy-rc.d refuses every service
# start and stop (exit 101), which deb-systemd-invoke obeys; a Debian host has none.
if os.path.exists("/usr/sbin/policy-rc.d"):
    os.remove("/usr/sbin/policy-rc.d")

# --- Install ------------------------------------------------------------------------------
check(f"the package is there: {os.path.basename(DEB)}", os.path.exists(DEB), f"{DEB}; found {glob.glob(REPO + '/*.deb')}")
check("vfio-powerd is not installed before", not dpkg_status().startswith("ii"), dpkg_status())
installed = apt("install", DEB)
if not check("apt-get install ./vfio-powerd_*.deb, offline (the Depends are already there)", installed.returncode == 0,
             installed.stdout[-1500:] + installed.stderr[-1500:]):
    finish()
check(f"dpkg: installed, version {VERSION}", dpkg_status() == f"ii {VERSION}", dpkg_status())
missing = [path for path in FILES if not os.path.exists(path)]
check("binaries, units, catalog, man pages, completions and copyright installed", not missing, f"missing: {missing}")
version = run("/usr/bin/vfio-powerctl", "--version")
check(f"vfio-powerctl --version says {VERSION}", version.stdout.strip() == VERSION, version.stdout + version.stderr)
conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "vfio-powerd").stdout
check("/etc/vfio-powerd/vfio-powerd.conf is a conffile", "/etc/vfio-powerd/vfio-powerd.conf " in conffiles, conffiles)
try:
    group = grp.getgrnam("vfio-powerd")
    check("postinst made the system group vfio-powerd (the exporter's SupplementaryGroups=)", group.gr_gid < 1000,
          str(group))
except KeyError:
    check("postinst made the system group vfio-powerd (the exporter's SupplementaryGroups=)", False, "no such group")
check("systemd's trigger put the catalog into journalctl's database", CATALOG_ID in catalog_ids(), CATALOG_ID)
check("the units are installed, not enabled, not started",
      [unit("vfio-powerd.service", "UnitFileState"), unit("vfio-powerd.service", "ActiveState"),
       unit("vfio-powerd-exporter.socket", "UnitFileState"), unit("vfio-powerd-exporter.socket", "ActiveState")]
      == ["disabled", "inactive", "disabled", "inactive"],
      f'{unit("vfio-powerd.service", "UnitFileState")} {unit("vfio-powerd.service", "ActiveState")} '
      f'{unit("vfio-powerd-exporter.socket", "UnitFileState")} {unit("vfio-powerd-exporter.socket", "ActiveState")}')

# --- Configure and run, as an operator --------------------------------------------------------
configured = run(os.path.join(REPO, "lab/tests/lab_config.sh"))
check("the lab's two devices configured in /etc/vfio-powerd (lab_config.sh)", configured.returncode == 0, configured.stderr)
# The exporter reads the daemon as a member of the package's group: the operator lets that
# group at the control socket (vfio-powerd.conf's comment, and the exporter unit's).
grouped = run(os.path.join(REPO, "lab/tests/socket_group.sh"), "vfio-powerd")
if grouped.returncode != 0:
    raise RuntimeError(f"socket_group.sh: {grouped.stderr}")
checked = run("/usr/sbin/vfio-powerd", "--check-config")
check("vfio-powerd --check-config", checked.returncode == 0, checked.stdout + checked.stderr)
enabled = run("systemctl", "enable", "--now", "vfio-powerd")
check("systemctl enable --now vfio-powerd", enabled.returncode == 0, enabled.stderr)
if not check("vfio-powerd is active and enabled, its socket too",
             wait(lambda: unit("vfio-powerd.service", "ActiveState") == "active", timeout=60)
             and unit("vfio-powerd.service", "UnitFileState") == "enabled"
             and unit("vfio-powerd.socket", "UnitFileState") == "enabled",
             f'{unit("vfio-powerd.service", "ActiveState")} {unit("vfio-powerd.socket", "UnitFileState")}'):
    dump_and_exit()
low_power = lambda: {d["address"]: d["state"] for d in status_json().get("devices", [])} == {NIC: "low_power", DISK: "low_power"}  # noqa: E731
check("vfio-powerctl status --json: both lab devices in low power",
      wait(low_power, timeout=60), json.dumps(status_json()))
check("sysfs agrees: both suspended", wait(lambda: sysfs(NIC, "power/runtime_status") == sysfs(DISK, "power/runtime_status") == "suspended",
                                           timeout=30),
      f'{sysfs(NIC, "power/runtime_status")} {sysfs(DISK, "power/runtime_status")}')
table = run("/usr/bin/vfio-powerctl", "status")
check("vfio-powerctl status: 2 devices, 2 in low power", table.returncode == 0
      and table.stdout.startswith("vfio-powerd: 2 devices: 2 in low power") and f"{NIC}  nic" in table.stdout,
      table.stdout + table.stderr)
started = run("systemctl", "enable", "--now", "vfio-powerd-exporter.socket")
check("systemctl enable --now vfio-powerd-exporter.socket", started.returncode == 0, started.stderr)
code, text = scrape()
check("the exporter (DynamicUser in the package's group) answers a scrape with the lab's devices",
      code == 200 and NIC in text and "vfio_powerd_device_state" in text, f"{code}: {text[-600:]}")

# --- Remove: stopped, configuration kept ----------------------------------------------------
removed = apt("remove", "vfio-powerd")
check("apt-get remove vfio-powerd", removed.returncode == 0, removed.stdout[-1500:] + removed.stderr[-1500:])
check("the daemon and the exporter's socket are stopped",
      wait(lambda: unit("vfio-powerd.service", "ActiveState") in ("inactive", "")
           and unit("vfio-powerd-exporter.socket", "ActiveState") in ("inactive", "")
           and unit("vfio-powerd-exporter.service", "ActiveState") in ("inactive", ""), timeout=30),
      f'{unit("vfio-powerd.service", "ActiveState")} {unit("vfio-powerd-exporter.socket", "ActiveState")}')
check("no vfio-powerd process is left", run("pgrep", "-x", "vfio-powerd").returncode == 1, run("pgrep", "-a", "vfio-powerd").stdout)
check("dpkg: removed, configuration files kept (rc)", dpkg_status() == f"rc {VERSION}", dpkg_status())
left = [path for path in FILES if os.path.exists(path) and not path.startswith("/usr/share/doc")]
check("binaries, units and catalog are gone", not left, f"left: {left}")
check("/etc/vfio-powerd stays: the conffile and the operator's device file",
      os.path.exists("/etc/vfio-powerd/vfio-powerd.conf") and os.path.exists("/etc/vfio-powerd/devices.d/10-lab.conf"),
      str(os.listdir("/etc/vfio-powerd")) if os.path.isdir("/etc/vfio-powerd") else "no /etc/vfio-powerd")
check("systemd's trigger took the catalog out of journalctl's database", CATALOG_ID not in catalog_ids())

# --- Purge: configuration gone --------------------------------------------------------------
purged = apt("purge", "vfio-powerd")
check("apt-get purge vfio-powerd", purged.returncode == 0, purged.stdout[-1500:] + purged.stderr[-1500:])
check("dpkg: no longer knows vfio-powerd", dpkg_status() in ("", "un ") or not dpkg_status().startswith(("ii", "rc")), dpkg_status())
check("/etc/vfio-powerd and /var/lib/vfio-powerd are gone",
      not os.path.exists("/etc/vfio-powerd") and not os.path.exists("/var/lib/vfio-powerd"),
      str(glob.glob("/etc/vfio-powerd/**", recursive=True)))
links = glob.glob("/etc/systemd/system/*.wants/vfio-powerd*")
check("no enablement link is left in /etc/systemd/system", not links, str(links))
finish()
