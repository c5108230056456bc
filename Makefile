# One environment for everything: .venv, torch 2.13.0 (CPU wheel) installed first so that no
# dependency resolves torch to a CUDA build, then the package with its extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepfuse-installed
# the benchmark harness (benchmarks/, its own package: deepfuse-bench), installed after the library
BENCH_STAMP := $(VENV)/.deepfuse-bench-installed
# this project's data folder; the harness itself has no default data path, so every target passes it
DATA_DIR ?= ../shared/data
# `materials` brings pymatgen/matgl/robocrys/MiniLM so the crystal tests run; EXTRAS=test skips them
# `pretrained` brings MiniMol (ONNX), `hpopt` Optuna, `docs` MkDocs, `lint` ruff/mypy/pre-commit
EXTRAS ?= test,materials,pretrained,hpopt,distributed,docs,lint

.PHONY: venv demo test lint docs bench bench-full bench-crystals clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip check
	touch $(STAMP)

# the harness's `profile` extra brings pyinstrument for `make bench-speed`'s profiles; deepfuse-plugin,
# its one requirement, is the editable install above
$(BENCH_STAMP): $(STAMP) benchmarks/pyproject.toml
	$(BIN)/python -m pip install -q -e "benchmarks[profile]"
	$(BIN)/python -m pip check
	# MOSES (the pretraining corpus) ships in molsets' wheel; its pinned dependencies are obsolete
	# and unused (deepfuse reads the file without importing moses), so it comes after pip check
	$(BIN)/python -m pip install -q --no-deps molsets==0.3.1
	touch $(BENCH_STAMP)

venv: $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/deepfuse demo --out results/demo

# library and harness tests (setup.cfg testpaths: tests, deepfuse_plugin, benchmarks/tests, ...)
test: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -ra --durations=15

# ruff (lint + format check) over library, harness and tests; mypy over library and harness
# (pyproject.toml; the pre-commit hooks run the same tools). All three run, so one call lists
# every problem; the target fails if any of them does (CI runs it: .ci/run).
LINT_PATHS ?= deepfuse_plugin benchmarks tests
lint: $(BENCH_STAMP)
	status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

# fuzz suite at full size: thousands of hostile SMILES, CSV cells, labels, settings and crystal
# structures; prints inputs, crashes, hangs, escaped exceptions and silent results per target and
# fails on any (10-15 minutes on 2 CPU cores). `make test` runs the same tests small.
.PHONY: fuzz
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		nice $(BIN)/python tests/fuzz/run_fuzz.py --json results/fuzz-report.json --log results/fuzz-pytest.log

# the docs site (MkDocs Material + mkdocstrings) -> site/; --strict: any warning fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# reduced suite: BBBP + ESOL, seed 0, 30 epochs, every model -> benchmarks/moleculenet.{md,json,png};
# runs in BENCH_PROCESSES worker processes (default: one per core, one torch thread each)
BENCH_PROCESSES ?= $(shell nproc 2>/dev/null || echo 1)
bench: $(BENCH_STAMP)
	$(BIN)/deepfuse-bench featurize --data-dir $(DATA_DIR)
	$(BIN)/deepfuse-bench --threads 1 moleculenet --suite reduced --data-dir $(DATA_DIR) \
		--out benchmarks --processes $(BENCH_PROCESSES)

# full suite (7 datasets incl. HIV, seeds 0,1,2; hours on 2 CPU cores): resumable, run it in the
# background; -> benchmarks/full/moleculenet.{md,json,png}. To use more processes or machines, run
# datasets with their own --out and combine them: deepfuse-bench merge DIR... --out benchmarks/full
bench-full: $(BENCH_STAMP)
	$(BIN)/deepfuse-bench moleculenet --suite full --data-dir $(DATA_DIR) --out benchmarks/full --resume

# mp36k formation energy (MEGNet split, sulfides held out for zero shot): CGCNN, text-only,
# MatMMFuse, DynamicFusion, late fusion and two CHGNet-view models (marked leaked on mp36k) on a
# fixed 10000/1000/1000 subset, 3 seeds, at most 30 epochs, the benchmark's schedule (cosine, 1
# warm-up epoch, grad clip 1, early stopping 10), the Castelli perovskites zero-shot; featurized
# parts cached in ~/.cache/deepfuse -> benchmarks/crystals.{md,json,png}. About 8 h of training on
# one CPU thread after about an hour of featurization; resumable (run it again to continue).
# `--dataset castelli` for the leakage-free perovskites. On a CUDA machine add --full.
bench-crystals: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/deepfuse-bench --threads 1 crystals \
		--data-dir $(DATA_DIR) --out benchmarks --n-train 10000 --n-val 1000 --n-test 1000 \
		--epochs 30 --seeds 0,1,2 --zero-shot-castelli --resume \
		--models cgcnn,matmmfuse,text,dynamic,late,cgcnn_chgnet,matmmfuse_chgnet

# chemprop v2 (chemprop==2.3.1, its own RDKit) for `deepfuse-bench moleculenet`: .venv-chemprop,
# torch 2.13.0 CPU first (1-2 min from the local mirror); the benchmark also creates it on first use
.PHONY: chemprop-venv
chemprop-venv: $(BENCH_STAMP)
	$(BIN)/python -c "from deepfuse_bench.chemprop_env import ensure_chemprop_env as e; print(e('.venv-chemprop', echo=print))"

# speed and memory vs DeepChem (and chemprop): featurization, training, inference on the first
# HIV molecules; peak memory featurizing/training all 41k HIV molecules in child processes; plus
# pyinstrument profiles (about 30 minutes on 2 shared CPU cores)
# -> benchmarks/speed.{md,json}, benchmarks/profiles/
.PHONY: bench-speed
bench-speed: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/deepfuse-bench speed --data-dir $(DATA_DIR) --out-dir benchmarks --profile

clean:
	rm -rf $(VENV) results .pytest_cache
