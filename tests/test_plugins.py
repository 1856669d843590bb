"""A third-party verifier package, really installed, is found by name from the command line;
its hanging check costs timeouts and the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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

[tool.setuptools]
packages = ["toyplug"]
"""


def test_third_party_verifier_by_name_from_the_cli(tmp_path):
    from reasonrl.tasks import arith

    pkg = tmp_path / "pkg"
    (pkg / "toyplug").mkdir(parents=True)
    (pkg / "toyplug" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    site = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(pkg)],
        capture_output=True,
        text=True,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert list(site.glob("reasonrl_toyplug-0.1.dist-info/entry_points.txt"))

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
