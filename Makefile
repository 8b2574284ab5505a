# kube-pim — `make help` lists the targets.
SHELL := /usr/bin/env bash
CARGO ?= cargo
DEMO_DIR ?= $(CURDIR)/.demo
BENCH_SAMPLES ?= 200
# More kube-pim-bench flags, e.g. BENCH_ARGS="--scale 1000 --rates 10,20" (kube-pim-bench --help).
BENCH_ARGS ?=

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Run

.PHONY: demo
demo: testbin build ## Start a local control plane with kube-pim and walk through it (Ctrl-C stops it).
	bash hack/demo.sh "$(DEMO_DIR)"

.PHONY: testenv
testenv: testbin build ## Start a local control plane with the operator and users alice, bob, mallory; runs until Ctrl-C.
	./target/debug/kube-pim-testenv up --dir "$(DEMO_DIR)" --operator \
	  --user alice:team-payments --user bob:sre-leads --user mallory

##@ Test

.PHONY: test
test: testbin lint ## Run every test: unit, webhook and end-to-end against a real kube-apiserver.
	$(CARGO) test --all-targets --no-fail-fast

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

.PHONY: chart-lint
chart-lint: testbin ## helm lint --strict the chart (the full chart tests: cargo test --test chart).
	"$$(bash hack/testbin.sh 2>/dev/null | tail -1)/helm" lint --strict charts/kube-pim

.PHONY: bench
bench: testbin ## Benchmark the release build against a physical-limit baseline (results: target/bench/results.json).
	$(CARGO) build --release --bins
	./target/release/kube-pim-bench --operator-bin target/release/kube-pim --samples $(BENCH_SAMPLES) $(BENCH_ARGS)

.PHONY: testbin
testbin: ## Build (once, cached in ~/.cache/kube-pim) kube-apiserver, etcd, kube-controller-manager, kubectl, helm from source.
	bash hack/testbin.sh >/dev/null

##@ Build

.PHONY: build
build: ## Build the binaries (debug).
	$(CARGO) build --bins

.PHONY: crds
crds: ## Regenerate crds/*.yaml (CRDs and default policies) and the chart's generated files from the Rust code (a test fails when they drift).
	$(CARGO) run -q --bin kube-pim -- crds --dir crds --chart-dir charts/kube-pim
