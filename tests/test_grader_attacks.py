"""Attacks on the code grader, each written as the program a policy would learn to emit.

Each test plants something the program must not be able to use, runs the attack
through the real sandbox, and checks that it earns nothing. Where an attack
only works against a weaker grader, a control run shows that the same program
does score against that weaker grader, so the test is known to be able to fail.
"""

from __future__ import annotations

import ast
import secrets

import pytest

import reasonrl.verifiers.code as code_mod
from reasonrl.verifiers import GoldAnswerError
from reasonrl.verifiers.code import CodeVerifier
from reasonrl.verifiers.pool import ScoringPool

from conftest import SHARED_DATA, needs_data

MARKER_PREFIX = "ZQX"

# Searches, as an attacker would, everything the worker can reach: its frames (the
# `job` the runner handed it), every object the garbage collector tracks, and its
# whole readable memory through /proc/self/mem. Returns the first planted marker.
SEARCH_MEMORY = r"""
import gc, re, sys
_PAT = re.compile(rb"ZQX[0-9a-f]{32}")

def _scan(blob):
    m = _PAT.search(blob)
    return m.group(0).decode() if m else None

def _frames():
    for top in sys._current_frames().values():
        f = top
        while f is not None:
            yield f
            f = f.f_back

def _search():
    for f in _frames():
        for d in (f.f_locals, f.f_globals):
            try:
                found = _scan(repr(d).encode("utf-8", "replace"))
            except Exception:
                found = None
            if found:
                return found
    for o in gc.get_objects():
        try:
            found = _scan(repr(o).encode("utf-8", "replace")[:1 << 20])
        except Exception:
            found = None
        if found:
            return found
    try:
        maps = open("/proc/self/maps").read().splitlines()
        mem = open("/proc/self/mem", "rb", 0)
    except OSError:
        return None
    for line in maps:
        addr, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        if hi - lo > (256 << 20):
            continue
        try:
            mem.seek(lo)
            found = _scan(mem.read(hi - lo))
        except (OSError, ValueError, OverflowError):
            found = None
        if found:
            return found
    return None

def f(x):
    return _search()
"""


def _marker() -> str:
    return MARKER_PREFIX + secrets.token_hex(16)


def _hidden_problem(marker: str) -> dict:
    """A function whose expected values are known only to the tests (and a setup naming the marker)."""
    return {
        "prompt": "",
        "entry_point": "f",
        "test": (
            f"SECRET = {marker!r}\n"
            "def check(candidate):\n"
            f"    assert candidate(1) == {marker!r}\n"
            "    assert candidate(2) == SECRET\n"
            f"    assert candidate(3) == {marker!r}\n"
        ),
    }


@pytest.fixture(scope="module")
def v():
    return CodeVerifier(timeout_s=10.0)


def test_the_worker_never_holds_the_tests_setup_or_expected_values(v, monkeypatch):
    """Item 1: in calls mode the worker gets the program, the entry point and the mode, nothing else."""
    marker = _marker()
    problem = _hidden_problem(marker)
    r = v(problem, SEARCH_MEMORY)
    assert r.status == "wrong" and r.score == 0.0 and r.info["passed"] == 0, r
    # control: a runner that hands the worker the whole plan (as it once did) is beaten by this program
    leaky = code_mod._HARNESS.replace(
        '"calls": ("program", "entry_point", "mode", "names"),',
        '"calls": ("program", "entry_point", "mode", "names", "setup", "steps"),',
    )
    assert leaky != code_mod._HARNESS
    monkeypatch.setattr(code_mod, "_HARNESS", leaky)
    assert v(problem, SEARCH_MEMORY).score == 1.0


# The program raises StopIteration from the candidate: inside map(), a StopIteration ends the
# iteration early, so all(...) over an empty rest would be True if the runner re-raised it as is.
STOP_ITERATION = "def f(x):\n    raise StopIteration\n"


def test_exceptions_from_the_program_cannot_steer_the_tests(v):
    """Item 2: every exception the program raises reaches the tests as one neutral type."""
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": (
            "def check(candidate):\n"
            "    assert candidate(1) == 2\n"
            "    assert all(map(lambda x: candidate(x) == 2 * x, [1, 2, 3]))\n"
            "    assert candidate(5) == 10\n"
        ),
    }
    r = v(problem, STOP_ITERATION)
    assert r.status == "wrong" and r.info["passed"] == 0 and r.score == 0.0, r
    assert "StopIteration" in r.info["reason"]  # the name survives in the message
    assert v(problem, "def f(x):\n    return 2 * x\n").status == "correct"


def test_exceptions_are_neutral_where_the_tests_use_the_programs_own_names_too(v):
    """The same rule where the tests use names only the program defines (handles on its objects)."""
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": (
            "def check(candidate):\n"
            "    assert Helper() is not None\n"
            "    assert all(map(lambda x: candidate(x) == 2 * x, [1, 2, 3]))\n"
        ),
    }
    assert code_mod.check_plan(problem)["names"] == ["Helper"]
    r = v(problem, "class Helper:\n    pass\n" + STOP_ITERATION)
    assert r.info == {"reason": "ProgramRaised: StopIteration: ", "passed": 0, "total": 1}, r


def test_a_program_that_sleeps_on_every_case_is_wrong_within_the_problems_own_time():
    """Item 3: the first case over its limit ends the check; the rest fail. So a check of a looping
    program ends in about one case's limit and the pool scores it `wrong`, not a masked `timeout`."""
    problem = {"tests": [{"input": f"{i}\n", "output": f"{i}\n"} for i in range(6)]}
    sleeper = "import time\ntime.sleep(1000)\n"
    verifier = CodeVerifier(timeout_s=1.0)
    r = verifier(problem, sleeper)
    assert r.status == "wrong" and r.score == 0.0 and r.info["cases_run"] == 1, r
    assert "case 0: timeout" in r.info["reason"]
    # through the scoring pool, whose deadline is far below 6 cases x 1 s
    with ScoringPool({"code": verifier}, workers=1, timeout_s=3.0) as pool:
        (verdicts,) = pool.run([problem], [sleeper])
    assert verdicts["code"].status == "wrong", verdicts
    # a program that is merely wrong on some cases still runs them all
    r = verifier(problem, "x = input()\nprint(x if x != '3' else 'no')\n")
    assert r.info["cases_run"] == 6 and r.score == pytest.approx(5 / 6)


# -- forged outcomes where the tests use names only the program defines -------------------------
# The program walks up to the frame of the process that runs it, takes the pipe it answers on and the
# runner's own framing function, and writes "loaded" and "passed" for every test; then it exits.
FORGE_BY_FRAMES = """
import json, os, sys
f = sys._getframe()
while f is not None and "wfd" not in f.f_locals:
    f = f.f_back
if f is not None:
    wfd, send = f.f_locals["wfd"], f.f_globals["_send"]
    send(wfd, b'{"ok": true}')
    for i in range(-1, 64):
        send(wfd, json.dumps({"i": i, "ok": True, "why": ""}).encode())
    os._exit(0)
"""
# The same without frames: every descriptor it may write gets the framed messages.
FORGE_BY_FDS = """
import json, os, struct
def _msg(obj):
    data = json.dumps(obj).encode()
    return struct.pack("<Q", len(data)) + data
blob = _msg({"ok": True}) + b"".join(_msg({"i": i, "ok": True, "why": ""}) for i in range(-1, 64))
for fd in range(3, 256):
    try:
        os.write(fd, blob)
    except OSError:
        pass
os._exit(0)
"""
FORGERIES = {"frames": FORGE_BY_FRAMES, "fds": FORGE_BY_FDS}


def _mbpp(task_id: int) -> dict:
    from reasonrl.tasks.sources import load_problems

    (problem,) = load_problems(str(SHARED_DATA / "mbpp" / "mbpp.jsonl"), format="mbpp", filter=f"id == {task_id}")
    return problem


def _forgery_pays_nothing(v: CodeVerifier, problem: dict, honest: str) -> None:
    assert code_mod.check_plan(problem)["names"]  # the tests need the program's own names
    beside = CodeVerifier(timeout_s=10.0, tests_beside_program=True)
    for how, forgery in FORGERIES.items():
        r = v(problem, forgery)
        assert r.status == "wrong" and r.score == 0.0 and r.info["passed"] == 0, (how, r)
        # control: where the tests run next to the program (the opt-in, as every such problem once
        # was graded), the same program scores full marks without a solution
        forged = beside(problem, forgery)
        assert forged.status == "correct" and forged.score == 1.0, (how, forged)
    assert v(problem, honest).status == "correct"
    assert beside(problem, honest).status == "correct"


@needs_data
def test_forged_outcomes_do_not_pass_mbpp_601(v):
    """Item 1: MBPP 601 (in smollm2_mbpp's training range) builds Pair objects of the program's own."""
    problem = _mbpp(601)
    assert code_mod.check_plan(problem)["names"] == ["Pair"]
    _forgery_pays_nothing(v, problem, problem["reference"])


def test_forged_outcomes_do_not_pass_where_the_tests_need_the_programs_names(v):
    """Item 1 without the data: expected values the program never sees, objects it defines."""
    problem = {
        "prompt": "",
        "entry_point": "longest",
        "test": (
            "def check(candidate):\n"
            "    assert candidate([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]) == 3\n"
            "    assert candidate([Pair(1, 2)]) == 1\n"
        ),
    }
    honest = (
        "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "def longest(ps):\n    best = [1] * len(ps)\n    for i in range(len(ps)):\n        for j in range(i):\n"
        "            if ps[i].a > ps[j].b:\n                best[i] = max(best[i], best[j] + 1)\n    return max(best)\n"
    )
    _forgery_pays_nothing(v, problem, honest)


# -- checks that pass anything -------------------------------------------------------------
# The asserts go through a name other than `candidate`; once, the statement naming `candidate` was the
# only "test" and the asserts were setup, whose failure failed only the tests after them: none.
ALIASED_CHECKS = {
    "alias": "def check(candidate):\n    fn = candidate\n    assert fn(1) == 2\n    assert fn(2) == 4\n",
    "local helper": (
        "def check(candidate):\n    def run(x):\n        return candidate(x)\n    assert run(1) == 2\n    assert run(2) == 4\n"
    ),
    "results first": "def check(candidate):\n    a = candidate(1)\n    b = candidate(2)\n    assert a == 2\n    assert b == 4\n",
}
RETURN_NONE = "def f(x):\n    return None\n"
VOID = 'void(f"check statement {i} failed: {type(e).__name__}: {e}", after=i)'
FAIL_LATER_ONLY = 'fail_all(f"check statement {i} failed: {type(e).__name__}: {e}", after=i)'


def _naming_plan(problem: dict) -> dict:
    """The old split of a check (its tests use no name of the program's): a statement that names
    candidate or the entry point is a test."""
    tree = ast.parse(problem["test"])
    check = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"][-1]
    called = {"candidate", problem["entry_point"]}
    steps = [
        {"code": ast.unparse(s), "test": any(isinstance(n, ast.Name) and n.id in called for n in ast.walk(s))} for s in check.body
    ]
    return {"setup": ast.unparse([n for n in tree.body if n is not check]), "steps": steps, "names": []}


@pytest.mark.parametrize("shape", list(ALIASED_CHECKS))
def test_a_check_through_an_alias_grades_every_assert(v, shape, monkeypatch):
    """Item 2: aliases of the candidate are tracked, and a failing setup statement fails every test."""
    problem = {"prompt": "", "entry_point": "f", "test": ALIASED_CHECKS[shape]}
    tests = [s["test"] for s in code_mod.check_plan(problem)["steps"]]
    assert tests[-2:] == [True, True] and not any(tests[:-2])  # the asserts, not the bindings
    r = v(problem, RETURN_NONE)
    assert r.status == "wrong" and r.score == 0.0 and r.info["total"] == 2, r
    assert v(problem, "def f(x):\n    return 2 if x == 1 else 0\n").score == 0.5  # each assert is one test
    assert v(problem, "def f(x):\n    return 2 * x\n").status == "correct"
    # controls: the old split alone is stopped by the runner (a failing setup statement voids every
    # test), the old runner alone by the split; with both, `return None` scores full marks
    old_runner = code_mod._HARNESS.replace(VOID, FAIL_LATER_ONLY)
    assert old_runner != code_mod._HARNESS
    monkeypatch.setattr(code_mod, "check_plan", _naming_plan)
    assert v(problem, RETURN_NONE).score == 0.0
    monkeypatch.setattr(code_mod, "_HARNESS", old_runner)
    assert v(problem, RETURN_NONE).status == "correct"
    monkeypatch.undo()
    monkeypatch.setattr(code_mod, "_HARNESS", old_runner)
    assert v(problem, RETURN_NONE).score == 0.0


def test_a_failing_setup_statement_fails_the_tests_passed_before_it(v):
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n    x = candidate(2)\n    assert x == 4\n",
    }
    r = v(problem, "def f(x):\n    if x == 2:\n        raise ValueError('no')\n    return 2\n")
    assert r.status == "wrong" and r.score == 0.0 and r.info["total"] == 2 and "statement 1 failed" in r.info["reason"], r


@pytest.mark.parametrize(
    "test",
    [
        "def check(candidate):\n    candidate(1)\n",
        "def check(candidate):\n    fn = candidate\n    assert True\n",
        "def check(candidate):\n    r = candidate(1)\n    print(r == 2)\n",
        "def check(candidate):\n    def t():\n        assert candidate(1) == 2\n",
    ],
)
def test_a_check_that_asserts_nothing_about_the_candidate_is_a_gold_error(v, test):
    problem = {"prompt": "", "entry_point": "f", "test": test}
    with pytest.raises(GoldAnswerError, match="asserts nothing"):
        v.check_gold(problem)
    # control: the old split found a "test" in each, which any program passed
    assert any(s["test"] for s in _naming_plan(problem)["steps"])
