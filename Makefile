# vfio-powerd — build, test, demo, install.
#
#   make check    every test: unit tests on the host, then the real-kernel tests in the VM lab
#                 on Debian 12's 6.1 and on the newest Debian kernel (installs what it needs)
#   make demo     the main job on a real kernel in the VM lab (installs what it needs)
#   make install  DESTDIR= PREFIX=/usr: binaries, units, catalog, example config and alert rules, man pages
#   make deb      vfio-powerd_VERSION_ARCH.deb with debhelper (debian/): what operators install
#
# Needs root on a Debian 12 machine with Swift 6.1+ (swift on PATH or in /opt/swift/usr/bin).

SHELL := /bin/bash
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
CONFIG ?= debug
BUILD := .build/$(CONFIG)
PREFIX ?= /usr
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
CATALOGDIR ?= $(PREFIX)/lib/systemd/catalog
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
DESTDIR ?=
# Both kernels of the lab: Debian 12's own (the oldest with the features) and the newest.
LAB_KERNELS ?= 6.1 newest
KERNEL_TESTS := KernelTests.DeviceLifecycleKernelTests,KernelTests.LowPowerKernelTests
# prometheus: its promtool checks the exporter's output and the example alert rules, and the
# tests scrape the exporter with a server of its own (on a free loopback port, in a temporary
# folder; the package's own prometheus.service is left as the package sets it).
# libtomlplusplus-dev: toml++ for the CTOML shim, used header-only (nothing of it at run time).
BUILD_PACKAGES := libsystemd-dev libtomlplusplus-dev pkg-config scdoc
HOST_PACKAGES := $(BUILD_PACKAGES) python3-venv prometheus
# The package's own tools (make deb).
DEB_PACKAGES := debhelper lintian
# The version, from one place: debian/changelog. The binaries say it too (--version, and
# the control interface's GetInfo); version-check keeps them equal.
VERSION := ${shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog}
VERSIONED_SOURCES := Sources/PowerDaemon/Control/ControlService.swift Sources/vfio-powerd/VFIOPowerd.swift \
	Sources/vfio-powerctl/VFIOPowerCtl.swift
# PyPI's varlink, the independent client the tests call, lives in a virtual environment:
# Debian 12 refuses pip into its own Python (PEP 668).
VENV := .build/venv
# systemd's own varlink client, varlinkctl, came in systemd 255; Debian 12 has 252. The tests
# run the one of a Debian trixie tree (debootstrap, once per machine, cached here), straight
# from the tree with the tree's own dynamic loader and libraries, so it reaches the host's
# sockets. VARLINKCTL=/usr/bin/varlinkctl on a host with systemd >= 255 needs no tree.
TRIXIE := .build/trixie
TRIXIE_MIRROR ?= http://deb.debian.org/debian
VARLINKCTL ?= $(CURDIR)/$(TRIXIE)/usr/bin/varlinkctl

.PHONY: all deps build-deps release version-check deb build-tests check unit-tests kernel-tests daemon-tests demo probe-demo bench man install clean

all: build

# Host packages the build needs (build-deps: to build and install; deps: also to test); the
# lab installs its own (lab/lab.sh prepare).
build-deps:
	@missing=""; for p in $(BUILD_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@test -x "$(SWIFT)" || { echo "make: no Swift toolchain: install Swift 6.1 or later (swift.org) and put swift on PATH" >&2; exit 1; }

deps: build-deps
	@missing=""; for p in $(HOST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@test -x "$(SWIFT)" || { echo "make: no Swift toolchain: install Swift 6.1 or later (swift.org) and put swift on PATH" >&2; exit 1; }
	@# The control interface is also tested with an independent client: PyPI's varlink.
	@$(VENV)/bin/python3 -c 'import varlink' 2>/dev/null || { \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check varlink; }
	@# And with systemd's own: varlinkctl, from a Debian trixie tree unless VARLINKCTL names one.
	@test -x "$(VARLINKCTL)" || $(MAKE) --no-print-directory $(TRIXIE)/usr/bin/varlinkctl

# Built in a temporary folder and renamed when complete: an interrupted run leaves no tree
# that counts as done. debootstrap mounts proc, sys (and more) inside the tree, and a killed
# run leaves them mounted: unmounted first, and rm never crosses into them.
$(TRIXIE)/usr/bin/varlinkctl:
	@dpkg -s debootstrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; }
	@echo "make: building a Debian trixie tree in $(TRIXIE) for systemd's varlinkctl (once per machine)"
	@set -e; mkdir -p $(dir $(TRIXIE)); tmp=$(TRIXIE).tmp; \
	if [ -d $$tmp ]; then \
		awk -v t="$(CURDIR)/$$tmp/" 'index($$2, t) == 1 { print $$2 }' /proc/self/mounts | sort -r | xargs -r umount -l; \
		rm -rf --one-file-system $$tmp; \
	fi; \
	rm -rf --one-file-system $(TRIXIE); \
	start=$$(date +%s); \
	debootstrap --variant=minbase --include=systemd trixie $$tmp $(TRIXIE_MIRROR) > $(TRIXIE).log 2>&1 || { \
		tail -20 $(TRIXIE).log >&2; echo "make: debootstrap failed; the whole log is $(TRIXIE).log" >&2; exit 1; }; \
	test -x $$tmp/usr/bin/varlinkctl || { echo "make: debootstrap made no usr/bin/varlinkctl in $$tmp" >&2; exit 1; }; \
	mv $$tmp $(TRIXIE); \
	echo "make: $(TRIXIE) built in $$(( $$(date +%s) - start ))s, $$(du -sh --one-file-system $(TRIXIE) | cut -f1)"

build: deps
	$(SWIFT) build -c $(CONFIG)

build-tests: deps
	$(SWIFT) build --build-tests

check: version-check unit-tests kernel-tests daemon-tests

# Host tests. KernelTests need /dev/vfio and run in the lab instead (kernel-tests).
# XCTest's failures scroll by long before the run ends: on failure they are repeated last,
# where a CI log's tail shows them.
unit-tests: build-tests
	@set -o pipefail; PATH="$(CURDIR)/$(VENV)/bin:$$PATH" VARLINKCTL="$(VARLINKCTL)" $(SWIFT) test --skip KernelTests 2>&1 | tee .build/unit-tests.log || { \
		status=$$?; echo "== unit tests failed; the failures, repeated:"; \
		grep -E "error: |: error -|failed \(|✘|Fatal error|crashed" .build/unit-tests.log | grep -v " started" | tail -40; \
		exit $$status; }

# The real-kernel tests, inside the VM lab, on each kernel of LAB_KERNELS.
kernel-tests: build-tests
	@set -e; for k in $(LAB_KERNELS); do \
		echo "== real-kernel tests on LAB_KERNEL=$$k"; \
		LAB_KERNEL=$$k lab/lab.sh run --timeout 600 -- $(BUILD)/vfio-powerdPackageTests.xctest $(KERNEL_TESTS); \
	done

# The daemon as an operator runs it: the installed unit under systemd (PID 1) and journald
# in the lab, on each kernel of LAB_KERNELS (lab/tests/daemon_under_systemd.py and, with
# Debian's QEMU holding a device, vmm_under_systemd.py); and the Debian package, installed,
# run, removed and purged with apt (lab/tests/package_under_systemd.py), on the first kernel.
# One lane per kernel, side by side (lab/daemon-lanes.sh; LAB_SERIAL=1 for one at a time).
daemon-tests: build deb
	@lab/daemon-lanes.sh $(LAB_KERNELS)

# The main job on a real kernel: Debian's QEMU holds a device in the lab; its guest puts the
# device into D3hot; vfio-powerd, under systemd, arms low power; the guest takes it back
# (lab/tests/vmm_demo.sh). Then the own-device demo (lab/tests/demo.sh).
demo: build
	LAB_KERNEL=$(firstword $(LAB_KERNELS)) lab/lab.sh systemd --timeout 600 -- lab/tests/vmm_demo.sh
	LAB_KERNEL=$(firstword $(LAB_KERNELS)) lab/lab.sh systemd --timeout 600 -- lab/tests/demo.sh

# The diagnostic on each lab device: vfio-powerctl probe --cycle on a real kernel.
probe-demo: build
	LAB_KERNEL=$(firstword $(LAB_KERNELS)) lab/lab.sh run --timeout 300 -- \
		sh -c 'for d in $$LAB_VFIO_DEVICES; do $(BUILD)/vfio-powerctl probe --cycle $$d || exit $$?; echo; done'

# Benchmarks (issue 6): the daemon's real loop with N simulated devices against a C epoll
# baseline, N = 1, 64, 1024, 4096, in release; results in bench/results/, docs/BENCHMARKS.md.
bench: deps
	@dpkg -s python3-matplotlib >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib; }
	SWIFT=$(SWIFT) bench/run.sh

man: build-deps
	@mkdir -p .build/man
	@for page in docs/man/*.scd; do \
		out=.build/man/$$(basename $${page%.scd}); \
		scdoc < $$page > $$out || exit 1; \
	done

# The Swift runtime is linked in: an operator's host has glibc, libstdc++ and libsystemd, not a toolchain.
release: build-deps
	$(SWIFT) build -c release --static-swift-stdlib

install: release man
	install -Dm755 -s .build/release/vfio-powerd $(DESTDIR)$(SBINDIR)/vfio-powerd
	install -Dm755 -s .build/release/vfio-powerctl $(DESTDIR)$(BINDIR)/vfio-powerctl
	install -Dm755 -s .build/release/vfio-powerd-exporter $(DESTDIR)$(SBINDIR)/vfio-powerd-exporter
	install -Dm644 systemd/vfio-powerd.service $(DESTDIR)$(UNITDIR)/vfio-powerd.service
	install -Dm644 systemd/vfio-powerd.socket $(DESTDIR)$(UNITDIR)/vfio-powerd.socket
	install -Dm644 systemd/vfio-powerd-exporter.service $(DESTDIR)$(UNITDIR)/vfio-powerd-exporter.service
	install -Dm644 systemd/vfio-powerd-exporter.socket $(DESTDIR)$(UNITDIR)/vfio-powerd-exporter.socket
	install -Dm644 docs/alerts/vfio-powerd.rules.yml $(DESTDIR)$(PREFIX)/share/doc/vfio-powerd/examples/vfio-powerd.rules.yml
	install -Dm644 docs/METRICS.md $(DESTDIR)$(PREFIX)/share/doc/vfio-powerd/METRICS.md
	install -Dm644 systemd/vfio-powerd.catalog $(DESTDIR)$(CATALOGDIR)/vfio-powerd.catalog
	install -Dm644 config/vfio-powerd.conf $(DESTDIR)$(PREFIX)/share/doc/vfio-powerd/examples/vfio-powerd.conf
	@for f in config/devices.d/*.conf; do \
		install -Dm644 $$f $(DESTDIR)$(PREFIX)/share/doc/vfio-powerd/examples/devices.d/$$(basename $$f); \
	done
	@for f in config/hooks/*; do \
		install -Dm755 $$f $(DESTDIR)$(PREFIX)/share/doc/vfio-powerd/examples/hooks/$$(basename $$f); \
	done
	install -dm755 $(DESTDIR)$(SYSCONFDIR)/vfio-powerd/devices.d
	@test -e $(DESTDIR)$(SYSCONFDIR)/vfio-powerd/vfio-powerd.conf || \
		install -Dm644 config/vfio-powerd.conf $(DESTDIR)$(SYSCONFDIR)/vfio-powerd/vfio-powerd.conf
	install -dm755 $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	@# A completion is sourced, not run: no #! line (lintian: bash-completion-with-hashbang).
	.build/release/vfio-powerctl --generate-completion-script bash | sed '1{/^#!/d}' > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/vfio-powerctl
	.build/release/vfio-powerctl --generate-completion-script zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_vfio-powerctl
	.build/release/vfio-powerctl --generate-completion-script fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/vfio-powerctl.fish
	@for page in .build/man/*.[0-9]; do \
		section=$${page##*.}; \
		install -Dm644 $$page $(DESTDIR)$(MANDIR)/man$$section/$$(basename $$page); \
	done

# Every binary says the version debian/changelog gives the package.
version-check:
	@test -n "$(VERSION)" || { echo "make: no version in debian/changelog" >&2; exit 1; }
	@for f in $(VERSIONED_SOURCES); do \
		grep -q 'version: "$(VERSION)"' $$f || { echo "make: $$f does not say version \"$(VERSION)\" (debian/changelog's)" >&2; exit 1; }; \
	done

# The Debian package, built by debhelper (debian/rules calls `make install DESTDIR=...`), into
# this folder; then lintian on it. Install it with apt install ./vfio-powerd_*.deb.
deb: version-check build-deps
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	dpkg-checkbuilddeps
	debian/rules clean
	DEB_DESTDIR=$(CURDIR) SWIFT=$(SWIFT) debian/rules binary
	lintian -I vfio-powerd_$(VERSION)_$$(dpkg-architecture -qDEB_HOST_ARCH).deb

clean:
	rm -rf .build
