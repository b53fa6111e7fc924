# shellcheck shell=bash
# The lab's shared helpers: messages, root, the cache lock, the host packages it needs.
# Sourced by lab/lab.sh, which sets the constants.

log() { echo "lab: $*" >&2; }
die() {
	echo "lab: error: $*" >&2
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
