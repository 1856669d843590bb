"""Pinned behaviour: short fixed-seed runs compared with golden values recorded from the trainer.

Each case runs the real entry point (``reasonrl.train.main`` or
``reasonrl.sft.main``) on the tiny arithmetic model and compares every metrics
row (all keys but wall-clock ones) and a fingerprint of every final parameter
tensor (sums, absolute and squared sums, and 16 fixed elements) with
``tests/data/golden.json`` to 1e-6. A refactor must leave them unchanged; a
change that is meant to alter behaviour re-records them, and its commit says
why::

    REASONRL_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Recorded on the project's 2-core x86_64 CPU machine with torch 2.13.0+cpu.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose

GOLDEN = Path(__file__).parent / "data" / "golden.json"
RECORD = os.environ.get("REASONRL_RECORD_GOLDEN") == "1"
TOL = 1e-6
WALL_CLOCK = ("time/", "rollout/tokens_per_s")  # keys that measure the machine, not the algorithm

_QUIET = ["logging.tensorboard=false", "logging.plot=false", "logging.progress=false", "verify.workers=0"]
CASES = {
    "grpo": ("train", [*TINY, *_QUIET, "max_steps=3", "eval.every=3"]),
    # B != G, so that grouping the advantages by the wrong one of the two cannot pass
    "grpo_6x4": (
        "train",
        [*TINY, *_QUIET, "rollout.prompts_per_step=6", "rollout.samples_per_prompt=4", "max_steps=2", "eval.every=0"],
    ),
    "dapo": ("train", [*TINY, *_QUIET, "algorithm=dapo", "max_steps=3", "eval.every=0"]),
    "dr_grpo": ("train", [*TINY, *_QUIET, "algorithm=dr_grpo", "max_steps=2", "eval.every=0"]),
    "deepseekmath_mu2_entropy": (
        "train",
        [
            *TINY,
            *_QUIET,
            "algorithm=grpo_deepseekmath",
            "algorithm.updates_per_batch=2",
            "algorithm.entropy_coef=0.01",
            "max_steps=2",
            "eval.every=0",
        ],
    ),
    "cold_start": (
        "train",
        [
            *TINY,
            *_QUIET,
            "experiment=sft_cold_start_arith",
            "cold_start.steps=4",
            "cold_start.demos=32",
            "cold_start.batch_size=8",
            "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=24",
            "max_steps=2",
            "eval.every=0",
        ],
    ),
    "sft": (
        "sft",
        [
            *[o for o in TINY if o.startswith(("model.", "task.", "eval.", "logging."))],
            "logging.tensorboard=false",
            "max_steps=6",
            "sft.eval_every=3",
            "sft.batch_size=8",
            "sft.demos=32",
        ],
    ),
}


def fingerprint(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    out = {}
    for name, t in sorted(state.items()):
        flat = t.detach().double().flatten()
        idx = torch.linspace(0, flat.numel() - 1, steps=min(16, flat.numel())).long()
        out[name] = [float(flat.sum()), float(flat.abs().sum()), float((flat * flat).sum()), *map(float, flat[idx])]
    return out


def run_case(name: str, tmp_path: Path) -> dict:
    from safetensors.torch import load_file

    kind, overrides = CASES[name]
    cfg = compose(kind, [*overrides, f"run_dir={tmp_path}"])
    if kind == "train":
        from reasonrl.train import main
    else:
        from reasonrl.finetune import main
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in rows]
    weights = {}
    for f in sorted((tmp_path / "checkpoints" / "final").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    return {"rows": rows, "params": fingerprint(weights)}


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= TOL * max(1.0, abs(b))
    return a == b


def diff(got: dict, want: dict) -> list[str]:
    problems = []
    if len(got["rows"]) != len(want["rows"]):
        problems.append(f"{len(got['rows'])} metrics rows, expected {len(want['rows'])}")
    for i, (g, w) in enumerate(zip(got["rows"], want["rows"])):
        for k in sorted(set(g) | set(w)):
            if k not in g or k not in w or not _close(g[k], w[k]):
                problems.append(f"row {i} {k}: {g.get(k, '<missing>')} != {w.get(k, '<missing>')}")
    if set(got["params"]) != set(want["params"]):
        problems.append(f"parameter names differ: {sorted(set(got['params']) ^ set(want['params']))}")
    for k in sorted(set(got["params"]) & set(want["params"])):
        g, w = got["params"][k], want["params"][k]
        # a tensor's sum cancels: its rounding error scales with the sum of magnitudes (entry 1), not with itself
        sum_ok = abs(g[0] - w[0]) <= TOL * max(1.0, abs(w[1]))
        if not (sum_ok and all(_close(a, b) for a, b in zip(g[1:], w[1:]))):
            problems.append(f"parameter {k} differs")
    return problems


@pytest.mark.parametrize("name", list(CASES))
def test_golden_run(name, tmp_path):
    got = run_case(name, tmp_path)
    if RECORD:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {name} into {GOLDEN}")
    want = json.loads(GOLDEN.read_text())[name]
    problems = diff(got, want)
    assert not problems, "\n".join(problems[:40])
