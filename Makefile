# Apus — developer entry points. Every target installs the Debian packages it needs first, so a
# fresh Debian 12 machine with the Swift toolchain and CI get exactly the same setup.
#
#   make run     build, make a dev certificate and the demo user, run apusd in the foreground
#   make test    build and run every test (Swift unit/transcript tests + real-client integration)
#   make bench   smtp-source → apusd → smtp-sink throughput, CPU and memory (see docs/performance.md)

SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3

# Build: libssl-dev libsasl2-dev libunbound-dev pkg-config. Run: SASL modules (PLAIN, LOGIN,
# sasldb). Tests: openssl, swaks, fetchmail, curl.
APT_PACKAGES := pkg-config libssl-dev libsasl2-dev sasl2-bin libsasl2-modules libsasl2-modules-db \
                libunbound-dev openssl ca-certificates swaks fetchmail curl

DEV_CERT := certs/dev-cert.pem
DEV_KEY := certs/dev-key.pem

.PHONY: all deps build release run test unit-test integration-test bench fuzz clean

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

$(DEV_CERT) $(DEV_KEY):
	openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN=localhost \
	  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
	  -keyout $(DEV_KEY) -out $(DEV_CERT) 2>/dev/null
	chmod 600 $(DEV_KEY)

run: build $(DEV_CERT)
	./scripts/dev-run.sh

unit-test: build
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

integration-test: build
	$(PYTHON) -m unittest discover -s Tests/Integration -v

test: unit-test integration-test

bench: release
	./scripts/bench.sh

clean:
	rm -rf .build run

# Coverage-guided fuzzing of every network/disk parser (libFuzzer), FUZZ_SECONDS each run; new
# interesting inputs land in Tests/Fixtures/fuzz-corpus (commit the ones worth keeping).
FUZZ_SECONDS ?= 60
fuzz: deps
	$(SWIFT) build --build-path .build/fuzz --sanitize=fuzzer -Xswiftc -DFUZZING --product apus-fuzz
	mkdir -p .build/fuzz-new
	SWIFT_BACKTRACE=enable=no .build/fuzz/debug/apus-fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	  -artifact_prefix=.build/fuzz- .build/fuzz-new Tests/Fixtures/fuzz-corpus
