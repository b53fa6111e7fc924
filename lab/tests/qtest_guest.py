#!/usr/bin/python3
"""Play a VM's guest for one vfio-pci device held by Debian's own, unmodified QEMU.

Inside the lab guest (no KVM, no time to boot a nested OS under TCG) a real VMM can still
hold a vfio-pci device: ``qemu-system-x86_64`` opens the group, the container and the
device exactly as it would for a VM, while its virtual CPU stays stopped (``-S``). The test
then acts as the guest's driver through QEMU's qtest protocol on QEMU's stdin/stdout:
port I/O for PCI configuration cycles (0xcf8/0xcfc) and guest-physical memory reads. Every
configuration access the "guest" makes goes through QEMU's vfio-pci code to the kernel's
vfio config region, just as a real guest's would. See /work/shared/docs/vmm-held-devices.md.

    from qtest_guest import QemuGuest

    with QemuGuest("0000:00:02.0") as guest:        # QEMU is up and answering
        guest.config_read(0x00, 2)                  # 0x8086
        guest.set_power_state("D3hot")              # host sysfs: D3hot, still active
        guest.wait_power_state("D3hot")             # sampled from host sysfs, no wake
        guest.set_power_state("D0")
        guest.readl(guest.enable_bar0())            # a BAR read through QEMU's mmap

Command line (manual smoke run, inside the lab guest):

    /usr/bin/python3 lab/tests/qtest_guest.py 0000:00:02.0

Python 3.11 standard library only (Debian 12's /usr/bin/python3). Not thread-safe beyond
one lock that keeps each command and each configuration cycle (two commands) whole.

Things worth knowing (measured in the lab on 6.1 and 7.3.4; qtest_smoke.py checks most):
- Every guest configuration read or write is a read or write on the device fd, which wakes
  a runtime-suspended device (vmm-held-devices.md). Sample the host's sysfs (``host_sysfs``,
  ``wait_power_state``) to watch the device without touching it.
- A BAR read while the guest has the device in D3hot kills QEMU 7.2 with SIGBUS (the kernel
  disables memory decoding in D3hot); that readl, and every later command, raises
  ``QemuError`` ("killed by SIGBUS").
- QEMU does not exit when its stdin closes; ``close()`` sends SIGTERM (then SIGKILL).
- QEMU answers once vfio-pci is realized: ~1.3-2.5 s after the start under the lab's TCG.
  A failed start (device busy, not bound to vfio-pci) raises QemuError after ~1 s with
  QEMU's own message, e.g. "failed to open /dev/vfio/1: Device or resource busy".
- One qtest command takes ~1.2-1.7 ms, a configuration access (two commands) ~3-4 ms; a
  guest D3hot/D0 write shows in the host's power_state ~20-30 ms after it started.
"""

import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

QEMU = "/usr/bin/qemu-system-x86_64"

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_BAR0 = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_COMMAND_MEMORY = 0x0002
PCI_STATUS_CAP_LIST = 0x0010
PCI_CAP_ID_PM = 0x01
PCI_PM_CTRL = 4  # PMCSR, relative to the PM capability
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_PME_STATUS = 0x8000  # RW1C: never written back as 1

POWER_STATES = {"D0": 0, "D1": 1, "D2": 2, "D3hot": 3}
POWER_STATE_NAMES = {v: k for k, v in POWER_STATES.items()}

_PR_SET_PDEATHSIG = 1


class QemuError(RuntimeError):
    """QEMU failed to start, exited, stopped answering, or the protocol broke."""


class QtestFailure(QemuError):
    """QEMU answered a qtest command with FAIL/ERR (QEMU itself is still fine)."""


def _die_with_parent():
    """preexec_fn: QEMU gets SIGKILL when the process that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # best effort only
        pass


def host_sysfs(address, attribute):
    """A PCI device's sysfs attribute on the host, e.g. 'power_state' or
    'power/runtime_status'. Reading these never wakes the device."""
    with open(f"/sys/bus/pci/devices/{address}/{attribute}") as f:
        return f.read().strip()


def wait_for(condition, timeout=10.0, interval=0.01):
    """Polls condition() until it is true or timeout seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def iommu_group(address):
    """The IOMMU group number of a host PCI device (the N of /dev/vfio/N)."""
    return int(os.path.basename(os.readlink(f"/sys/bus/pci/devices/{address}/iommu_group")))


def holders(path):
    """PIDs of every process that has `path` open (scans /proc/*/fd)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == path:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return pids


class QemuGuest:
    """Debian's qemu-system-x86_64 holding one vfio-pci device, and a qtest "guest" for it.

    QemuGuest(host_address, slot=5, extra_args=()) starts

        qemu-system-x86_64 -machine pc,accel=tcg -S -qtest stdio -qtest-log none
            -display none -nodefaults -m 64 -device vfio-pci,host=ADDR,addr=0xSLOT

    and returns once QEMU answers a configuration read of the device's vendor id (within
    start_timeout seconds), i.e. once vfio-pci is realized: the group, container and device
    are open. Raises QemuError (with QEMU's stderr) if QEMU exits or does not answer.

    The device is at bus 0, device `slot`, function 0 of the guest's PCI bus. QEMU's stderr
    goes to an unlinked temporary file (it can never block QEMU); stderr_text() reads it.
    """

    def __init__(self, host_address, slot=5, extra_args=(), *, qemu=QEMU, start_timeout=30.0,
                 command_timeout=10.0, die_with_parent=True):
        if not 0 < slot < 32:
            raise ValueError(f"slot {slot}: want 1..31")
        self.host_address = host_address
        self.slot = slot
        self.command_timeout = command_timeout
        self.argv = [
            qemu, "-machine", "pc,accel=tcg", "-S", "-qtest", "stdio", "-qtest-log", "none",
            "-display", "none", "-nodefaults", "-m", "64",
            "-device", f"vfio-pci,host={host_address},addr={slot:#x}", *extra_args,
        ]
        self._lock = threading.RLock()
        self._buffer = b""
        self._broken = None  # why the protocol can no longer be trusted
        self._pm_cap = None
        self._stderr = tempfile.TemporaryFile(prefix="qemu-stderr-")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            close_fds=True, preexec_fn=_die_with_parent if die_with_parent else None)
        self.pid = self.proc.pid
        try:
            try:
                vendor = self.config_read(PCI_VENDOR_ID, 2, timeout=start_timeout)
            except QemuError as e:
                raise QemuError(f"QEMU did not start on {host_address}: {e}") from None
            if vendor in (0xffff, 0x0000):
                raise QemuError(f"no device answers at guest slot {slot} (vendor id {vendor:#06x})")
        except BaseException:
            self.close()
            raise
        #: seconds from Popen to the first answer (QEMU started, device realized)
        self.start_seconds = time.monotonic() - self.started_at

    # --- process --------------------------------------------------------------------------
    def alive(self):
        """True while the QEMU process has not exited."""
        return self.proc.poll() is None

    @property
    def returncode(self):
        """None while running; QEMU's exit status, or -N if signal N ended it."""
        return self.proc.poll()

    def stderr_text(self, limit=4000):
        """The last `limit` characters QEMU wrote to stderr."""
        try:
            self._stderr.flush()
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def kill(self, sig=signal.SIGKILL, timeout=10.0):
        """Sends `sig` to QEMU and waits (at most `timeout` s) until it has exited.
        Returns the exit status (-9 for SIGKILL); raises QemuError if it did not exit."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU (pid {self.pid}) still running {timeout} s after signal {sig}") from None

    def close(self):
        """Ends QEMU (closes its stdin, SIGTERM, SIGKILL after 5 s) and frees the pipes.
        Safe to call more than once."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.alive():
            try:
                self.kill(signal.SIGTERM, timeout=5.0)
            except QemuError:
                self.kill(signal.SIGKILL, timeout=10.0)
        else:
            self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        self._broken = self._broken or "closed"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            if self.alive():
                self.proc.kill()
                self.proc.wait()
        except Exception:
            pass

    def _died(self, what):
        """A QemuError for a QEMU that is gone (or going), with its status and stderr."""
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        status = self.proc.poll()
        how = "still running" if status is None else (
            f"killed by {signal.Signals(-status).name}" if status < 0 else f"exited {status}")
        return QemuError(f"{what}: QEMU (pid {self.pid}) {how}; stderr: {self.stderr_text().strip() or '(empty)'}")

    # --- the qtest protocol ---------------------------------------------------------------
    def command(self, line, timeout=None):
        """Sends one qtest command line and returns the answer after "OK" ('' for a plain
        OK, e.g. '0x8086' for an inw). Raises QtestFailure on FAIL/ERR, QemuError if QEMU
        exits or does not answer within `timeout` s (default: command_timeout). After a
        timeout the stream is out of step and every later command raises."""
        timeout = self.command_timeout if timeout is None else timeout
        with self._lock:
            if self._broken:
                raise QemuError(f"{line!r}: the qtest connection is unusable ({self._broken})")
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as e:
                self._broken = f"write failed: {e}"
                raise self._died(f"{line!r}") from None
            answer = self._read_line(line, timeout)
        if answer == "OK":
            return ""
        if answer.startswith("OK "):
            return answer[3:].strip()
        if answer.startswith(("FAIL", "ERR")):
            raise QtestFailure(f"{line!r}: {answer}")
        with self._lock:
            self._broken = f"unexpected answer {answer!r}"
        raise QemuError(f"{line!r}: unexpected answer {answer!r}")

    def command_int(self, line, timeout=None):
        """command() for commands that answer OK 0x...: the value as an int."""
        value = self.command(line, timeout)
        try:
            return int(value, 0)
        except ValueError:
            raise QemuError(f"{line!r}: answer {value!r} is not a number") from None

    def _read_line(self, line, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                text = raw.decode(errors="replace").strip()
                # Asynchronous IRQ notices only come with irq_intercept_*; skip them anyway.
                if text and not text.startswith("IRQ "):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                self._broken = f"no answer to {line!r} within {timeout} s"
                raise self._died(f"{line!r}: no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self._broken = "QEMU closed its stdout"
                raise self._died(f"{line!r}: no answer")
            self._buffer += chunk

    # --- PCI configuration cycles through 0xcf8/0xcfc -------------------------------------
    def _config_address(self, reg):
        if not 0 <= reg < 0x100:
            raise ValueError(f"register {reg:#x}: only the first 256 bytes reach 0xcf8/0xcfc")
        return 0x80000000 | (self.slot << 11) | (reg & 0xfc)

    @staticmethod
    def _check(reg, size):
        if size not in (1, 2, 4):
            raise ValueError(f"size {size}: want 1, 2 or 4 (bytes) or 8, 16, 32 (bits)")
        if reg % size:
            raise ValueError(f"register {reg:#x} is not aligned for a {size}-byte access")

    @staticmethod
    def _size(size):
        return {8: 1, 16: 2, 32: 4}.get(size, size)

    def config_read(self, reg, size, timeout=None):
        """Reads `size` (1/2/4 bytes, or 8/16/32 bits) of the device's configuration space
        at `reg` through QEMU, as the guest would: outl 0xcf8, then in[bwl] 0xcfc+lane."""
        size = self._size(size)
        self._check(reg, size)
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        with self._lock:
            self.command(f"outl 0xcf8 {self._config_address(reg):#x}", timeout)
            return self.command_int(f"{op} {0xcfc + (reg & 3):#x}", timeout)

    def config_write(self, reg, value, size, timeout=None):
        """Writes `value` (1/2/4 bytes, or 8/16/32 bits) to configuration space at `reg`."""
        size = self._size(size)
        self._check(reg, size)
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"value {value:#x} does not fit {size} bytes")
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        with self._lock:
            self.command(f"outl 0xcf8 {self._config_address(reg):#x}", timeout)
            self.command(f"{op} {0xcfc + (reg & 3):#x} {value:#x}", timeout)

    def vendor_device(self):
        """(vendor id, device id) as the guest sees them."""
        return self.config_read(PCI_VENDOR_ID, 2), self.config_read(PCI_DEVICE_ID, 2)

    # --- capabilities and power management -------------------------------------------------
    def capabilities(self):
        """[(offset, id), ...] of the standard capability list (empty without one)."""
        if not self.config_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST:
            return []
        found = []
        pointer = self.config_read(PCI_CAPABILITY_LIST, 1) & 0xfc
        while pointer >= 0x40 and len(found) < 48:  # 48: a loop in the list ends it
            found.append((pointer, self.config_read(pointer, 1)))
            pointer = self.config_read(pointer + 1, 1) & 0xfc
        return found

    def find_capability(self, cap_id):
        """Offset of the first capability with id `cap_id`, or None."""
        for offset, found in self.capabilities():
            if found == cap_id:
                return offset
        return None

    def pm_capability(self):
        """Offset of the PCI power management capability (id 1); QemuError if none."""
        if self._pm_cap is None:
            self._pm_cap = self.find_capability(PCI_CAP_ID_PM)
            if self._pm_cap is None:
                raise QemuError(f"{self.host_address} has no PM capability in the guest's view")
        return self._pm_cap

    def pmcsr(self):
        """The raw 16-bit PMCSR (PM capability + 4)."""
        return self.config_read(self.pm_capability() + PCI_PM_CTRL, 2)

    def power_state(self):
        """'D0', 'D1', 'D2' or 'D3hot': PMCSR bits 1:0 read through QEMU (this config read
        wakes a runtime-suspended device; use wait_power_state/host_sysfs to only watch)."""
        return POWER_STATE_NAMES[self.pmcsr() & PCI_PM_CTRL_STATE_MASK]

    def set_power_state(self, state):
        """Writes PMCSR bits 1:0 (`state`: 'D0', 'D1', 'D2', 'D3hot' or 0-3), keeping the
        other bits (PME_Status, RW1C, is written as 0 so that it is not cleared)."""
        code = POWER_STATES[state] if isinstance(state, str) else int(state)
        if code not in POWER_STATE_NAMES:
            raise ValueError(f"power state {state!r}")
        reg = self.pm_capability() + PCI_PM_CTRL
        with self._lock:
            old = self.config_read(reg, 2)
            new = (old & ~(PCI_PM_CTRL_STATE_MASK | PCI_PM_CTRL_PME_STATUS)) | code
            self.config_write(reg, new, 2)

    # --- BARs and guest memory -------------------------------------------------------------
    def enable_bar0(self, address=0xe0000000):
        """Programs BAR0 (a memory BAR; its upper half 0 if it is 64-bit) to `address` and
        turns on memory decoding (COMMAND bit 1). Returns `address`. Without firmware the
        guest's BARs are unprogrammed, so this comes before any readl of the BAR."""
        with self._lock:
            bar = self.config_read(PCI_BAR0, 4)
            if bar & 1:
                raise QemuError(f"BAR0 of {self.host_address} is an I/O BAR ({bar:#x})")
            self.config_write(PCI_BAR0, address & 0xfffffff0, 4)
            if (bar >> 1) & 3 == 2:  # 64-bit: BAR1 is the upper half
                self.config_write(PCI_BAR0 + 4, 0, 4)
            command = self.config_read(PCI_COMMAND, 2)
            self.config_write(PCI_COMMAND, command | PCI_COMMAND_MEMORY, 2)
        return address

    def bar0(self):
        """BAR0's programmed address (low 32 bits, flags masked)."""
        return self.config_read(PCI_BAR0, 4) & 0xfffffff0

    def readl(self, address, timeout=None):
        """A 32-bit guest-physical memory read (e.g. of a BAR) as an int."""
        return self.command_int(f"readl {address:#x}", timeout)

    def writel(self, address, value, timeout=None):
        """A 32-bit guest-physical memory write."""
        self.command(f"writel {address:#x} {value:#x}", timeout)

    # --- the host's view (never wakes the device) -----------------------------------------
    def host_sysfs(self, attribute):
        """A sysfs attribute of the held device on the host (power_state, power/runtime_status)."""
        return host_sysfs(self.host_address, attribute)

    def wait_power_state(self, state, timeout=5.0):
        """Waits until the host's sysfs power_state reads `state` (sampled every 10 ms;
        sysfs can not be waited on). Returns True if it did, False after `timeout` s."""
        return bool(wait_for(lambda: self.host_sysfs("power_state") == state, timeout))

    def wait_runtime_status(self, status, timeout=5.0):
        """Waits until the host's power/runtime_status reads `status` ('active', 'suspended')."""
        return bool(wait_for(lambda: self.host_sysfs("power/runtime_status") == status, timeout))

    # --- what QEMU holds ---------------------------------------------------------------------
    @property
    def group_path(self):
        """/dev/vfio/N of the held device."""
        return f"/dev/vfio/{iommu_group(self.host_address)}"

    def fds(self):
        """{fd number: link target} of QEMU's open files."""
        found = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                found[int(fd)] = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                pass
        return found

    def device_fd(self):
        """QEMU's fd number of the VFIO device file (link anon_inode:[vfio-device]), or None.
        With pidfd_open + pidfd_getfd another process can duplicate it."""
        for fd, target in sorted(self.fds().items()):
            if target == "anon_inode:[vfio-device]":
                return fd
        return None

    def fdinfo(self, fd=None):
        """{key: value} of /proc/PID/fdinfo/FD (default: the device fd). On kernels >= 6.18
        (7.x in the lab) it has 'vfio-device-syspath'; 6.1 has no such line."""
        fd = self.device_fd() if fd is None else fd
        if fd is None:
            raise QemuError(f"QEMU (pid {self.pid}) holds no vfio device fd")
        info = {}
        with open(f"/proc/{self.pid}/fdinfo/{fd}") as f:
            for text in f:
                key, _, value = text.partition(":")
                info[key.strip()] = value.strip()
        return info


def _main(argv):
    """Smoke sequence for manual use: python3 qtest_guest.py ADDR [SLOT]."""
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        print(f"usage: {argv[0]} PCI_ADDRESS [GUEST_SLOT]   (a device bound to vfio-pci)", file=sys.stderr)
        return 2
    address = argv[1]
    slot = int(argv[2], 0) if len(argv) == 3 else 5

    def host():
        return f"host {host_sysfs(address, 'power_state')}/{host_sysfs(address, 'power/runtime_status')}"

    def step(text):
        print(f"{time.monotonic() - t0:7.3f}s  {text}", flush=True)

    t0 = time.monotonic()
    step(f"before QEMU: {host()}")
    with QemuGuest(address, slot) as guest:
        step(f"QEMU pid {guest.pid} answered after {guest.start_seconds:.2f} s; holds {guest.group_path}: "
             f"{guest.pid in holders(guest.group_path)}; {host()}")
        vendor, device = guest.vendor_device()
        step(f"guest sees {vendor:04x}:{device:04x}, capabilities "
             + " ".join(f"{cid:#04x}@{off:#04x}" for off, cid in guest.capabilities()))
        pm = guest.pm_capability()
        step(f"PM capability at {pm:#04x}, PMCSR {guest.pmcsr():#06x} ({guest.power_state()})")
        guest.set_power_state("D3hot")
        guest.wait_power_state("D3hot")
        step(f"guest wrote D3hot: guest reads {guest.power_state()}, {host()}")
        guest.set_power_state("D0")
        guest.wait_power_state("D0")
        step(f"guest wrote D0: guest reads {guest.power_state()}, {host()}")
        bar = guest.enable_bar0()
        step(f"BAR0 at {bar:#x}: readl = {guest.readl(bar):#010x}; QEMU alive: {guest.alive()}")
        info = guest.fdinfo()
        step(f"device fd {guest.device_fd()}: vfio-device-syspath = {info.get('vfio-device-syspath', '(none)')}")
        status = guest.kill()
        step(f"QEMU killed (status {status}); {host()}")
    wait_for(lambda: host_sysfs(address, "power/runtime_status") == "suspended", 5)
    step(f"afterwards: {host()}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
