# shellcheck shell=bash
# The base initramfs: static busybox and the decompressed modules the guest loads.
# Sourced by lab/lab.sh.

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
