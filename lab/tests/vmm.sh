#!/bin/bash
# The lab's VM test, as the systemd-mode guest runs it: vfio-powerd installed with the NIC as a
# `vmm` device (vmm_setup.sh), then a VM holding it (vmm_under_systemd.py).
set -euo pipefail
here=$(dirname "$0")
export LAB_TEST_GUEST_D3_INTERVAL_MS=${LAB_TEST_GUEST_D3_INTERVAL_MS:-500}
export LAB_TEST_REARM=${LAB_TEST_REARM:-1}
"$here/vmm_setup.sh"
exec /usr/bin/python3 "$here/vmm_under_systemd.py"
