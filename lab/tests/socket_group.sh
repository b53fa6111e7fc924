#!/bin/bash
# Lets a group at the control socket as an operator does: socket_group (and admin_group) in
# vfio-powerd.conf's [daemon], and the same group as SocketGroup= in a drop-in for
# vfio-powerd.socket (systemd makes the socket; the daemon only checks the two agree). Then
# daemon-reload. Used by the lab's daemon and package tests.
#
# Usage: socket_group.sh GROUP [ADMIN_GROUP]
set -euo pipefail
group=$1 admin=${2:-}
conf=/etc/vfio-powerd/vfio-powerd.conf
lines="socket_group = \"$group\""
[ -z "$admin" ] || lines+="\nadmin_group = \"$admin\""
grep -q '^\[daemon\]$' "$conf" || { echo "socket_group.sh: $conf has no [daemon] table" >&2; exit 1; }
sed -i "0,/^\[daemon\]\$/s//[daemon]\n$lines/" "$conf"
install -d /etc/systemd/system/vfio-powerd.socket.d
printf '[Socket]\nSocketGroup=%s\n' "$group" > /etc/systemd/system/vfio-powerd.socket.d/group.conf
systemctl daemon-reload
