# shellcheck shell=bash
# Kernel resolution and its cache: which Debian kernel LAB_KERNEL names, from which apt
# context (the host's bookworm, or a private trixie-backports), unpacked under lab/cache.
# Sourced by lab/lab.sh.

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
