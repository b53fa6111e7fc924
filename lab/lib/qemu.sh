# shellcheck shell=bash
# Running a guest: the run's spec, QEMU's command line, the control channel and the
# console. Sourced by lab/lab.sh.

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
