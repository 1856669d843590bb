"""One import namespace: reasonrl never provides top-level verifiers/sandbox/evals."""

import subprocess
import sys

from conftest import REPO


def test_no_top_level_shadowing():
    code = (
        "import importlib.util, sys, reasonrl, reasonrl.verifiers, reasonrl.sandbox, reasonrl.evals, reasonrl.train\n"
        "for name in ('verifiers', 'sandbox', 'evals'):\n"
        "    assert name not in sys.modules, name\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    assert spec is None or 'reasonrl' not in str(spec.origin), (name, spec)\n"
        "print('ok')\n"
    )
    # run from a neutral directory so the repo's own folders are not on sys.path
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_subpackages_map_to_top_level_folders():
    import reasonrl.evals
    import reasonrl.sandbox
    import reasonrl.verifiers

    assert reasonrl.verifiers.__file__.startswith(str(REPO / "verifiers"))
    assert reasonrl.sandbox.__file__.startswith(str(REPO / "sandbox"))
    assert reasonrl.evals.__file__.startswith(str(REPO / "evals"))


def test_import_is_light():
    code = "import sys, reasonrl, reasonrl.verifiers; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
