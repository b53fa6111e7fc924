#!/bin/bash
# Runs the user's command inside the lab guest (host root + tmpfs overlay; PID 1 is either
# the initramfs's init, which chroots here, or systemd, through lab-test.service).
#   runner.sh plain|tee|shell RUNDIR
# RUNDIR/spec.sh (written by lab.sh on the host, read through 9p) sets LAB_CWD, LAB_ARGV and
# the passed-through environment. The command's stdout goes to ttyS1 and its stderr to ttyS2
# (the host's stdout and stderr); with "tee" also to this script's own stdout/stderr (the
# journal, under systemd). The exit status goes to the control channel ttyS3 as LAB_EXIT=N.
set -u
mode=${1:?plain|tee}
rundir=${2:?rundir}
ctl=/dev/ttyS3

set -a
# shellcheck source=/dev/null
. /run/lab/environment
set +a
# shellcheck source=/dev/null
. "$rundir/spec.sh"

if [ "$mode" = shell ]; then # interactive, on the console (ttyS0)
	cd "$LAB_CWD" || cd /
	exec /usr/bin/setsid -c /bin/bash -i
fi

for t in /dev/ttyS1 /dev/ttyS2; do stty -F "$t" raw -echo 2> /dev/null; done

io=/run/lab/io.$$
mkdir -p "$io"
mkfifo "$io/out" "$io/err"
if [ "$mode" = tee ]; then
	tee -a /dev/ttyS1 < "$io/out" &
	out_pid=$!
	tee -a /dev/ttyS2 < "$io/err" >&2 &
	err_pid=$!
else
	cat < "$io/out" > /dev/ttyS1 &
	out_pid=$!
	cat < "$io/err" > /dev/ttyS2 &
	err_pid=$!
fi

start=$EPOCHREALTIME
(
	cd "$LAB_CWD" || exit 126
	exec "${LAB_ARGV[@]}"
) < /dev/null > "$io/out" 2> "$io/err"
status=$?
end=$EPOCHREALTIME

# The readers end when every writer is gone; a background process the command left behind
# may keep a pipe open, so give up after a few seconds.
for ((i = 0; i < 50; i++)); do
	kill -0 "$out_pid" 2> /dev/null || kill -0 "$err_pid" 2> /dev/null || break
	sleep 0.1
done
kill "$out_pid" "$err_pid" 2> /dev/null
wait 2> /dev/null

us=$((${end/./} - ${start/./}))
printf 'LAB_EXIT=%d seconds=%d.%03d\n' "$status" $((us / 1000000)) $((us / 1000 % 1000)) > "$ctl"
exit "$status"
