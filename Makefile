# SwiftKVM — the two commands a newcomer needs are `make demo` and `make test` (see README.md).
#
#   make demo       build what it needs and boot Linux to an interactive busybox shell
#   make test       install what is missing, build everything, run every test
#   make build      build the swiftkvm tool (debug)
#   make firmware   assemble the unit guests in Firmware/ into Firmware/build/*.bin
#   make guest      build the guest kernels and initramfs images into $(SWIFTKVM_CACHE)
#   make bench      measure swiftkvm against the C baseline and QEMU microvm, side by side
#   make bench-linux  boot the test kernel under swiftkvm (both PITs) and QEMU microvm, taking turns
#   make bench-disk   virtio-blk read throughput under swiftkvm and QEMU microvm, side by side
#   make firmware-demo  run a firmware guest in each CPU mode
#   make fuzz       build the libFuzzer harnesses in Fuzz/ and run each for FUZZ_SECONDS (default 20)
#   make api-check  schemathesis against docs/openapi.yaml on the control API (api-mock-server and a real firmware VM)
#   make fuzz-api   libFuzzer on the control API's HTTP request parser (FUZZ_SECONDS, default 60)
#   make docs       DocC API documentation for each library module into .build/docs/
#   make clean

SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)
SWIFT ?= swift
# Guest kernels are built once into this cache, outside the clone, and reused across runs.
export SWIFTKVM_CACHE ?= /var/cache/swiftkvm

# Debian packages the build and the tests use. Installed only when missing.
DEBIAN_PACKAGES := binutils gcc make libc6-dev linux-libc-dev e2fsprogs acpica-tools socat libxml2-dev virtinst libvirt-clients \
	libseccomp-dev liblzma-dev liblz4-dev libzstd-dev liblzo2-dev zlib1g-dev libbz2-dev libssl-dev xz-utils lz4 zstd lzop bzip2 gzip passt iproute2 python3 systemd
# PyPI packages for `make api-check` (Tests/api/schemathesis.sh), installed only when missing.
PIP_PACKAGES := schemathesis==4.32.5

.PHONY: api-check api-deps fuzz-api all build release firmware baseline guest test-guest nested-lane test fuzz fuzz-build bench bench-linux bench-disk bench-snapshot docs qemu demo firmware-demo deps clean

all: build firmware

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "Swift is not installed: put a Swift 6 toolchain at /opt/swift (swift.org/install)"; exit 1; }

build: deps
	$(SWIFT) build --product swiftkvm

release: deps
	$(SWIFT) build -c release --product swiftkvm
	$(SWIFT) build -c release --product swiftkvm-bench

firmware: deps
	$(MAKE) -C Firmware

baseline: deps
	$(MAKE) -C Benchmarks/Baseline

# Everything: the small test kernel and initramfs, and Debian's stock kernel with virtio modules.
guest: deps
	$(MAKE) -C Firmware/linux all

# What the tests use: the small test kernel and its busybox initramfs (booted), and Debian's stock
# kernel (parsed and loaded by the loader tests; booted only on hardware KVM).
test-guest: deps
	$(MAKE) -C Firmware/linux test-kernel test-initramfs stock rootfs

# Debian's stock kernel is also booted by swiftkvm on a KVM that behaves like hardware: /dev/kvm
# itself on hardware KVM; on KVM-PVM hosts kvm_amd inside QEMU/TCG (Firmware/linux/nested-kvm.sh),
# for which this installs QEMU and builds the cached part of the outer VM's initramfs.
nested-lane: test-guest
	@if [ -d /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; then \
		$(MAKE) --no-print-directory -C Firmware/linux nested-lane; fi

test: deps firmware test-guest nested-lane docs
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory api-check
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)
	$(SWIFT) test --skip-build

# libFuzzer harnesses (Fuzz/Package.swift, a package of their own: libFuzzer supplies main), one
# per parser or device that takes untrusted bytes; each is found by its seed corpus folder
# Fuzz/corpus/NAME. Each runs FUZZ_SECONDS from its seeds (new inputs go to Fuzz/.build/corpus,
# never into the repository) and any crash, leak or sanitizer report fails the target; the
# input that found it is saved as Fuzz/.build/crash-*. `make test` runs each for TEST_FUZZ_SECONDS.
FUZZ_SECONDS ?= 20
TEST_FUZZ_SECONDS ?= 10
FUZZ_HARNESSES := $(notdir $(wildcard Fuzz/corpus/*))
FUZZ_FLAGS := -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library

fuzz-build: deps
	$(SWIFT) build --package-path Fuzz $(FUZZ_FLAGS) 2>&1 | grep -v "Cannot export local symbol '__asan"; exit $${PIPESTATUS[0]}

fuzz: fuzz-build
	@bin=$$($(SWIFT) build --package-path Fuzz $(FUZZ_FLAGS) --show-bin-path); \
	for harness in $(FUZZ_HARNESSES); do \
		mkdir -p Fuzz/.build/corpus/$$harness; \
		echo "fuzz: $$harness for $(FUZZ_SECONDS) s"; \
		"$$bin/$$harness" -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=Fuzz/.build/crash-$$harness- Fuzz/.build/corpus/$$harness Fuzz/corpus/$$harness \
			> Fuzz/.build/$$harness.log 2>&1 \
			|| { tail -n 40 Fuzz/.build/$$harness.log; echo "fuzz: $$harness FAILED (input saved as Fuzz/.build/crash-$$harness-*)"; exit 1; }; \
		grep -E "^stat::number_of_executed_units|^Done" Fuzz/.build/$$harness.log | tr '\n' ' '; echo; \
	done

# The C baseline comparison, then the boot probe under swiftkvm and QEMU microvm (BENCH_FLAGS:
# e.g. --quick, --probe-only, --no-probe; see .build/release/swiftkvm-bench --help), then the
# virtio-blk comparison of bench-disk (BENCH_DISK_FLAGS, e.g. --linux-rounds 0 to skip its Linux boots),
# then power-off latency and the probe with 1 and 2 vCPUs (Benchmarks/power-smp.py), pause and resume
# latency over the control socket against QEMU's QMP (Benchmarks/pause-resume.py), snapshot and
# restore against QEMU's migration to a file (Benchmarks/snapshot.py, BENCH_SNAPSHOT_FLAGS: --rounds N,
# --sizes 256M,2G), then the test kernel with 1 and 2 vCPUs (Benchmarks/linux-smp.py,
# BENCH_SMP_FLAGS: --rounds N, --cpus 1,2,4; on a KVM-PVM host both VMMs run in the nested lane,
# where SMP Linux comes up).
bench: release firmware baseline qemu test-guest nested-lane
	.build/release/swiftkvm-bench $(BENCH_FLAGS)
	python3 Benchmarks/disk.py $(BENCH_DISK_FLAGS)
	python3 Benchmarks/power-smp.py
	python3 Benchmarks/pause-resume.py
	python3 Benchmarks/snapshot.py $(BENCH_SNAPSHOT_FLAGS)
	python3 Benchmarks/linux-smp.py $(BENCH_SMP_FLAGS)

# Snapshot and restore alone (Benchmarks/snapshot.py): 256 MiB and 2 GiB guests, swiftkvm's
# PUT /snapshot/create and /snapshot/load against QEMU's migrate to "exec:cat > file" and -incoming.
bench-snapshot: release firmware qemu
	python3 Benchmarks/snapshot.py $(BENCH_SNAPSHOT_FLAGS)

qemu:
	@command -v qemu-system-x86_64 >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86; }

# Linux boot, swiftkvm (--pit kvm and --pit emulated) against QEMU microvm on the same kernel and
# initramfs (minutes per round here). BENCH_LINUX_FLAGS: --rounds N, --sides a,b, --deadline S.
bench-linux: release test-guest qemu
	python3 Benchmarks/linux-boot.py $(BENCH_LINUX_FLAGS)

# virtio-blk: the firmware driver guest and the test kernel's O_DIRECT reads, swiftkvm against
# QEMU microvm on the same image (a few minutes here: it boots Linux twice per side).
bench-disk: release firmware test-guest qemu
	python3 Benchmarks/disk.py $(BENCH_DISK_FLAGS)

# The control API against its OpenAPI document: schemathesis (no 5xx, every status and body as
# documented, data outside the schema refused) on api-mock-server, bridged to TCP by socat.
api-deps: deps
	@for p in $(PIP_PACKAGES); do pip show $${p%%==*} >/dev/null 2>&1 || pip install -q $$p || exit 1; done

api-check: api-deps firmware
	$(SWIFT) build --product api-mock-server
	$(SWIFT) build --product swiftkvm
	Tests/api/schemathesis.sh --mock .build/debug/api-mock-server
	Tests/api/schemathesis.sh --vm .build/debug/swiftkvm Firmware/build/counter-user.bin

fuzz-api:
	Tests/fuzz/fuzz-http-parser.sh

# API documentation (swift-docc-plugin): one static site per library module, in .build/docs/MODULE.
DOC_MODULES := VMM KVM VMMCore Devices LinuxBoot Virtio
docs: deps
	@mkdir -p .build/docs
	@for module in $(DOC_MODULES); do \
		$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target $$module \
			--output-path .build/docs/$$module --transform-for-static-hosting --warnings-as-errors || exit 1; \
	done
	@echo "API documentation: .build/docs/<module>/index.html (serve the folder: python3 -m http.server -d .build/docs)"

# Boots Linux to a busybox shell on this terminal (Ctrl-A x quits). Hosts whose KVM emulates guest
# ring 0 (KVM-PVM) get the small test kernel built for them; hardware KVM gets Debian's stock kernel.
demo: build
	@if [ -d /sys/module/kvm_pvm ]; then \
		$(MAKE) --no-print-directory test-guest && \
		echo "KVM-PVM host: booting the small test kernel (about 2 minutes here; Ctrl-A x quits)" && \
		.build/debug/swiftkvm run --kernel $(SWIFTKVM_CACHE)/test-kernel/bzImage \
			--initrd $(SWIFTKVM_CACHE)/test-initramfs.cpio --cmdline "console=ttyS0 reboot=k panic=-1 quiet"; \
	else \
		$(MAKE) --no-print-directory -C Firmware/linux stock && \
		echo "booting Debian's stock kernel (Ctrl-A x quits)" && \
		.build/debug/swiftkvm run --kernel $(SWIFTKVM_CACHE)/stock-kernel/bzImage \
			--initrd $(SWIFTKVM_CACHE)/stock-initramfs.cpio.gz --cmdline "console=ttyS0 reboot=k panic=-1"; \
	fi

firmware-demo: build firmware
	@for mode in real protected long user; do \
		echo "== swiftkvm run --firmware Firmware/build/hello-$$mode.bin --mode $$mode"; \
		.build/debug/swiftkvm run --firmware Firmware/build/hello-$$mode.bin --mode $$mode || exit 1; \
	done

clean:
	$(MAKE) -C Firmware clean
	$(MAKE) -C Benchmarks/Baseline clean 2>/dev/null || true
	rm -rf .build
