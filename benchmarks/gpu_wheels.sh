#!/usr/bin/env bash
# Fetch the pure-Python packages the GPU check needs that the lent machine lacks
# (its image has torch, transformers, tqdm, pyyaml, tokenizers) into .whl/,
# which git ignores and the device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0
# antlr4 4.9.3 is published as source only: build its (pure-Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
