# Two entry points matter (README quickstart): `make demo` and `make test`.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m netsim.demo

lint: $(STAMP)
	$(BIN)/ruff check p2pkg tests netsim
	$(BIN)/ruff format --check p2pkg tests netsim
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# Benchmarks install their references (b3sum, nginx, aria2 from Debian when
# root; libtorrent from PyPI into .venv) and print ratios measured in the run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet 'libtorrent>=2.0,<3' || true
	$(BIN)/python -m netsim.bench_publish
	$(BIN)/python -m netsim.bench_namespace
	$(BIN)/python -m netsim.bench_transfer
	$(BIN)/python -m netsim.bench_cache
	$(BIN)/python -m netsim.bench_dht
	$(BIN)/python -m netsim.bench_flood
	$(BIN)/python -m netsim.bench_slow
	$(BIN)/python -m netsim.bench_mirror
	$(BIN)/python -m netsim.bench_propagation
	$(BIN)/python -m netsim.bench_merged
	$(BIN)/python -m netsim.bench_ops
	# real links (root: network namespaces, tc shaping, a delay proxy)
	$(BIN)/python -m netsim.bench_realnet
	$(BIN)/python -m netsim.bench_install
	$(BIN)/python -m netsim.calibrate
	# netsim at scale (docs/results.md)
	$(BIN)/python -m netsim run netsim/scenarios/pypi-10k.toml --seed 1
	$(BIN)/python -m netsim run netsim/scenarios/pypi-10k-outage.toml --seed 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
