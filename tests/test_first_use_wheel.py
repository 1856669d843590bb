"""An installed wheel carries the Hydra configs and trains: ``reasonrl-train --cfg job`` and one tiny GRPO step
work far from the source tree, with an empty cache.

The wheel is built from a copy of the packaged folders (nothing is written into the source tree) and
installed into a throwaway virtual environment that borrows this environment's dependencies through a
``.pth`` file (so the editable install of the source tree is not on its path).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO, TINY

PACKAGED = ["pyproject.toml", "README.md", "reasonrl", "verifiers", "sandbox", "evals", "conf"]


def test_the_wheel_ships_every_config_and_runs_outside_the_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in PACKAGED:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {})
        )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), "."],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "whl").glob("reasonrl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"reasonrl/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)]
    inst = subprocess.run(pip, capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    out = subprocess.run(
        [str(venv / "bin" / "reasonrl-train"), "--cfg", "job", "experiment=r1_zero_arith", "max_steps=3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "experiment_name: r1_zero_arith" in out.stdout and "max_steps: 3" in out.stdout
    where = subprocess.run(
        [str(py), "-c", "import reasonrl.config as c; print(c.CONF_DIR)"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert where.stdout.strip() == str(Path(site) / "reasonrl" / "conf"), where.stderr

    # One training step from the installed wheel, as a first user runs it: from a directory of its own, with a
    # cache that holds nothing yet (its own XDG_CACHE_HOME, not the session's, which other tests may have
    # filled), so the base model is built from the packaged configs. A random base model (pretrain.max_steps=0,
    # the schema's speed-check setting) and no pool, TensorBoard or checkpoints keep it to seconds: this checks
    # that the packaged code trains, not what it learns.
    cheap = {
        "model.pretrain.max_steps": "0",
        "task.heldout_size": "4",
        "rollout.prompts_per_step": "2",
        "rollout.max_new_tokens": "8",
        "eval.max_new_tokens": "8",
        "eval.sampled": "false",
        "verify.workers": "0",
        "logging.tensorboard": "false",
        "checkpoint.every": "0",
        "checkpoint.final": "false",
    }
    tiny = {k: v for k, v in (o.split("=", 1) for o in TINY)} | cheap
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    train = subprocess.run(
        [str(venv / "bin" / "reasonrl-train"), "experiment=r1_zero_arith", "max_steps=1", "run_dir=run"]
        + [f"{k}={v}" for k, v in tiny.items()],
        cwd=elsewhere,
        env={**env, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    rows = [json.loads(line) for line in (elsewhere / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1], rows
    assert {"reward/mean", "train/loss", "train/grad_norm", "rollout/len_mean"} <= set(rows[1]), sorted(rows[1])
    assert (elsewhere / "run" / "summary.json").is_file()
    built = list((cache / "reasonrl" / "models").iterdir())  # the base model went into the cache it was given
    assert len(built) == 1 and (built[0] / "config.json").is_file(), built
