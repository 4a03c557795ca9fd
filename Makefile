# Quick start:  make repro   (environment + the whole pipeline)   |   make test
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export DVC_NO_ANALYTICS ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Let Python cache bytecode for what make runs (some hosts export PYTHONDONTWRITEBYTECODE=1): without it every
# stage process would recompile torch and transformers from source, ~10 s each. __pycache__ is git- and
# dvc-ignored, so no stage's folder dependency sees it.
unexport PYTHONDONTWRITEBYTECODE
# pytest workers for `make test`, each at one torch thread (tests/conftest.py): one per core of the 2-core machine
TEST_WORKERS ?= 2

.PHONY: setup repro test test-fast test-gpu lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# No byte-compiling here: Python compiles a module the first time it is imported (the check below is the
	@# first), ~4k of the venv's 17k files in ~10 s once; pip's own pass takes ~30 s on one core, compileall ~39 s.
	$(BIN)/pip install --disable-pip-version-check -q --no-compile -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	$(BIN)/python -c "import torch, torchvision, open_clip, transformers, trl, peft, diffusers, dvc"
	touch $@

repro: setup
	dvc repro

test: setup
	@$(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# On a machine with a GPU: the tests marked gpu, on CUDA (CI and `make test` skip them)
test-gpu: setup
	SAFECLIP_GPU_TESTS=1 $(BIN)/python -m pytest -q -ra -m gpu

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
