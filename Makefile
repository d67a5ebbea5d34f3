# The two commands of the README: `make quickstart` and `make test`. Each creates .venv if absent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
# No test or quickstart reaches the network; models and data are built locally or read from ../shared.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test test-fast lint format constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, on its own: the pinned build, never a second one pulled in by a dependency.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,tensorboard,quantization,eval-harness,ui,ray,privacy,pipelines]"
	touch $(STAMP)

# llama.cpp for the GGUF read-back tests: compiled here (a few minutes, once; pip keeps the wheel). A machine
# that cannot build it still tests everything else: those tests skip and say why.
LLAMA_STAMP := $(VENV)/.installed-gguf-check
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[gguf-check]" \
		|| echo "could not build llama-cpp-python: the llama.cpp GGUF tests will skip"
	touch $(LLAMA_STAMP)

# mergekit for the merge parity tests, without its dependencies (the pinned stack already has them but
# immutables). Where it cannot be installed those tests skip and say why.
MERGEKIT_STAMP := $(VENV)/.installed-merge-check
$(MERGEKIT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt mergekit immutables \
		|| echo "could not install mergekit: the merge parity tests will skip"
	touch $(MERGEKIT_STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/llmft quickstart --overwrite

test: install $(LLAMA_STAMP) $(MERGEKIT_STAMP)
	$(BIN)/python -m pytest

test-fast: install $(LLAMA_STAMP) $(MERGEKIT_STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

constraints: install
	@{ sed -n '1,2p' constraints.txt; echo "torch==$(TORCH_VERSION)"; \
	   $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
