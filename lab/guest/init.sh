#!/bin/sh
# /init of the lab guest's initramfs (busybox ash, PID 1). lab/lab.sh copies this file into
# every run's initramfs, so edits take effect on the next run without rebuilding any cache.
#
# It loads the vfio modules, binds the lab's devices to vfio-pci, mounts the host's root
# (9p, read-only) under a tmpfs overlay and then, depending on lab.mode= on the kernel
# command line:
#   run      chroot into the overlay and run lab/guest/runner.sh (the user's command)
#   systemd  write lab.target + lab-test.service, switch_root, exec systemd as PID 1
#   shell    chroot into the overlay and run an interactive bash on ttyS0
# Serial ports: ttyS0 console (host: console log), ttyS1 command stdout, ttyS2 command
# stderr, ttyS3 control channel (LAB_READY, LAB_EXIT=N, LAB_SETUP_FAILED ...).

export PATH=/bin:/sbin
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

log() {
	read -r up _ < /proc/uptime
	echo "lab-init: [$up] $*"
}
ctl() { echo "$*" > /dev/ttyS3; }
fail() {
	log "FATAL: $*"
	ctl "LAB_SETUP_FAILED $*"
	sync
	poweroff -f
	sleep 60
}

mode=run rundir='' vfio_ids='' spare_ids='' moddir='' keeps=''
read -r cmdline < /proc/cmdline
for word in $cmdline; do
	case "$word" in
	lab.mode=*) mode=${word#lab.mode=} ;;
	lab.run=*) rundir=${word#lab.run=} ;;
	lab.vfio=*) vfio_ids=$(echo "${word#lab.vfio=}" | tr , ' ') ;;
	lab.spare=*) spare_ids=$(echo "${word#lab.spare=}" | tr , ' ') ;;
	lab.moddir=*) moddir=${word#lab.moddir=} ;;
	lab.keep=*) keeps=$(echo "${word#lab.keep=}" | tr , ' ') ;;
	esac
done
krel=$(uname -r)
hostname lab
log "kernel $krel, mode $mode"

# --- modules -------------------------------------------------------------------------------
# /lab/modules.list: one path per line (relative to /lab/modules), dependency order.
while read -r mod; do
	[ -n "$mod" ] || continue
	out=$(insmod "/lab/modules/$mod" 2>&1) || case "$out" in
		*"File exists"*) ;;
		*) fail "insmod $mod: $out" ;;
		esac
done < /lab/modules.list
[ -d /sys/bus/pci/drivers/vfio-pci ] || fail "vfio-pci driver not registered"
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio missing"

# --- devices -------------------------------------------------------------------------------
# Discovered by vendor:device (lab.vfio= / lab.spare= from lab.sh, in the wanted order).
# Shell builtins only in these loops: every fork+exec costs milliseconds under TCG.
rd() { read -r REPLY < "$1" || REPLY=; }
find_ids() { # $1 = vendor:device[:subsystem_vendor:subsystem_device] (hex, no 0x)
	# prints the long addresses of the matching devices (the glob sorts them)
	want='' n=0
	IFS=:
	for part in $1; do
		want="${want:+$want:}0x$part" n=$((n + 1))
	done
	IFS=' 	
'
	for d in /sys/bus/pci/devices/*; do
		rd "$d/vendor"; have=$REPLY
		rd "$d/device"; have=$have:$REPLY
		if [ $n = 4 ]; then
			rd "$d/subsystem_vendor"; have=$have:$REPLY
			rd "$d/subsystem_device"; have=$have:$REPLY
		fi
		[ "$have" = "$want" ] && echo "${d##*/}"
	done
}
vfio_devices=
for id in $vfio_ids; do
	for bdf in $(find_ids "$id"); do
		d=/sys/bus/pci/devices/$bdf
		echo vfio-pci > "$d/driver_override" || fail "driver_override $bdf"
		if [ -e "$d/driver" ]; then echo "$bdf" > "$d/driver/unbind"; fi
		echo "$bdf" > /sys/bus/pci/drivers_probe
		drv=$(readlink "$d/driver")
		[ "${drv##*/}" = vfio-pci ] || fail "$bdf ($id) did not bind to vfio-pci (driver: ${drv:-none})"
		vfio_devices="$vfio_devices $bdf"
	done
done
vfio_devices=${vfio_devices# }
[ -n "$vfio_devices" ] || fail "no device matching $vfio_ids found"
spare_device=
for id in $spare_ids; do
	for bdf in $(find_ids "$id"); do
		[ -z "$spare_device" ] && spare_device=$bdf
	done
done
[ -n "$spare_device" ] || fail "no spare device matching $spare_ids found"
[ -e "/sys/bus/pci/devices/$spare_device/driver" ] && fail "spare $spare_device is bound to a driver"

# Let freshly bound devices reach their idle state (runtime suspend) before anything runs.
i=0
while [ $i -lt 40 ]; do
	busy=
	for bdf in $vfio_devices; do
		rd "/sys/bus/pci/devices/$bdf/power/runtime_status"
		[ "$REPLY" = suspended ] || busy=1
	done
	[ -z "$busy" ] && break
	sleep 0.05
	i=$((i + 1))
done
for bdf in $vfio_devices $spare_device; do
	d=/sys/bus/pci/devices/$bdf
	line=$bdf
	for f in vendor device subsystem_vendor subsystem_device power/runtime_status power_state; do
		rd "$d/$f"
		line="$line $REPLY"
	done
	[ "$bdf" = "$spare_device" ] && line="$line (spare)"
	log "$line"
done

# --- root: host / over 9p (read-only) + tmpfs overlay ----------------------------------------
mkdir -p /mnt/host /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /mnt/host ||
	fail "mount 9p hostroot"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot ||
	fail "mount overlay"
n=/newroot
mount -t proc proc $n/proc
mount -t sysfs sysfs $n/sys
mount -t devtmpfs devtmpfs $n/dev
mkdir -p $n/dev/pts $n/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $n/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $n/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $n/run
# The guest gets its own /tmp; host directories under /tmp that the run needs (a checkout
# in /tmp, the current directory: lab.keep=) stay visible at the same paths.
i=0 kept=''
for p in $keeps; do
	[ -d "$n$p" ] || continue
	i=$((i + 1))
	mkdir -p /mnt/keep/$i && mount --bind "$n$p" /mnt/keep/$i && kept="$kept $i:$p"
done
mount -t tmpfs -o mode=1777 tmpfs $n/tmp
for k in $kept; do
	mkdir -p "$n${k#*:}" && mount --move "/mnt/keep/${k%%:*}" "$n${k#*:}"
done
rm -f $n/.dockerenv
# The guest kernel's modules (decompressed tree in lab/cache, seen through 9p) at the usual
# place, so `modprobe` works inside the guest.
if [ -n "$moddir" ] && [ -d "$n$moddir" ]; then
	mkdir -p "$n/lib/modules/$krel" && mount --bind "$n$moddir" "$n/lib/modules/$krel"
fi

mkdir -p $n/run/lab
# systemd EnvironmentFile format; also valid shell (values contain no quotes or $).
cat > $n/run/lab/environment <<EOF
LAB=1
LAB_MODE="$mode"
LAB_KERNEL_RELEASE="$krel"
LAB_VFIO_DEVICES="$vfio_devices"
LAB_SPARE_DEVICE="$spare_device"
LAB_RUN_DIR="$rundir"
EOF
runner=
if [ -n "$rundir" ]; then
	runner=$(sed -n 's/^LAB_RUNNER=//p' "$n$rundir/spec.env")
	if [ -z "$runner" ] || [ ! -f "$n$runner" ]; then fail "runner script not found via $rundir/spec.env"; fi
fi

log "root ready"
ctl "LAB_READY kernel=$krel vfio=$vfio_devices spare=$spare_device"

case "$mode" in
run)
	chroot $n /bin/bash "$runner" plain "$rundir"
	log "runner exited $?"
	;;
shell)
	log "interactive shell; exit it to power off"
	chroot $n /bin/bash "$runner" shell "$rundir" < /dev/ttyS0 > /dev/ttyS0 2>&1
	;;
systemd)
	u=$n/etc/systemd/system
	mkdir -p $u
	# lab.target is the whole boot: lab-test.service and, through its default dependencies,
	# sysinit.target + basic.target (journald, tmpfiles, sockets) minus the masked units.
	# Type=exec: the boot finishes (is-system-running: running) while the test runs, as on a
	# real host; the test's exit powers the guest off either way.
	cat > $u/lab.target <<EOF
[Unit]
Description=vfio-powerd lab
Requires=lab-test.service
After=lab-test.service
AllowIsolate=yes
EOF
	cat > $u/lab-test.service <<EOF
[Unit]
Description=vfio-powerd lab test
Requires=systemd-journald.socket
After=systemd-journald.socket systemd-journald.service systemd-tmpfiles-setup.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=exec
EnvironmentFile=/run/lab/environment
ExecStart=/bin/bash $runner tee $rundir
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF
	# Units of the host's root that only cost time (or go wrong) in this guest, and every
	# generator (systemd.generator(7): a /dev/null symlink in /etc masks one).
	read -r masks < "$n$rundir/masks"
	for unit in $masks; do
		ln -sf /dev/null "$u/$unit"
	done
	mkdir -p $n/etc/systemd/system-generators
	for g in "$n"/lib/systemd/system-generators/* "$n"/usr/lib/systemd/system-generators/*; do
		[ -e "$g" ] && ln -sf /dev/null "$n/etc/systemd/system-generators/${g##*/}"
	done
	sync
	exec switch_root $n /lib/systemd/systemd
	;;
*) fail "unknown lab.mode=$mode" ;;
esac
sync
poweroff -f
sleep 60
