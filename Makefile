# Two commands: `make train` (the main job) and `make test` (the suite).
# Both create .venv on first use; setup is skipped when nothing changed.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
ARGS    ?=

.PHONY: setup train test clean-venv

setup: $(STAMP)

# torch first (the CPU build on this machine's disk), then the project with
# its dev extras, editable. The stamp depends on pyproject.toml, so editing
# dependencies reinstalls and nothing else does.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: setup
	$(VENV)/bin/reasonrl-train experiment=r1_zero_arith $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest tests $(ARGS)

clean-venv:
	rm -rf $(VENV)
