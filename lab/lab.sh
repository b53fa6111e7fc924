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

log() { echo "lab: $*" >&2; }
die() {
	echo "lab: error: $*" >&2
	exit 2
}

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

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (apt-get, mknod)"; }

# Serialise everything that writes the cache; concurrent runs are otherwise independent.
with_lock() {
	mkdir -p "$CACHE"
	exec 9> "$CACHE/.lock"
	flock 9
	"$@"
	flock -u 9
	exec 9>&-
}

# --- host packages ---------------------------------------------------------------------------
ensure_host_tools() {
	local missing=() entry cmd pkg
	for entry in "${HOST_TOOLS[@]}"; do
		cmd=${entry%%:*} pkg=${entry##*:}
		command -v "$cmd" > /dev/null 2>&1 || missing+=("$pkg")
	done
	# The initramfs needs the static busybox (the plain busybox package is dynamic).
	dpkg-query -W -f='${Status}' busybox-static 2> /dev/null | grep -c 'ok installed' > /dev/null || missing+=(busybox-static)
	if [ ${#missing[@]} -eq 0 ]; then return 0; fi
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	need_root "installing ${missing[*]}"
	log "installing host packages: ${missing[*]}"
	# apt-get update only when some package has no install candidate yet.
	local p
	for p in "${missing[@]}"; do
		if ! apt-cache policy "$p" 2> /dev/null | grep -c 'Candidate: [^(]' > /dev/null; then
			apt-get update -q >&2
			break
		fi
	done
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# --- apt contexts --------------------------------------------------------------------------
# "host": the machine's own apt configuration (Debian 12: bookworm + bookworm-security).
# "bpo":  a private trixie-backports configuration under lab/cache/apt-trixie-backports; the
#         machine's sources, lists and cache are never touched.
BPO=$CACHE/apt-trixie-backports
apt_opts() { # $1 = context
	APT_OPTS=(-o APT::Sandbox::User=root)
	if [ "$1" = bpo ]; then
		APT_OPTS+=(
			-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$BPO/sources.list.d"
			-o "Dir::State::Lists=$BPO/lists" -o "Dir::Cache=$BPO/cache"
			-o Dir::Etc::preferences=/dev/null -o Dir::Etc::preferencesparts=/dev/null
		)
	fi
}

bpo_update() { # refresh the private lists when missing, older than a day, or LAB_REFRESH=1
	mkdir -p "$BPO/sources.list.d" "$BPO/lists/partial" "$BPO/cache/archives/partial"
	# debian-archive-keyring (2023.3+deb12u2 on Debian 12) carries the trixie archive keys.
	cat > "$BPO/sources.list.d/trixie-backports.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie-backports
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	local stamp=$BPO/lists/.updated
	if [ "${LAB_REFRESH:-0}" = 1 ] || [ ! -f "$stamp" ] ||
		[ $(($(date +%s) - $(stat -c %Y "$stamp"))) -gt 86400 ]; then
		apt_opts bpo
		log "apt-get update (private trixie-backports lists)"
		if apt-get "${APT_OPTS[@]}" -q update >&2; then
			touch "$stamp"
		elif [ -f "$stamp" ]; then
			log "warning: apt-get update failed; using the lists from $(date -r "$stamp")"
		else
			return 1
		fi
	fi
}

pkg_exists() { # context package
	apt_opts "$1"
	# (grep -q would end the pipe early: SIGPIPE + pipefail)
	[ -n "$(apt-cache "${APT_OPTS[@]}" show "$2" 2> /dev/null | sed -n '/^Package:/p')" ]
}

meta_release() { # context -> kernel release that linux-image-amd64 depends on
	apt_opts "$1"
	apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 2> /dev/null |
		sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | sed -n 1p
}

newest_cached() { # glob -> newest ready cached release matching it
	local d best=
	for d in "$CACHE"/$1/; do
		[ -f "$d/READY" ] || continue
		d=${d%/}
		best=$(printf '%s\n%s\n' "$best" "${d##*/}" | sed '/^$/d' | sort -V | tail -n1)
	done
	echo "$best"
}

# Sets KREL (kernel release) and KCTX (apt context it comes from).
resolve_kernel() {
	local want=${LAB_KERNEL:-6.1}
	KREL='' KCTX=''
	case "$want" in
	6.1 | default | bookworm)
		KCTX=host
		# apt-cache on the host's full lists takes ~1.5 s: reuse the last answer while the
		# lists are unchanged.
		local memo=$CACHE/default.release
		if [ -s "$memo" ] && [ -f "$CACHE/$(cat "$memo")/READY" ] &&
			[ -z "$(find /var/lib/apt/lists -maxdepth 1 -newer "$memo" -name '*Packages*' -print -quit 2> /dev/null)" ]; then
			KREL=$(cat "$memo")
			return 0
		fi
		KREL=$(meta_release host)
		if [ -z "$KREL" ] && [ "$(id -u)" = 0 ]; then
			log "apt-get update (no linux-image-amd64 in the host's lists)"
			apt-get -q update >&2 || true
			KREL=$(meta_release host)
		fi
		if [ -z "$KREL" ]; then
			KREL=$(newest_cached '6.1.*')
			[ -n "$KREL" ] || die "cannot resolve Debian 12's kernel (apt-cache depends linux-image-amd64)"
			log "warning: apt cannot resolve linux-image-amd64; using cached $KREL"
		fi
		case "$KREL" in 6.1.*) ;; *) log "warning: the host's linux-image-amd64 is $KREL, not 6.1" ;; esac
		mkdir -p "$CACHE" && echo "$KREL" > "$memo"
		;;
	newest | latest | backports)
		KCTX=bpo
		if bpo_update; then KREL=$(meta_release bpo); fi
		if [ -z "$KREL" ]; then
			KREL=$(cat "$CACHE/newest.release" 2> /dev/null || true)
			if [ -z "$KREL" ] || [ ! -f "$CACHE/$KREL/READY" ]; then
				die "cannot resolve the newest kernel from trixie-backports"
			fi
			log "warning: trixie-backports unreachable; using cached $KREL"
		else
			echo "$KREL" > "$CACHE/newest.release"
		fi
		;;
	[0-9]*)
		KREL=$want
		[[ $KREL == *-amd64 ]] || KREL=$KREL-amd64
		if kernel_ready; then
			KCTX=cached
		elif pkg_exists host "linux-image-$KREL"; then
			KCTX=host
		elif bpo_update && { pkg_exists bpo "linux-image-$KREL" || pkg_exists bpo "linux-binary-unsigned-$KREL"; }; then
			KCTX=bpo
		else
			die "no kernel package for release $KREL in bookworm or trixie-backports"
		fi
		;;
	*) die "LAB_KERNEL=$want: use 6.1, newest or a release like 6.1.0-56-amd64" ;;
	esac
	[[ $KREL =~ ^[0-9A-Za-z.+~_-]+$ ]] || die "odd kernel release '$KREL'"
}

# --- per-kernel cache ----------------------------------------------------------------------
# lab/cache/<release>/
#   tree/       the unpacked packages (modules depmod'ed; bind-mounted as /lib/modules in the guest)
#   kernel      what QEMU boots: vmlinux (uncompressed ELF, PVH entry) or the bzImage
#   kernel.type "vmlinux" or "bzImage"
#   base.cpio   initramfs without /init: static busybox, decompressed vfio/9p/overlay modules
#   moddir      path of the modules directory under tree/
#   READY       recipe version; written last
kernel_ready() { [ "$(cat "$CACHE/$KREL/READY" 2> /dev/null)" = "$RECIPE" ]; }

prepare_kernel() {
	kernel_ready && return 0
	need_root "preparing kernel $KREL"
	local dir=$CACHE/$KREL tmp
	tmp=$(mktemp -d "$CACHE/.build-$KREL.XXXXXX")
	BUILD_TMP=$tmp
	log "preparing kernel $KREL from ${KCTX} in $dir"

	# 1. download. Since 6.17 or so linux-image-KREL is a meta package: the image is in
	# linux-binary(-unsigned)-KREL, the modules in linux-modules-KREL, the config in
	# linux-base-KREL. Before that (and on Debian 12) linux-image-KREL(-unsigned) has it all.
	local pkgs=() dep
	if [ "$KCTX" = bpo ]; then bpo_update; fi
	apt_opts "$KCTX"
	for dep in $(apt-cache "${APT_OPTS[@]}" show "linux-image-$KREL" 2> /dev/null |
		sed -n 's/^Depends: //p' | sed -n 1p | tr ',|' '\n' | sed 's/ *(.*//; s/ //g'); do
		case "$dep" in
		"linux-binary-$KREL")
			if pkg_exists "$KCTX" "linux-binary-unsigned-$KREL"; then
				pkgs+=("linux-binary-unsigned-$KREL")
			else
				pkgs+=("$dep")
			fi
			;;
		"linux-modules-$KREL" | "linux-base-$KREL") pkgs+=("$dep") ;;
		esac
	done
	if [ ${#pkgs[@]} -eq 0 ]; then
		if pkg_exists "$KCTX" "linux-binary-unsigned-$KREL"; then
			pkgs=("linux-binary-unsigned-$KREL" "linux-modules-$KREL")
			if pkg_exists "$KCTX" "linux-base-$KREL"; then pkgs+=("linux-base-$KREL"); fi
		elif pkg_exists "$KCTX" "linux-image-$KREL-unsigned"; then
			pkgs=("linux-image-$KREL-unsigned")
		else
			pkgs=("linux-image-$KREL")
		fi
	fi
	local p
	for p in "${pkgs[@]}"; do
		pkg_exists "$KCTX" "$p" || die "package $p (for kernel $KREL) is not in the archive any more"
	done
	mkdir -p "$tmp/debs"
	apt_opts "$KCTX"
	(cd "$tmp/debs" && apt-get "${APT_OPTS[@]}" -q download "${pkgs[@]}" >&2) ||
		die "apt-get download ${pkgs[*]} failed"

	# 2. unpack (never into /boot), depmod
	local deb
	for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/tree"; done
	rm -rf "$tmp/debs"
	local moddir=
	for moddir in "$tmp/tree/lib/modules/$KREL" "$tmp/tree/usr/lib/modules/$KREL"; do
		if [ -d "$moddir/kernel" ]; then break; fi
	done
	[ -d "$moddir/kernel" ] || die "no modules directory for $KREL in ${pkgs[*]}"
	local base=${moddir%/lib/modules/*}
	depmod -b "$base" "$KREL"

	# 3. the kernel image: prefer the uncompressed vmlinux (PVH entry, boots ~2x faster under TCG)
	local vmlinuz='' config='' f
	for f in "$tmp/tree/boot/vmlinuz-$KREL" "$moddir/vmlinuz.unsigned" "$moddir/vmlinuz"; do
		if [ -f "$f" ]; then vmlinuz=$f && break; fi
	done
	[ -n "$vmlinuz" ] || die "no vmlinuz in ${pkgs[*]}"
	for f in "$tmp/tree/boot/config-$KREL" "$moddir/config"; do
		if [ -f "$f" ]; then config=$f && break; fi
	done
	if [ -n "$config" ] && grep -q '^CONFIG_PVH=y' "$config" && extract_vmlinux "$vmlinuz" "$tmp/kernel"; then
		echo vmlinux > "$tmp/kernel.type"
	else
		cp "$vmlinuz" "$tmp/kernel"
		echo bzImage > "$tmp/kernel.type"
	fi

	# 4. base initramfs
	build_base_initramfs "$tmp" "$base" "$moddir"

	echo "${moddir#"$tmp/"}" > "$tmp/moddir"
	echo "$RECIPE" > "$tmp/READY"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	BUILD_TMP=''
	chmod 755 "$dir"
	# depmod wrote absolute-free files; nothing inside refers to $tmp.
	log "kernel $KREL ready ($(cat "$dir/kernel.type"), $(du -sh "$dir" | cut -f1))"
}

# The bzImage's setup header says where the compressed payload is (payload_offset at 0x248,
# payload_length at 0x24c, relative to the protected-mode code after the setup sectors).
# Debian 12's payload is xz (starts FD 37 7A 58 5A 00), 7.x's is zstd (28 B5 2F FD); the
# kernel's build appends a 4-byte size after the stream.
extract_vmlinux() { # vmlinuz out
	local f=$1 out=$2 ss po pl start magic
	ss=$(od -An -tu1 -j $((0x1f1)) -N1 "$f" | tr -d ' ')
	if [ "$ss" = 0 ]; then ss=4; fi
	po=$(od -An -tu4 -j $((0x248)) -N4 "$f" | tr -d ' ')
	pl=$(od -An -tu4 -j $((0x24c)) -N4 "$f" | tr -d ' ')
	start=$(((ss + 1) * 512 + po))
	magic=$(od -An -tx1 -j "$start" -N6 "$f" | tr -d ' ')
	case "$magic" in
	fd377a585a00) tail -c +$((start + 1)) "$f" | head -c "$pl" | xz -dc --single-stream > "$out" 2> /dev/null || true ;;
	28b52ffd*) tail -c +$((start + 1)) "$f" | head -c $((pl - 4)) | zstd -dcq > "$out" 2> /dev/null || true ;;
	*) return 1 ;;
	esac
	[ "$(od -An -tx1 -N4 "$out" 2> /dev/null | tr -d ' ')" = 7f454c46 ] || {
		rm -f "$out"
		return 1
	}
}

build_base_initramfs() { # tmpdir base moddir
	local tmp=$1 base=$2 moddir=$3 root=$1/initramfs m paths=() line p rel
	mkdir -p "$root"/{bin,dev,proc,sys,mnt,newroot,lab/modules}
	cp /bin/busybox "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	mknod -m 600 "$root/dev/console" c 5 1
	mknod -m 666 "$root/dev/null" c 1 3
	for m in "${MODULES_REQUIRED[@]}" "${MODULES_OPTIONAL[@]}"; do
		if ! out=$(modprobe -d "$base" -S "$KREL" --show-depends "$m" 2>&1); then
			[[ " ${MODULES_OPTIONAL[*]} " == *" $m "* ]] && continue
			die "module $m: $out"
		fi
		while read -r line; do
			case "$line" in insmod\ *) p=${line#insmod } p=${p%% *} paths+=("$p") ;; esac
		done <<< "$out"
	done
	: > "$root/lab/modules.list"
	declare -A seen=()
	for p in "${paths[@]}"; do
		[ -n "${seen[$p]:-}" ] && continue
		seen[$p]=1
		rel=${p#"$moddir/"}
		mkdir -p "$root/lab/modules/$(dirname "$rel")"
		case "$rel" in
		*.xz) rel=${rel%.xz} && xz -dc "$p" > "$root/lab/modules/$rel" ;;
		*.zst) rel=${rel%.zst} && zstd -dcq "$p" > "$root/lab/modules/$rel" ;;
		*.gz) rel=${rel%.gz} && gzip -dc "$p" > "$root/lab/modules/$rel" ;;
		*) cp "$p" "$root/lab/modules/$rel" ;;
		esac
		echo "$rel" >> "$root/lab/modules.list"
	done
	(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc -R 0:0 --quiet) > "$tmp/base.cpio"
	rm -rf "$root"
}

prepare_locked() {
	resolve_kernel
	prepare_kernel
}

prepare() {
	ensure_host_tools
	with_lock prepare_locked
}

# --- running ---------------------------------------------------------------------------------
RUN='' QEMU_PID='' BUILD_TMP='' EXIT_STATUS=125
RELAYS=()
cleanup() {
	if [ -n "$BUILD_TMP" ]; then rm -rf "$BUILD_TMP"; fi
	if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2> /dev/null || true; fi
	local p
	for p in "${RELAYS[@]}"; do kill "$p" 2> /dev/null || true; done
	if [ -n "$RUN" ]; then
		if [ "${LAB_KEEP:-0}" = 1 ]; then log "kept $RUN"; else rm -rf "$RUN"; fi
	fi
}
on_signal() {
	log "interrupted"
	cleanup
	trap - EXIT
	exit 130
}

# Writes $RUN/spec.env (plain KEY=VALUE, read by the initramfs), $RUN/masks (units masked
# under systemd) and $RUN/spec.sh (bash, sourced by the runner in the guest: cwd, argv,
# passed-through environment).
write_spec() { # mode argv...
	local mode=$1 name
	shift
	echo "LAB_RUNNER=$LAB_DIR/guest/runner.sh" > "$RUN/spec.env"
	echo "${MASK_UNITS[*]}" > "$RUN/masks"
	{
		printf 'LAB_CWD=%q\n' "$PWD"
		printf 'LAB_ARGV=('
		printf ' %q' "$@"
		printf ' )\n'
		printf 'export PATH=%q\n' "$PATH"
		printf 'export HOME=%q\n' "${HOME:-/root}"
		for name in $(compgen -e); do
			case "$name" in
			LAB_TEST_*) printf 'export %s=%q\n' "$name" "${!name}" ;;
			esac
		done
		for name in ${LAB_PASS_ENV:+${LAB_PASS_ENV//,/ }}; do
			[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "LAB_PASS_ENV: bad name '$name'"
			if [ -n "${!name+x}" ]; then printf 'export %s=%q\n' "$name" "${!name}"; fi
		done
	} > "$RUN/spec.sh"
}

qemu_cmd() { # mode -> QEMU array
	local mode=$1 kdir=$CACHE/$KREL accel machine cpu append
	accel=${LAB_ACCEL:-tcg}
	case "$accel" in
	tcg) machine=q35,accel=tcg cpu=max ;;
	kvm) machine=q35,accel=kvm,kernel-irqchip=split cpu=host ;;
	*) die "LAB_ACCEL=$accel: use tcg or kvm" ;;
	esac
	append="console=ttyS0 panic=-1 intel_iommu=on 8250.nr_uarts=4 rdinit=/init"
	append+=" lab.mode=$mode lab.run=$RUN lab.vfio=$VFIO_IDS lab.spare=$SPARE_ID"
	append+=" lab.moddir=$kdir/$(cat "$kdir/moddir")"
	if [ "$mode" = systemd ]; then append+=" systemd.unit=lab.target systemd.show_status=auto"; fi
	# host directories under /tmp the guest must still see over its own tmpfs /tmp
	local keep='' p rest top
	for p in "$LAB_DIR" "$PWD"; do
		case "$p" in
		/tmp/?*)
			rest=${p#/tmp/} top=/tmp/${rest%%/*}
			case ",$keep," in *",$top,"*) ;; *) keep=${keep:+$keep,}$top ;; esac
			;;
		esac
	done
	if [ -n "$keep" ]; then append+=" lab.keep=$keep"; fi
	append+=" ${LAB_APPEND:-}"
	QEMU=(
		qemu-system-x86_64 -nodefaults -no-user-config -no-reboot
		-machine "$machine" -cpu "$cpu" -smp "${LAB_SMP:-1}" -m "${LAB_MEM:-2048}"
		-display none -vga none
		-kernel "$kdir/kernel" -initrd "$RUN/initrd" -append "$append"
		"${QEMU_DEVICES[@]}"
	)
	# shellcheck disable=SC2206 # word splitting is the point
	if [ -n "${LAB_QEMU_ARGS:-}" ]; then QEMU+=(${LAB_QEMU_ARGS}); fi
	# ttyS0 console (a file, shown on failure), ttyS1/ttyS2 the command's stdout/stderr,
	# ttyS3 the control channel. The streams go through FIFOs that `cat` relays onto our own
	# stdout/stderr: QEMU reopening /dev/stdout would get its own file offset and overwrite
	# (or be overwritten by) what others write to the same file.
	if [ "$mode" = shell ]; then
		QEMU+=(-serial mon:stdio)
	elif [ "${LAB_CONSOLE:-0}" = 1 ]; then
		QEMU+=(-chardev "file,id=con,path=$RUN/con.fifo" -serial chardev:con)
	else
		QEMU+=(-chardev "file,id=con,path=$RUN/console.log" -serial chardev:con)
	fi
	QEMU+=(-chardev "file,id=out,path=$RUN/out.fifo" -serial chardev:out)
	QEMU+=(-chardev "file,id=err,path=$RUN/err.fifo" -serial chardev:err)
	QEMU+=(-chardev "file,id=ctl,path=$RUN/ctl" -serial chardev:ctl)
}

run_guest() { # mode timeout argv...
	local mode=$1 timeout=$2
	shift 2
	local t0 t1 rc status='' secs cmdsecs
	t0=$(date +%s.%N)
	prepare
	case "$LAB_DIR$PWD" in *[[:space:]]*) die "paths with whitespace are not supported ($LAB_DIR, $PWD)" ;; esac
	mkdir -p "$WORK"
	RUN=$(mktemp -d "$WORK/run-XXXXXX")
	trap cleanup EXIT
	trap on_signal INT TERM HUP
	write_spec "$mode" "$@"
	# per-run initramfs: the cached base + /init from lab/guest/init.sh
	mkdir -p "$RUN/init.d"
	install -m 0755 "$LAB_DIR/guest/init.sh" "$RUN/init.d/init"
	(cd "$RUN/init.d" && echo init | cpio -o -H newc -R 0:0 --quiet) > "$RUN/init.cpio"
	cat "$CACHE/$KREL/base.cpio" "$RUN/init.cpio" > "$RUN/initrd"
	qemu_cmd "$mode"

	# relays: started before QEMU, which blocks opening a FIFO until its reader is there
	mkfifo "$RUN/out.fifo" "$RUN/err.fifo"
	cat "$RUN/out.fifo" &
	RELAYS=($!)
	cat "$RUN/err.fifo" >&2 &
	RELAYS+=($!)
	if [ "${LAB_CONSOLE:-0}" = 1 ] && [ "$mode" != shell ]; then
		mkfifo "$RUN/con.fifo"
		cat "$RUN/con.fifo" >&2 &
		RELAYS+=($!)
	fi

	rc=0
	if [ "$mode" = shell ]; then
		"${QEMU[@]}" || rc=$?
	else
		timeout -k 10 "$timeout" "${QEMU[@]}" < /dev/null &
		QEMU_PID=$!
		wait "$QEMU_PID" || rc=$?
		QEMU_PID=
	fi
	t1=$(date +%s.%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	# The relays end at QEMU's exit, once drained; if QEMU never opened a FIFO they would wait
	# forever.
	local i
	for i in $(seq 30); do
		any_alive "${RELAYS[@]}" || break
		sleep 0.1
	done
	for i in "${RELAYS[@]}"; do kill "$i" 2> /dev/null || true; done
	wait "${RELAYS[@]}" 2> /dev/null || true
	RELAYS=()
	if [ "$mode" = shell ]; then
		EXIT_STATUS=$rc
		return 0
	fi

	touch "$RUN/ctl"
	status=$(sed -n 's/^LAB_EXIT=\([0-9]*\).*/\1/p' "$RUN/ctl" | tail -n1)
	cmdsecs=$(sed -n 's/^LAB_EXIT=.* seconds=\([0-9.]*\).*/\1/p' "$RUN/ctl" | tail -n1)
	local what="CMD"
	if [ "$mode" = systemd ]; then what="SCRIPT"; fi
	if [ -n "$status" ]; then
		if [ "$rc" != 0 ]; then
			log "warning: guest did not power off cleanly (qemu/timeout status $rc) after $what ended"
			show_console
		fi
		log "kernel $KREL, $what exited $status in $secs s (command ${cmdsecs:-?} s)"
		EXIT_STATUS=$status
		return 0
	fi
	show_console
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		log "kernel $KREL, TIMEOUT after $secs s (--timeout $timeout): $what did not finish"
		EXIT_STATUS=124
		return 0
	fi
	local why
	why=$(sed -n 's/^LAB_SETUP_FAILED //p' "$RUN/ctl" | tail -n1)
	log "kernel $KREL, guest ended without an exit status after $secs s (qemu status $rc${why:+; setup failed: $why})"
	EXIT_STATUS=125
}

any_alive() {
	local p
	for p in "$@"; do kill -0 "$p" 2> /dev/null && return 0; done
	return 1
}

show_console() {
	{
		echo "----- lab: guest console ($KREL) -----"
		if [ -f "$RUN/console.log" ]; then
			tr -d '\r' < "$RUN/console.log"
		elif [ "${LAB_CONSOLE:-0}" = 1 ]; then
			echo "(streamed to stderr above: LAB_CONSOLE=1)"
		else
			echo "(none: QEMU did not start?)"
		fi
		echo "----- lab: control channel -----"
		cat "$RUN/ctl" 2> /dev/null || true
		echo "----- lab: end of console -----"
	} >&2
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
