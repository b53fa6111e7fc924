#!/bin/sh
# A Proxmox VE hookscript: tells vfio-powerd the moment a VM with passthrough devices starts.
#
# Proxmox's qm starts QEMU on the host's /dev, where vfio-powerd sees the open by itself;
# this hook only makes the adoption immediate and explicit. Install:
#   cp proxmox-hookscript.sh /var/lib/vz/snippets/vfio-powerd.sh && chmod 755 /var/lib/vz/snippets/vfio-powerd.sh
#   qm set VMID --hookscript local:snippets/vfio-powerd.sh
# Proxmox calls it as `SCRIPT VMID PHASE`.
[ "$2" = "post-start" ] || exit 0
pid=$(cat "/run/qemu-server/$1.pid" 2>/dev/null) || exit 0
# hostpci0: 0000:01:00.0,pcie=1   (or 01:00 for all functions: adopt looks at function 0)
qm config "$1" | sed -n 's/^hostpci[0-9]*: \([0-9a-f:.]*\).*/\1/p' | while read -r device; do
	case $device in *.*) ;; *) device=$device.0 ;; esac
	vfio-powerctl adopt "$device" --pid "$pid" >/dev/null 2>&1 || logger -t vfio-powerd-hook "adopt $device failed"
done
exit 0
