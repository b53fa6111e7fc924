#!/bin/bash
# vfio-powerd VM lab: boots a Debian kernel in QEMU (TCG) with emulated PCI devices bound to
# vfio-pci behind an emulated Intel IOMMU, and runs a command (or systemd) in it on top of
# the host's own root file system. See lab/README.md.
#
#   lab/lab.sh prepare
#   lab/lab.sh run     [--timeout SECS] -- CMD [ARGS...]
#   lab/lab.sh systemd [--timeout SECS] -- SCRIPT [ARGS...]
#   lab/lab.sh shell
#   lab/lab.sh kernel            (prints the kernel release LAB_KERNEL resolves to)
#
# LAB_KERNEL=6.1 (default) | newest | an exact release such as 6.1.0-56-amd64 or 7.3.4+deb13-amd64
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=$LAB_DIR/cache
WORK=$LAB_DIR/work
# Bump when the layout of a kernel's cache directory or of the base initramfs changes.
RECIPE=1

# --- the guest's topology ------------------------------------------------------------------
# Managed devices, bound to vfio-pci in this order (LAB_VFIO_DEVICES), found in the guest by
# vendor:device[:subsystem vendor:subsystem device]: e1000e (Intel 82574L) then QEMU's NVMe
# controller. The spare (LAB_SPARE_DEVICE) is a second e1000e, told apart by its subsystem
# id 0x4c41 ("LA"); it is present but left without a driver. Of QEMU's PCI devices only
# e1000e and nvme have a PCI PM capability (power_state reaches D3hot), so the spare is one
# too. Each device sits on the root complex with a fixed slot: each is its own IOMMU group
# and every kernel gives the same addresses (00:02.0, 00:03.0, spare 00:04.0).
VFIO_IDS=8086:10d3:8086:0000,1b36:0010
SPARE_ID=8086:10d3:8086:4c41
# shellcheck disable=SC2054 # commas separate QEMU sub-options, not array elements
QEMU_DEVICES=(
	-device intel-iommu,intremap=on
	-netdev user,id=n0,restrict=on
	-device e1000e,romfile=,netdev=n0,addr=0x2
	-device nvme,serial=lab0,addr=0x3
	-netdev user,id=n1,restrict=on
	-device e1000e,romfile=,netdev=n1,addr=0x4,subsys=0x4c41
	-fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
	-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=0x5
)
# Modules the initramfs loads (with their dependencies, in dependency order). Optional ones
# may not exist as modules on every kernel (vfio_virqfd is built into vfio on >= 6.2;
# virtio_pci is built in on 7.x).
MODULES_REQUIRED=(irqbypass vfio vfio_iommu_type1 vfio_pci_core vfio_pci virtio_pci 9pnet_virtio 9p overlay)
MODULES_OPTIONAL=(vfio_virqfd)
# Host packages the lab needs (command -> Debian package).
HOST_TOOLS=(
	qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod modprobe:kmod xz:xz-utils
	zstd:zstd timeout:coreutils flock:util-linux dpkg-deb:dpkg apt-get:apt
)
# Units of the host's root that are masked in the systemd guest (besides every generator):
# they cost seconds under TCG, or wait for hardware, network or a console the guest lacks.
# journald, tmpfiles-setup, dbus.socket and the targets stay. modprobe@.service masks all
# its instances.
MASK_UNITS=(
	timers.target getty.target getty@.service serial-getty@.service console-getty.service
	systemd-timesyncd.service systemd-pstore.service systemd-udevd.service
	systemd-udev-trigger.service systemd-udev-settle.service systemd-networkd.service
	systemd-networkd-wait-online.service networking.service postgresql.service
	systemd-firstboot.service systemd-machine-id-commit.service apt-daily.service
	apt-daily-upgrade.service man-db.service e2scrub_reap.service remote-fs.target
	systemd-logind.service systemd-remount-fs.service systemd-binfmt.service
	proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount dev-hugepages.mount
	sys-fs-fuse-connections.mount sys-kernel-config.mount kmod-static-nodes.service
	systemd-modules-load.service modprobe@.service systemd-random-seed.service
	systemd-sysusers.service systemd-sysctl.service systemd-tmpfiles-setup-dev.service
	systemd-journal-flush.service systemd-update-utmp.service systemd-repart.service
	systemd-pcrphase-sysinit.service systemd-pcrphase.service systemd-hwdb-update.service
	ldconfig.service systemd-journal-catalog-update.service systemd-update-done.service
	systemd-ask-password-console.path systemd-ask-password-wall.path
)

# The parts, by what they do (lab/lib/): shared helpers, kernel resolution and its cache,
# the initramfs, and running QEMU. This file keeps the constants and the orchestration.
for part in common kernel initramfs qemu; do
	# shellcheck source=/dev/null
	. "$LAB_DIR/lib/$part.sh"
done

usage() {
	cat >&2 <<'EOF'
usage: lab/lab.sh prepare
       lab/lab.sh run     [--timeout SECS] -- CMD [ARGS...]
       lab/lab.sh systemd [--timeout SECS] -- SCRIPT [ARGS...]
       lab/lab.sh shell
       lab/lab.sh kernel
environment: LAB_KERNEL=6.1|newest|RELEASE  LAB_ACCEL=tcg|kvm  LAB_MEM (MiB)  LAB_SMP
             LAB_PASS_ENV="NAME ..."  LAB_TEST_*  LAB_CONSOLE=1  LAB_KEEP=1  LAB_REFRESH=1
             LAB_APPEND="kernel args"  LAB_QEMU_ARGS="extra qemu args"
EOF
	exit 2
}

prepare_locked() {
	resolve_kernel
	prepare_kernel
}

prepare() {
	ensure_host_tools
	with_lock prepare_locked
}

parse_run_args() { # sets TIMEOUT and ARGV
	TIMEOUT=${LAB_TIMEOUT:-180}
	ARGV=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
		--timeout=*) TIMEOUT=${1#--timeout=}; shift ;;
		--) shift; ARGV=("$@"); break ;;
		-*) usage ;;
		*) ARGV=("$@"); break ;;
		esac
	done
	[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds"
	[ ${#ARGV[@]} -gt 0 ] || usage
}

main() {
	[ $# -ge 1 ] || usage
	trap cleanup EXIT
	local cmd=$1
	shift
	case "$cmd" in
	prepare) prepare; log "ready: kernel $KREL ($(cat "$CACHE/$KREL/kernel.type"))" ;;
	kernel) resolve_kernel; echo "$KREL" ;;
	run | systemd)
		parse_run_args "$@"
		run_guest "$cmd" "$TIMEOUT" "${ARGV[@]}"
		exit "$EXIT_STATUS"
		;;
	shell)
		run_guest shell 0 /bin/bash
		exit "$EXIT_STATUS"
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
