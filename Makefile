# lockkeeper — `make sandbox` starts the local sandbox, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
DEBIAN_PACKAGES := zookeeper python3-kazoo libcurator-recipes-java fonts-dejavu-core openssl prometheus
SANDBOX_DIR ?= $(CURDIR)/.sandbox
SANDBOX_ZK_PORT ?= 2181
SANDBOX_API_PORT ?= 6443
SANDBOX_METRICS_PORT ?= 9464
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# helm, for the chart's tests and for installing on a real cluster (see README.md)
HELM := $(CURDIR)/.tools/helm
# etcd, kube-apiserver and kube-controller-manager, built by e2e/controlplane/build.sh
CONTROLPLANE_CACHE := $(CURDIR)/.tools/controlplane
export LOCKKEEPER_CONTROLPLANE_CACHE := $(CONTROLPLANE_CACHE)
# The end-to-end tests that also run on the oldest Kubernetes version tested
OLDEST_KUBERNETES_TESTS := --test crds --test examples --test scenarios

.PHONY: deps test lint unit sandbox sandbox-down controlplane bench chaos crds manifest

## deps: install what the tests and the sandbox need (Debian packages, a JDK with javac, helm, the
## Kubernetes control planes, built from Go modules into .tools/controlplane on the first run, and
## the chaos suite's history checker, built into .tools/historycheck)
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v javac >/dev/null 2>&1 || missing="$$missing default-jdk-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	  { echo "!! apt-get install of$$missing failed"; exit 1; }; \
	else echo "==> Debian packages present: $(DEBIAN_PACKAGES)"; fi
	@bash e2e/tools/install-helm.sh "$(HELM)"
	@bash e2e/controlplane/build.sh "$(CONTROLPLANE_CACHE)"
	@bash e2e/historycheck/build.sh "$(CURDIR)/.tools/historycheck"

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: the whole suite (unit, property, real-ZooKeeper, Curator and kazoo interoperability, end to
## end on the newest Kubernetes control plane, a short chaos run), then the CRDs, examples and
## scenarios on the oldest
test: deps lint
	@mkdir -p target
	cd e2e/historycheck && go vet ./... && go test ./...
	$(CARGO) build --workspace --bins
	set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test-output.log
	set -o pipefail; LOCKKEEPER_KUBERNETES=oldest $(CARGO) test $(OLDEST_KUBERNETES_TESTS) 2>&1 | tee -a target/test-output.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "%d passed, %d failed\n", p, f}' target/test-output.log

## bench: lockkeeper against the raw engine and Curator in one run (issue 6); writes bench/results/
bench: deps
	@echo "==> building the release binaries (cargo build --release)"
	@$(CARGO) build --quiet --release --workspace --bins
	target/release/lockkeeper-bench --out bench/results

## chaos: the chaos suite run long (issue 15): runs of 10 minutes of faults until 10,000 grants and
## every fault kind 20 times; writes bench/chaos/ (each run's summary, and their total)
chaos: deps
	@$(CARGO) build --quiet --workspace --bins
	bash e2e/chaos/run.sh bench/chaos

## sandbox: ZooKeeper, the Kubernetes control plane, lockkeeper controller, the CRDs and a demo on loopback, left running
sandbox: deps
	@echo "==> building lockkeeper and the sandbox's ZooKeeper and control plane launchers (cargo build)"
	@$(CARGO) build --quiet --workspace --bins
	@bash e2e/sandbox/up.sh "$(SANDBOX_DIR)" "$(SANDBOX_ZK_PORT)" "$(SANDBOX_API_PORT)" "$(SANDBOX_METRICS_PORT)"

## controlplane: a Kubernetes control plane on 127.0.0.1:$(SANDBOX_API_PORT) in the foreground (Ctrl-C
## stops it); KUBERNETES=oldest for the oldest version tested. Its kubeconfig: .controlplane/kubeconfig
controlplane: deps
	@$(CARGO) build --quiet -p lockkeeper-testkit --bin controlplane
	target/debug/controlplane "$(CURDIR)/.controlplane" "$(SANDBOX_API_PORT)" "$(or $(KUBERNETES),newest)"

## sandbox-down: stop the sandbox (controller, control plane, ZooKeeper); ZooKeeper data and logs stay in .sandbox/
sandbox-down:
	@bash e2e/sandbox/down.sh "$(SANDBOX_DIR)"

## crds: regenerate crds/ from the resource types (a test fails when it is stale)
crds:
	$(CARGO) run --quiet -- crd --output-dir crds
	$(CARGO) run --quiet -- crd --output-dir charts/lockkeeper/crds

## manifest: regenerate deploy/lockkeeper.yaml (the chart's defaults, for kubectl apply; a test fails when it is stale)
manifest: deps
	bash e2e/tools/render-manifest.sh "$(HELM)" > deploy/lockkeeper.yaml
