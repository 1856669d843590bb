"""Attacks on the code grader, each written as the program a policy would learn to emit.

Each test plants something the program must not be able to use, runs the attack
through the real sandbox, and checks that it earns nothing. Where an attack
only works against a weaker grader, a control run shows that the same program
does score against that weaker grader, so the test is known to be able to fail.
"""

from __future__ import annotations

import secrets

import pytest

import reasonrl.verifiers.code as code_mod
from reasonrl.verifiers.code import CodeVerifier
from reasonrl.verifiers.pool import ScoringPool

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
        '_WORKER_KEYS = {"calls": ("program", "entry_point", "mode"),',
        '_WORKER_KEYS = {"calls": ("program", "entry_point", "mode", "setup", "steps"),',
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


def test_exceptions_are_neutral_in_the_tests_beside_the_program_mode_too(v):
    """The same rule where the tests run beside the program (names only the program defines)."""
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": (
            "def check(candidate):\n"
            "    assert Helper() is not None\n"
            "    assert all(map(lambda x: candidate(x) == 2 * x, [1, 2, 3]))\n"
        ),
    }
    assert code_mod.check_plan(problem)["mode"] == "tests"
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
