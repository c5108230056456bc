# One environment for everything: .venv, torch 2.13.0 (CPU wheel) installed first so that no
# dependency resolves torch to a CUDA build, then the package with its extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepfuse-installed
DATA_DIR ?= ../shared/data

.PHONY: venv demo test bench bench-full clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/deepfuse demo --out results/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15

bench: $(STAMP)
	$(BIN)/deepfuse bench featurize --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) results .pytest_cache
