# Two entry points, each doing its own set-up (idempotent: a stamp file records what is installed).
#   make train   fine-tune GPT-2 medium on E2E with LoRA r=4 on W_q, W_v (the paper's recipe)
#   make test    install the test references and run the whole suite on CPU
#   make test-fast   the fast tier: the lesson against its references, in under a minute
# Extra flags for train.py go in ARGS, e.g. make train ARGS="--max-steps 100".

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: train test test-fast clean gpu-carry

$(VENV)/.run-deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(VENV)/.run-deps $@

# (train.py's defaults are that recipe; --rank and --targets are not repeated here, so that
# ARGS="--method full", which has no rank or targets, works too)
train: $(VENV)/.run-deps
	$(PY) train.py $(ARGS)

test: $(VENV)/.dev-deps
	$(PY) -m pytest -q -n auto --dist loadgroup tests

test-fast: $(VENV)/.dev-deps
	$(PY) -m pytest -q -n auto -m fast tests

# What a lent GPU machine needs and cannot download (scripts/gpu.sh): the E2E CSVs, the paper's
# released text, GPT-2's vocabulary and pytest's wheels, into the git-ignored gpu_carry/.
SHARED ?= ../shared
E2E_DATA_DIR ?= $(SHARED)/data/e2e
E2E_LORA_DIR ?= $(SHARED)/data/e2e-lora
TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken_cache
gpu-carry:
	rm -rf gpu_carry && mkdir -p gpu_carry/e2e
	cp $(E2E_DATA_DIR)/*.csv gpu_carry/e2e/
	cp -r $(E2E_LORA_DIR) gpu_carry/e2e-lora
	cp -r $(TIKTOKEN_CACHE_DIR) gpu_carry/tiktoken_cache
	$(PYTHON) -m pip download --quiet --dest gpu_carry/wheels pytest

clean:
	rm -rf $(VENV) .pytest_cache
