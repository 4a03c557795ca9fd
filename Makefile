# Quick start:  make repro   (environment + the whole pipeline)   |   make test
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export DVC_NO_ANALYTICS ?= 1
export TOKENIZERS_PARALLELISM ?= false
# pytest workers for `make test`, each at one torch thread (tests/conftest.py): one per core of the 2-core machine
TEST_WORKERS ?= 2

.PHONY: setup repro test test-fast test-gpu lint clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --no-compile -r requirements.txt
	@# pip byte-compiles its 17k files on one core (~30 s); compileall spreads them over all of them. Like pip,
	@# it may meet a file that no 3.11 can compile (torch ships one written for 3.12): not an install failure.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
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
