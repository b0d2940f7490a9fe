# SwiftKVM — the two commands a newcomer needs are `make demo` and `make test` (see README.md).
#
#   make build      build the swiftkvm tool (debug)
#   make firmware   assemble the unit guests in Firmware/ into Firmware/build/*.bin
#   make test       install what is missing, build everything, run every test
#   make bench      measure swiftkvm against the C baseline, side by side
#   make demo       run a firmware guest in each CPU mode
#   make clean

SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)
SWIFT ?= swift

# Debian packages the build and the tests use. Installed only when missing.
DEBIAN_PACKAGES := binutils gcc make libc6-dev linux-libc-dev

.PHONY: all build release firmware baseline test bench demo deps clean

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
	$(SWIFT) build -c release --product swiftkvm --product swiftkvm-bench

firmware: deps
	$(MAKE) -C Firmware

baseline: deps
	$(MAKE) -C Benchmarks/Baseline

test: deps firmware
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench: release firmware baseline
	.build/release/swiftkvm-bench $(BENCH_FLAGS)

demo: build firmware
	@for mode in real protected long user; do \
		echo "== swiftkvm run --firmware Firmware/build/hello-$$mode.bin --mode $$mode"; \
		.build/debug/swiftkvm run --firmware Firmware/build/hello-$$mode.bin --mode $$mode || exit 1; \
	done

clean:
	$(MAKE) -C Firmware clean
	$(MAKE) -C Benchmarks/Baseline clean 2>/dev/null || true
	rm -rf .build
