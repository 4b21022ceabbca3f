# Every tool comes from a package registry at a pinned version; installs are idempotent and cached
# (~/.cargo/bin, node_modules), so a fresh Debian machine needs only this file and the network to
# crates.io and npm. See README for what each target does.

SHELL := /bin/bash
.DEFAULT_GOAL := help

WORKER_BUILD_VERSION := 0.8.7
# Must equal the wasm-bindgen version in Cargo.lock (pinned in Cargo.toml).
WASM_BINDGEN_VERSION := 0.2.130
CARGO_BIN := $(HOME)/.cargo/bin
export PATH := $(CARGO_BIN):$(PATH)

# worker-build downloads nothing when these point at local binaries.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/@esbuild/linux-x64/bin/esbuild
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false

WORKER_OUT := build/worker/shim.mjs
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock

DEV_PORT ?= 8787
MOCK_PORT ?= 8001
DEV_KEY := sk-dev-local-gateway-key

.PHONY: help tools rust-targets worker-build-tool wasm-bindgen-tool node-tools worker dev test test-native test-e2e clean

help:
	@echo "make dev    - run the gateway in local workerd against the mock backend"
	@echo "make test   - run every test (native core tests and end-to-end in workerd)"
	@echo "make worker - build the release Workers bundle into build/"

## Tools ---------------------------------------------------------------------------------------

tools: rust-targets worker-build-tool wasm-bindgen-tool node-tools

rust-targets:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

worker-build-tool:
	@if ! "$(CARGO_BIN)/worker-build" --version 2>/dev/null | grep -q "$(WORKER_BUILD_VERSION)"; then \
		echo "installing worker-build $(WORKER_BUILD_VERSION) (one-time, several minutes)"; \
		cargo install worker-build --version $(WORKER_BUILD_VERSION) --locked; \
	fi

# `--locked` fails for this version because the index lags one of its locked dependencies.
wasm-bindgen-tool:
	@if ! "$(CARGO_BIN)/wasm-bindgen" --version 2>/dev/null | grep -q "$(WASM_BINDGEN_VERSION)"; then \
		echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (one-time, several minutes)"; \
		cargo install wasm-bindgen-cli --version =$(WASM_BINDGEN_VERSION) --force; \
	fi

node-tools: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

## Build ---------------------------------------------------------------------------------------

worker: $(WORKER_OUT)

$(WORKER_OUT): $(RUST_SOURCES) | rust-targets worker-build-tool wasm-bindgen-tool node-tools
	worker-build --release --no-opt --features cloudflare
	@wc -c < build/index_bg.wasm | awk '{print "wasm: " $$1 " bytes raw"}'; \
		gzip -9c build/index_bg.wasm | wc -c | awk '{print "wasm: " $$1 " bytes gzip"}'

target/debug/mock-backend: $(RUST_SOURCES)
	cargo build --bin mock-backend

## Run -----------------------------------------------------------------------------------------

dev: worker target/debug/mock-backend
	@./scripts/dev.sh $(DEV_PORT) $(MOCK_PORT) $(DEV_KEY)

## Test ----------------------------------------------------------------------------------------

# Native core tests, the mock's tests, then the end-to-end suite against the release bundle in
# workerd; then lints for the native and the Workers build.
test: worker
	cargo test --features e2e --all-targets
	cargo clippy --features e2e --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown --features cloudflare -- -D warnings

clean:
	rm -rf build target .wrangler
