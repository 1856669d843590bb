"""A third-party package, really installed, is found by name from the command line: its verifiers (a hanging
check costs timeouts and the run goes on), and its advantage estimator and policy loss (by entry point, or
registered by decorators in a module the config's ``plugins`` imports), with a knob from ``algorithm.options``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import TINY

PLUGIN = '''
import os, time
from reasonrl.verifiers import Verdict


class LengthVerifier:
    """Rewards short completions (a toy third-party reward)."""

    name = "toy_len"

    def __init__(self, max_chars: int = 40):
        self.max_chars = max_chars

    def __call__(self, problem, completion):
        ok = len(completion) <= self.max_chars
        return Verdict(1.0 if ok else 0.0, "correct" if ok else "wrong", {"chars": len(completion)})


class HangVerifier:
    """Never returns for one problem (named by TOY_HANG_QUESTION)."""

    name = "toy_hang"

    def __call__(self, problem, completion):
        if problem.get("question") == os.environ.get("TOY_HANG_QUESTION"):
            while True:
                time.sleep(1)
        return Verdict(1.0, "correct", {})
'''

# Written in a form that keeps working whatever the loss signature: the wrapper looks the built-in up at call time
# and passes its arguments on unchanged. The estimator reads its knob from the algorithm config's options.
ALGOS = '''
import os

from reasonrl import grpo


def _mark(line):
    with open(os.environ["TOY_MARKER"], "a") as f:
        f.write(line + "\\n")


def scaled_advantages(rewards, group_size, valid, alg):
    """GRPO's advantages times algorithm.options.toy_scale."""
    scale = float(alg.options.get("toy_scale", 1.0))
    _mark(f"estimator toy_scale={scale}")
    return grpo.ADVANTAGE_ESTIMATORS["grpo"](rewards, group_size, valid, alg) * scale


def marked_clip(*args, **kwargs):
    """PPO's clipped surrogate, marking each call."""
    _mark("loss")
    return grpo.POLICY_LOSSES["ppo_clip"](*args, **kwargs)
'''

DECORATED = """
from reasonrl import grpo


@grpo.policy_loss("toy_decorated")
def decorated_clip(*args, **kwargs):
    return grpo.POLICY_LOSSES["ppo_clip"](*args, **kwargs)
"""

BROKEN = """
raise ImportError("toy_broken needs a backend that is not installed")
"""

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "reasonrl-toyplug"
version = "0.1"

[project.entry-points."reasonrl.verifiers"]
toy_len = "toyplug:LengthVerifier"
toy_hang = "toyplug:HangVerifier"

[project.entry-points."reasonrl.advantage_estimators"]
toy_scaled = "toyplug.algos:scaled_advantages"

[project.entry-points."reasonrl.policy_losses"]
toy_clip = "toyplug.algos:marked_clip"
toy_broken = "toyplug.broken:loss"
ppo_clip = "toyplug.algos:marked_clip"

[tool.setuptools]
packages = ["toyplug"]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The toy plugin package, installed (pip, no build isolation) into a folder that PYTHONPATH then names."""
    root = tmp_path_factory.mktemp("toyplug")
    pkg = root / "pkg"
    (pkg / "toyplug").mkdir(parents=True)
    for name, text in (("__init__", PLUGIN), ("algos", ALGOS), ("decorated", DECORATED), ("broken", BROKEN)):
        (pkg / "toyplug" / f"{name}.py").write_text(textwrap.dedent(text))
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    site = root / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(pkg)],
        capture_output=True,
        text=True,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert list(site.glob("reasonrl_toyplug-0.1.dist-info/entry_points.txt"))
    return site


def test_third_party_verifier_by_name_from_the_cli(tmp_path, site):
    from reasonrl.tasks import arith

    env = {**os.environ, "PYTHONPATH": str(site), "TOY_HANG_QUESTION": next(arith.ArithStream(0))["question"]}
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-train")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            exe,
            *TINY,
            "max_steps=2",
            "verifier=[integer,toy_len,toy_hang]",
            "verifier.toy_len.max_chars=30",
            "verify.timeout_s=1",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step1 = rows[1]
    assert "reward/toy_len/mean" in step1 and "reward/toy_len/chars" in step1
    # the first prompt's 4 samples hang in toy_hang: 4 of 16 samples x 3 verifiers time out, and are masked
    assert step1["verify/timeout_frac"] == 4 / 48
    assert step1["verify/masked_frac"] == 4 / 16
    assert step1["verify/workers_replaced"] == 4
    assert rows[2]["verify/timeout_frac"] == 0.0 and rows[2]["step"] == 2

    # without the package on the path the name is unknown, and Hydra says which
    bad = subprocess.run(
        [exe, "verifier=[toy_len]", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
    )
    assert bad.returncode != 0 and "toy_len" in bad.stderr


# a one-step run that spends its time on the plugin, not on evaluation or checkpoints
QUICK = [
    "max_steps=1",
    "task.heldout_size=8",
    "eval.sampled=false",
    "verify.workers=0",
    "logging.tensorboard=false",
    "checkpoint.every=0",
    "checkpoint.final=false",
]


def _train(site, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "TOY_MARKER": str(cwd / "marker")}
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-train")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_third_party_estimator_and_loss_by_name_from_the_cli(tmp_path, site):
    run_dir = tmp_path / "run"
    out = _train(
        site,
        tmp_path,
        *TINY,
        *QUICK,
        "algorithm.advantage=toy_scaled",
        "algorithm.policy_loss=toy_clip",
        "+algorithm.options.toy_scale=0.5",
        "plugins=[toyplug.decorated]",
        f"hydra.run.dir={run_dir}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    marks = (tmp_path / "marker").read_text().splitlines()
    assert marks[0] == "estimator toy_scale=0.5" and "loss" in marks  # the plugin's code ran, with its knob
    assert "toy_scale: 0.5" in (run_dir / "config.yaml").read_text()
    assert "toy_broken" in out.stderr and "ImportError" in out.stderr  # a broken plugin the run does not name: a warning
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1

    # an unknown name fails before any model loads, listing the plugins' names (a `plugins` module's included)
    bad = _train(
        site, tmp_path, "algorithm.policy_loss=toy_clp", "plugins=[toyplug.decorated]", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "reasonrl-train: error: unknown policy loss 'toy_clp' (algorithm.policy_loss); known: [" in bad.stderr
    assert all(repr(name) in bad.stderr for name in ("ppo_clip", "toy_clip", "toy_decorated"))


@pytest.fixture
def own_registries(monkeypatch, site):
    """The plugin package on sys.path, with registries and load records of this test's own."""
    from reasonrl import grpo, plugins

    monkeypatch.setattr(grpo, "ADVANTAGE_ESTIMATORS", dict(grpo.ADVANTAGE_ESTIMATORS))
    monkeypatch.setattr(grpo, "POLICY_LOSSES", dict(grpo.POLICY_LOSSES))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_failed", {})
    monkeypatch.syspath_prepend(str(site))
    yield grpo
    for name in [m for m in sys.modules if m == "toyplug" or m.startswith("toyplug.")]:
        del sys.modules[name]


def test_a_broken_plugin_stops_only_the_runs_that_name_it(own_registries, caplog):
    from reasonrl import plugins

    grpo = own_registries
    builtin = grpo.POLICY_LOSSES["ppo_clip"]
    with caplog.at_level("WARNING", logger="reasonrl.plugins"):
        plugins.prepare([], "toy_scaled", "toy_clip")  # a run that names working plugins goes on
    assert "toy_broken = toyplug.broken:loss" in caplog.text and "ImportError" in caplog.text
    assert grpo.POLICY_LOSSES["toy_clip"].__module__ == "toyplug.algos"
    assert grpo.ADVANTAGE_ESTIMATORS["toy_scaled"].__module__ == "toyplug.algos"
    assert grpo.POLICY_LOSSES["ppo_clip"] is builtin  # a plugin cannot replace a registered name
    assert "'ppo_clip' is already registered" in caplog.text

    with pytest.raises(plugins.PluginError) as e:
        plugins.prepare([], "grpo", "toy_broken")
    assert str(e.value).startswith("policy loss 'toy_broken' (algorithm.policy_loss) comes from the plugin toy_broken = ")
    assert "toyplug.broken:loss" in str(e.value) and "ImportError: toy_broken needs a backend" in str(e.value)

    with pytest.raises(plugins.PluginError, match=r"^plugins: module 'toyplug.nope' cannot be imported: ModuleNotFoundError"):
        plugins.prepare(["toyplug.nope"])
    with pytest.raises(plugins.PluginError, match=r"^unknown advantage estimator 'toy_scald' \(algorithm.advantage\); known: \["):
        plugins.check_algorithm("toy_scald", "ppo_clip")
    plugins.prepare(["toyplug.decorated"], "rloo", "toy_decorated")  # registered by the module's decorator
