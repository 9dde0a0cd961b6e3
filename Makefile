# graspfleet's front door. `make run` and `make test` set everything up from
# this repository's own files: the virtualenv, the generated gRPC stubs and the
# system packages the tests need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_SRC   := $(wildcard protos/graspfleet/v1/*.proto)
PROTO_STAMP := protos/graspfleet/v1/.generated
PYTEST_ARGS ?=
# make test's pytest workers (pytest-xdist), each test file on one worker so that its
# module fixtures are built once; PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
LINT_PATHS  := $(wildcard services robots models tests bench experiments)
ARGS ?=

.PHONY: all venv protos run quick test lint format bench fuzz sysdeps clean k8s-validate promtool-test images

all: test

# The virtualenv is rebuilt when pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos \
		--pyi_out=protos $(PROTO_SRC)
	touch $@

protos: $(PROTO_STAMP)

# System packages the tests use: PostgreSQL (the store's second backend) and
# Prometheus with promtool (the end-to-end metrics test). Debian's packages.
SYSDEPS_MISSING = $(shell PATH="$$PATH:$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1)"; \
	command -v initdb >/dev/null || echo postgresql; command -v prometheus >/dev/null || echo prometheus)

sysdeps:
	@if [ -n "$(strip $(SYSDEPS_MISSING))" ]; then \
		echo "installing $(SYSDEPS_MISSING) (the tests and the local fleet's Prometheus need them)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSDEPS_MISSING) >/dev/null; \
	fi

run: protos sysdeps
	$(PY) -m services.cli run $(ARGS)

quick: protos sysdeps
	$(PY) -m services.cli run --quick $(ARGS)

# Every test, tests/k8s included (k8s-validate and promtool-test run those alone), in one
# pytest run so that the manifests' validation shares the workers with the rest.
test: protos sysdeps lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS)

BENCHES ?= ingest model_inference predictor rlds_export

# Each benchmark prints a markdown table; docs/benchmarks.md records them with their commands.
bench: protos sysdeps
	@for b in $(BENCHES); do echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

# The RPC fuzz of tests/fuzz with a bigger budget: FUZZ_EXAMPLES requests per method
# (make test sends 12), FUZZ_SEED to reproduce or vary a run.
FUZZ_EXAMPLES ?= 300
FUZZ_SEED ?= 20261202
fuzz: protos
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q tests/fuzz

# The closed-loop sim-to-real table (experiments/sim2real): the paper's Tables II and
# III and RCAN, every model scored by the proxy-real arm on the real-test objects.
# Each stage is cached under var/sim2real keyed by its settings, so a stopped run
# resumes; writes docs/results/sim2real.{json,md,png}. Hours on 2 cores (docs/results.md).
.PHONY: sim2real
sim2real: protos
	$(PY) -m experiments.sim2real $(ARGS)

# Levers on closed-loop grasp success, measured on validation arms only
# (experiments/levers/protocol.py): resumable, cached under var/levers; writes
# docs/results/levers.{json,md}. About an hour on 2 cores.
.PHONY: levers
levers: protos
	$(PY) -m experiments.levers $(ARGS)

# Sim pretraining against more real steps on the proxy-real domain, on validation arms
# only (experiments/pretraining/protocol.py): resumable, cached under var/pretraining;
# writes docs/results/pretraining.{json,md}. About two hours on 2 cores.
.PHONY: pretraining
pretraining: protos
	$(PY) -m experiments.pretraining $(ARGS)

clean:
	rm -rf $(VENV) $(PROTO_STAMP) protos/graspfleet/v1/*_pb2*.py* var reports

# Every overlay x component combination of k8s/ built with kustomize and every
# object validated strictly for each supported Kubernetes version
# (tests/k8s/kustomize.py), plus what the built objects must say (every
# tests/k8s file but the rules' tests).
k8s-validate: protos
	GRASPFLEET_K8S_EVERY_SUBSET=1 $(PY) -m pytest -q tests/k8s --ignore=tests/k8s/test_rules.py

# promtool check and unit tests of the Prometheus rules in k8s/.
promtool-test: sysdeps $(STAMP)
	$(PY) -m pytest -q tests/k8s/test_rules.py

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= graspfleet:$(VERSION)
# The GPU variant (the Dockerfile's runtime-gpu stage: TensorFlow with CUDA) that
# k8s/components/gpu-training runs training Jobs with.
IMAGE_GPU ?= graspfleet-gpu:$(VERSION)
# Which images `make images` builds: cpu, gpu or both (IMAGE_VARIANTS="cpu gpu").
IMAGE_VARIANTS ?= cpu

# The images from the Dockerfile, with docker or podman when one runs here.
images:
	@if command -v hadolint >/dev/null; then hadolint Dockerfile; fi
	@if docker info >/dev/null 2>&1; then engine=docker; \
	elif podman info >/dev/null 2>&1; then engine=podman; \
	else echo "make images: no running docker or podman on this machine; build where one runs: docker build --target runtime -t $(IMAGE) . (GPU: --target runtime-gpu -t $(IMAGE_GPU))"; exit 1; fi; \
	for variant in $(IMAGE_VARIANTS); do \
		case $$variant in \
		cpu) $$engine build --target runtime -t $(IMAGE) . || exit 1 ;; \
		gpu) $$engine build --target runtime-gpu -t $(IMAGE_GPU) . || exit 1 ;; \
		*) echo "make images: IMAGE_VARIANTS has $$variant; use cpu, gpu or both"; exit 2 ;; \
		esac; \
	done
