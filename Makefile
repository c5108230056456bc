# One environment for everything: .venv, torch 2.13.0 (CPU wheel) installed first so that no
# dependency resolves torch to a CUDA build, then the package with its extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepfuse-installed
DATA_DIR ?= ../shared/data
# `materials` brings pymatgen/matgl/robocrys/MiniLM so the crystal tests run; EXTRAS=test skips them
EXTRAS ?= test,materials

.PHONY: venv demo test bench bench-full clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/deepfuse demo --out results/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -ra --durations=15

# reduced suite: BBBP + ESOL, seed 0, 30 epochs, every model -> benchmarks/moleculenet.{md,json,png}
bench: $(STAMP)
	$(BIN)/deepfuse bench featurize --data-dir $(DATA_DIR)
	$(BIN)/deepfuse bench moleculenet --suite reduced --data-dir $(DATA_DIR) --out benchmarks

# full suite (7 datasets incl. HIV, seeds 0,1,2; hours on 2 CPU cores): resumable, run it in the
# background; -> benchmarks/full/moleculenet.{md,json,png}
bench-full: $(STAMP)
	$(BIN)/deepfuse bench moleculenet --suite full --data-dir $(DATA_DIR) --out benchmarks/full --resume

clean:
	rm -rf $(VENV) results .pytest_cache
