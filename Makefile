# Every tool comes from a package registry at a pinned version; installs are idempotent and cached
# (~/.cargo/bin, node_modules), so a fresh Debian machine needs only this file and the network to
# crates.io and npm. See README for what each target does.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Must equal the wasm-bindgen version in Cargo.lock (pinned in Cargo.toml).
WASM_BINDGEN_VERSION := 0.2.130
# The WASI-HTTP host the Spin component is tested in (50 needs a newer rustc than 1.95).
WASMTIME_VERSION := 48.0.8
# Reads the Spin component's WIT world back (tests/e2e/component_world.rs). Built with only its
# `component` feature, into .tools/ so a full wasm-tools elsewhere on PATH is left alone.
WASM_TOOLS_VERSION := 1.263.0
export WASM_TOOLS := $(CURDIR)/.tools/bin/wasm-tools
# The official OpenAI Python SDK the end-to-end suite drives (the Node one is in package.json).
OPENAI_PY_VERSION := 3.54.0
SDK_VENV := .venv-sdk
# The LiteLLM proxy `make bench-peers` measures.
LITELLM_VERSION := 1.106.2
CARGO_BIN := $(HOME)/.cargo/bin
export PATH := $(CARGO_BIN):$(PATH)

# The Workers build's tools (`make worker`): wasm-bindgen's CLI, wrangler's esbuild, npm binaryen.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/@esbuild/linux-x64/bin/esbuild
export WASM_OPT_BIN := $(CURDIR)/node_modules/binaryen/bin/wasm-opt
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false

WORKER_OUT := build/worker/shim.mjs
SPIN_OUT := target/wasm32-wasip2/release/edge_gateway.wasm
# The Spin build's baseline in `make bench`: a bare WASI-HTTP pass-through, its own small crate.
BARE_WASI_OUT := target/wasm32-wasip2/release/bare_wasi.wasm
RUST_SOURCES := $(shell find src -name '*.rs' -o -name '*.lua') Cargo.toml Cargo.lock rust-toolchain.toml

DEV_PORT ?= 8787
MOCK_PORT ?= 8001
DEV_KEY := sk-dev-local-gateway-key

.PHONY: check msrv help tools rust-targets wasm-bindgen-tool wasmtime-tool wasm-tools-tool redis-tool browser-tool sdk-tool node-tools worker spin bare-wasi dev test clean fuzz fuzz-tool bench bench-tool bench-peers real-tool test-real

help:
	@echo "make dev    - run the gateway in local workerd against the mock backend"
	@echo "make test   - run every test (make check, then end to end in workerd and wasmtime serve)"
	@echo "make check  - formatting, clippy on all three builds, native tests (seconds)"
	@echo "make msrv   - check the library with the oldest Rust Cargo.toml names (rust-version)"
	@echo "make worker - build the release Workers bundle into build/"
	@echo "make spin   - build the release Spin component, one WASI 0.2 component ($(SPIN_OUT))"
	@echo "make test-real - test against a real inference server (llama-cpp-python; ~35 min first time)"

## Tools ---------------------------------------------------------------------------------------

tools: rust-targets wasm-bindgen-tool wasmtime-tool wasm-tools-tool redis-tool node-tools browser-tool sdk-tool

rust-targets:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The oldest Rust the package says it builds with (`rust-version` in Cargo.toml): the library on
# both wasm targets and natively, checked with that toolchain (installed on first use, minimal
# profile) in its own target dir, so the pinned toolchain's builds are left alone.
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
msrv:
	@rustup toolchain list | grep -q "^$(MSRV)-" || rustup toolchain install $(MSRV) --profile minimal
	@rustup target add --toolchain $(MSRV) wasm32-unknown-unknown wasm32-wasip2 2>&1 | grep -v "is up to date" || true
	CARGO_TARGET_DIR=target/msrv cargo +$(MSRV) check --lib --features cloudflare --target wasm32-unknown-unknown
	CARGO_TARGET_DIR=target/msrv cargo +$(MSRV) check --lib --features spin --target wasm32-wasip2
	CARGO_TARGET_DIR=target/msrv cargo +$(MSRV) check --lib

# `--locked` fails for this version because the index lags one of its locked dependencies.
wasm-bindgen-tool:
	@if ! "$(CARGO_BIN)/wasm-bindgen" --version 2>/dev/null | grep -q "$(WASM_BINDGEN_VERSION)"; then \
		echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (one-time, several minutes)"; \
		cargo install wasm-bindgen-cli --version =$(WASM_BINDGEN_VERSION) --force; \
	fi

wasmtime-tool:
	@if ! "$(CARGO_BIN)/wasmtime" --version 2>/dev/null | grep -q "$(WASMTIME_VERSION)"; then \
		echo "installing wasmtime-cli $(WASMTIME_VERSION) (one-time, tens of minutes)"; \
		cargo install wasmtime-cli --version $(WASMTIME_VERSION) --locked; \
	fi

wasm-tools-tool:
	@if ! "$(WASM_TOOLS)" --version 2>/dev/null | grep -q "$(WASM_TOOLS_VERSION)"; then \
		echo "installing wasm-tools $(WASM_TOOLS_VERSION) into .tools/ (one-time, a few minutes)"; \
		cargo install --root "$(CURDIR)/.tools" --locked wasm-tools --version =$(WASM_TOOLS_VERSION) \
			--no-default-features --features component; \
	fi

# The Spin build keeps its limits in Redis; the end-to-end suite starts a real redis-server.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-tool:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server from Debian"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# Debian's Chromium for the browser tests (playwright-core drives it; it never downloads one).
browser-tool:
	@command -v chromium >/dev/null || { \
		echo "installing chromium from Debian"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

sdk-tool: $(SDK_VENV)/.openai-$(OPENAI_PY_VERSION)

$(SDK_VENV)/.openai-$(OPENAI_PY_VERSION):
	python3 -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install -q openai==$(OPENAI_PY_VERSION)
	@touch $@

node-tools: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

## Build ---------------------------------------------------------------------------------------

worker: $(WORKER_OUT)

# What worker-build does, with our own entry point instead of its generated shim: the release
# wasm; wasm-bindgen's glue (the `module` target, with the state reset and abort handler that let
# the glue re-instantiate the wasm after a trap, as worker-build's own build does); binaryen's
# `wasm-opt -Oz`; then esbuild bundles src/workers/entry.js with the glue into one module that
# imports the wasm beside it. wrangler.toml's `main` is that module.
WORKER_WASM := target/wasm32-unknown-unknown/release/edge_gateway.wasm
WORKER_JS := src/workers/entry.js src/workers/platform.js
# Named, not --all-features, so binaryen never emits an encoding workerd does not read yet (the
# list worker-build 0.8.7 passes: rustc's wasm32 defaults, and the exception handling of
# wasm-bindgen's catch wrappers).
WASM_OPT_FEATURES := $(addprefix --enable-,mutable-globals sign-ext nontrapping-float-to-int bulk-memory \
	multivalue reference-types exception-handling)

$(WORKER_OUT): $(RUST_SOURCES) $(WORKER_JS) | rust-targets wasm-bindgen-tool node-tools
	cargo build --lib --target wasm32-unknown-unknown --release --features cloudflare
	rm -rf build/glue build/worker && mkdir -p build/worker
	$(WASM_BINDGEN_BIN) $(WORKER_WASM) --target module --out-dir build/glue --out-name index --no-typescript \
		--experimental-reset-state-function --force-enable-abort-handler
	sed -i 's/^import source wasmModule from /import wasmModule from /' build/glue/index.js
	$(WASM_OPT_BIN) -Oz $(WASM_OPT_FEATURES) build/glue/index_bg.wasm -o build/worker/index_bg.wasm
	$(ESBUILD_BIN) src/workers/entry.js --bundle --format=esm --minify --log-level=warning \
		--external:cloudflare:* --external:*.wasm --outfile=$(WORKER_OUT)
	@wc -c < build/worker/index_bg.wasm | awk '{print "wasm: " $$1 " bytes raw"}'; \
		gzip -9c build/worker/index_bg.wasm | wc -c | awk '{print "wasm: " $$1 " bytes gzip"}'

spin: $(SPIN_OUT)

$(SPIN_OUT): $(RUST_SOURCES) | rust-targets
	cargo build --lib --target wasm32-wasip2 --release --features spin
	@wc -c < $(SPIN_OUT) | awk '{print "component: " $$1 " bytes raw"}'; \
		gzip -9c $(SPIN_OUT) | wc -c | awk '{print "component: " $$1 " bytes gzip"}'

target/debug/mock-backend: $(RUST_SOURCES)
	cargo build --bin mock-backend

## Run -----------------------------------------------------------------------------------------

dev: worker target/debug/mock-backend
	@./scripts/dev.sh $(DEV_PORT) $(MOCK_PORT) $(DEV_KEY)

## Test ----------------------------------------------------------------------------------------

# Lints and native tests (check), the library with the oldest supported Rust (msrv), then one
# end-to-end suite against the release Workers bundle in workerd and the release Spin component
# in wasmtime serve's WASI 0.2 mode (with Redis) — including the Spin component's WIT world, the
# official Python and Node SDKs and a real Chromium.
test: check msrv worker spin wasmtime-tool wasm-tools-tool redis-tool browser-tool sdk-tool
	cargo test --features e2e --test e2e

# What fails in seconds, before anything is built or installed: formatting, clippy (-D warnings,
# with the architectural bans of clippy.toml) on the native build and both wasm builds, and the
# native tests (the core in virtual time, the mock backend). `make test` runs it first.
check: rust-targets
	cargo fmt --check
	cargo clippy --features e2e --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown --features cloudflare -- -D warnings
	cargo clippy --lib --target wasm32-wasip2 --features spin -- -D warnings
	cargo test --features e2e --test core --test mock_backend --lib
	# The fuzz targets and benches use the core's API too: they must keep compiling.
	cargo check --manifest-path fuzz/Cargo.toml --bins --target-dir target

clean:
	rm -rf build target .wrangler

## Real inference server ------------------------------------------------------------------------

# llama-cpp-python's OpenAI server on a tiny random-weight GGUF that scripts/tiny_gguf.py writes
# (no download). Not part of `make test`: the first install compiles llama.cpp from source
# (~35 min on 2 cores, niced); pip caches the wheel after. tests/real/ drives it through
# tests/support/real_backend.rs, which runs scripts/real_backend.sh.
LLAMA_CPP_PY_VERSION := 0.3.36
GGUF_PY_VERSION := 0.19.0
REAL_VENV := .venv-real

real-tool: $(REAL_VENV)/.llama-cpp-python-$(LLAMA_CPP_PY_VERSION)

$(REAL_VENV)/.llama-cpp-python-$(LLAMA_CPP_PY_VERSION):
	python3 -m venv $(REAL_VENV)
	@echo "installing llama-cpp-python $(LLAMA_CPP_PY_VERSION) (first time compiles llama.cpp: ~35 min)"
	CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 19 $(REAL_VENV)/bin/pip install -q \
		"llama-cpp-python[server]==$(LLAMA_CPP_PY_VERSION)" "gguf==$(GGUF_PY_VERSION)"
	@touch $@

# The gateway side of tests/real/ drives both release builds, like `make test`'s e2e suite.
# Every test there is #[ignore]d, so `make test` (and CI) builds and lints them but runs them
# only here.
test-real: real-tool worker spin wasmtime-tool redis-tool
	cargo test --features e2e --test real -- --ignored --test-threads=1

## Fuzz ----------------------------------------------------------------------------------------

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := chat_request sse_scanner config redis_reply jwt

# libFuzzer through cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP enables its -Z flags).
# Each target runs for FUZZ_SECONDS from the committed seed corpus; findings land in fuzz/artifacts.
fuzz-tool:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked

fuzz: fuzz-tool
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$target && cp -n fuzz/corpus/$$target/* target/fuzz-corpus/$$target/ 2>/dev/null; \
		echo "== $$target ($(FUZZ_SECONDS)s)"; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . $$target ../target/fuzz-corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 2>&1 | grep -E "^#[0-9]+.*DONE|^Done|ERROR|panicked|SUMMARY") || exit 1; \
	done

## Benchmarks ----------------------------------------------------------------------------------

BENCH_SECONDS ?= 10

# wrk from Debian: the one load tool for every target.
bench-tool:
	@command -v wrk >/dev/null || { \
		echo "installing wrk from Debian"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; }

BENCH_ROUNDS ?= 1

# Not a member of this package (it would slow every build): its own manifest and lock file, built
# into the shared target dir with the same target and release profile as the Spin component.
bare-wasi: $(BARE_WASI_OUT)

$(BARE_WASI_OUT): benches/bare-wasi/src/lib.rs benches/bare-wasi/Cargo.toml benches/bare-wasi/Cargo.lock | rust-targets
	cargo build --manifest-path benches/bare-wasi/Cargo.toml --target wasm32-wasip2 --release --target-dir target

# The core's microbenchmarks, then the gateway side by side with direct, a bare JS worker, the
# Spin build and a bare WASI pass-through (see benches/bench.py and BENCHMARKS.md). Prints
# numbers; never fails on them. BENCH_ROUNDS=3 measures every target three times (medians).
bench: worker spin bare-wasi wasmtime-tool bench-tool redis-tool
	cargo build --release --bin mock-backend
	cargo bench --bench core
	BENCH_SECONDS=$(BENCH_SECONDS) BENCH_ROUNDS=$(BENCH_ROUNDS) python3 benches/bench.py

# The same, plus Portkey's gateway (npm) and LiteLLM proxy (PyPI), installed on first use.
bench-peers: worker spin bare-wasi wasmtime-tool bench-tool redis-tool benches/peers/node_modules/.package-lock.json .venv-litellm/bin/litellm
	cargo build --release --bin mock-backend
	BENCH_SECONDS=$(BENCH_SECONDS) python3 benches/bench.py --peers

benches/peers/node_modules/.package-lock.json: benches/peers/package.json benches/peers/package-lock.json
	cd benches/peers && npm ci --no-audit --no-fund
	@touch $@

.venv-litellm/bin/litellm:
	python3 -m venv .venv-litellm
	.venv-litellm/bin/pip install -q "litellm[proxy]==$(LITELLM_VERSION)"
