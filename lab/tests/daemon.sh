#!/bin/bash
# The lab's daemon test, as the systemd-mode guest runs it: install, then test.
set -euo pipefail
here=$(dirname "$0")
# A short watchdog so the restart test is quick, but with room for a TCG guest on a busy
# host: device opens run on the daemon's loop and resume the device (4s proved too tight).
LAB_TEST_WATCHDOG=${LAB_TEST_WATCHDOG:-10s} "$here/daemon_setup.sh"
# /usr/bin/python3, not a pyenv shim from the host's PATH (9-42 s to start in the guest).
exec /usr/bin/python3 "$here/daemon_under_systemd.py"
