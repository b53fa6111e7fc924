#!/bin/bash
# The lab's package test, as the systemd-mode guest runs it: the .deb `make deb` built,
# installed, run, removed and purged with apt (package_under_systemd.py).
set -euo pipefail
here=$(dirname "$0")
# /usr/bin/python3, not a pyenv shim from the host's PATH (9-42 s to start in the guest).
exec /usr/bin/python3 "$here/package_under_systemd.py"
