"""Shared fixtures: a private cache and a tiny, quickly pretrained base model.

Tests run on CPU without network; models are built from a config here, never
downloaded. ``tiny_overrides`` shrinks the default experiment so a GRPO step
takes well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# configs name data as ${REASONRL_DATA_DIR}/...; point them at the shared data whatever the cwd
if SHARED_DATA.is_dir():
    os.environ.setdefault("REASONRL_DATA_DIR", str(SHARED_DATA))
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real benchmark data not found at {SHARED_DATA}")

# A few pretraining steps are enough to exercise the whole pipeline.
TINY = [
    "model.pretrain.max_steps=20",
    "model.pretrain.eval_every=10",
    "model.pretrain.eval_problems=16",
    "model.pretrain.batch_size=32",
    "task.heldout_size=32",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "eval.max_new_tokens=24",
    "logging.progress=false",
    "logging.plot=false",
]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test session builds into its own cache, never the user's."""
    path = tmp_path_factory.mktemp("xdg_cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def compose(config_name: str = "train", overrides: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from reasonrl.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides or [])
