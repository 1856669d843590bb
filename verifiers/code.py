"""Code answers: run the program in the sandbox, grade it in this (trusted) process.

Problems come in two shapes (docs/design.md, "Verifiers"):

- HumanEval style: ``prompt`` (signature and docstring), ``test`` (a module
  defining ``check(candidate)``) and ``entry_point``. The program is the
  prompt followed by the extracted code, so a completion may be the function
  body (as HumanEval's canonical solutions are) or a whole definition. The
  tests are the top-level statements of ``check`` that use the candidate and
  assert something (see "Which statements are tests" below).
- stdin/stdout: ``tests``, a list of ``{"input": ..., "output": ...}``. Each
  case runs the program afresh on that input; the whole output must equal the
  expected one (trailing whitespace on each line and trailing blank lines
  ignored), so a prefix of the right output fails. The first case in which the
  program runs out of time, memory or output ends the check and the cases left
  fail, so a looping program costs one case's limit, not one per case
  (``info["cases_run"]`` says how many ran).

Extraction: the last fenced code block (```python, ```py or plain ```; a final
unclosed fence counts, for truncated completions), else the ``<answer>``
content, else the raw text after any ``<think>`` block.

Score: the fraction of tests passed (``partial_credit=True``, the default) or
1/0. Status: ``correct`` when every test passes, ``wrong`` otherwise (a
program that runs out of time, memory or output is the model's failure; the
reason is in ``info``), ``no_answer`` for an empty program, ``format_error``
for one that does not compile, and ``error`` when the sandbox itself failed
(never scored as wrong; masked from the loss by default).

Which statements are tests (a heuristic on the gold ``check``, parsed once per
problem). A name *refers to the candidate* when it is ``candidate``, the entry
point (MBPP's asserts call it by name), or an alias: a name bound anywhere in
``check`` (assignment, loop or ``with`` target, walrus, ``def`` or ``class``)
from an expression or body that reads a name referring to the candidate
(``fn = candidate``, ``def helper(x): return candidate(x)``,
``r = candidate(1)``), to a fixed point. A top-level statement of ``check`` is
a test when it is not a definition or import, reads a name referring to the
candidate, and asserts: it holds an ``assert`` or ``raise``, or reads a local
function that does (to a fixed point). Every other statement is setup; it runs
in order, and a setup statement that fails fails *every* test, those already
passed included. A ``check`` with no test is a gold error (``check_gold``
raises it): nothing it says would depend on the program.

Where the work on the model's text happens. This process does only linear
work on it: the length caps (a completion over ``MAX_COMPLETION_CHARS`` or a
program over ``MAX_PROGRAM_CHARS`` is a ``format_error`` before anything else),
extraction (one split, no regular expression), and reading the sandbox's
capped output. The program is compiled only inside the sandbox, under the
program's own time and memory limits (CPython's compiler is quadratic on some
inputs: 25k keyword arguments take seconds), so a program that is slow to
compile is over its limits (``wrong``, reason in ``info``), never a check that
did not finish (``timeout``, masked). A compile error there is reported back
and is a ``format_error``; for stdin/stdout problems a small trusted wrapper
compiles the program and says so on stderr with a per-check token (a program
that prints that line itself only turns its own verdict into a zero).

Cheating that does not pay: exiting early (``sys.exit(0)``, ``os._exit(0)``;
the exit code is never evidence, only per-test records carrying this run's
random token are), printing fake "passed" lines (no token), returning an
object whose ``__eq__`` is always true (only exact built-in values cross back),
patching built-ins or modules the tests use, walking frames or the garbage
collector for the token or the recorder, writing forged outcomes on its pipe
(the program runs in a separate worker process that never holds the token,
never sees the tests and never reports an outcome, only return values; see
``code_harness``), printing a prefix of the expected output. That holds too
for the problems whose tests use names only the program defines (3 of MBPP's
974: 367, 601, 927; none of HumanEval's): those names are handles on the
program's objects in the worker, and the tests still run in the trusted
runner. ``tests_beside_program=True`` runs such tests next to the program
instead (an explicit opt-in, for data whose tests need more of the program's
objects than calls and attribute reads and writes): there a program can report
its own tests passed, so it is never the default.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import secrets
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from reasonrl.sandbox import Limits, Sandbox
from reasonrl.verifiers.base import GoldAnswerError, Verdict

_PY = {"", "python", "python3", "py"}
_HARNESS = (Path(__file__).parent / "code_harness.py").read_text()
MAX_PROGRAM_CHARS = 100_000
MAX_COMPLETION_CHARS = 4 * MAX_PROGRAM_CHARS  # longer completions are refused before any parsing
MIN_MEMORY_MB = 64  # below this the test runner's own start-up could fail part-way
RUN_MARGIN_S = 1.0  # sandbox start-up and teardown around one run's own time limit
OVER_LIMIT = ("timeout", "memory", "output_limit")  # sandbox statuses of a program over its own limits
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
# stdin/stdout programs run under this trusted wrapper: it compiles the program in the sandbox and
# says on stderr, with the check's token, when it does not compile; then runs it as __main__.
_STDIO_WRAPPER = """\
def _run(source, token):
    import sys
    try:
        code = compile(source, __file__, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        sys.stderr.write("\\n%s does_not_compile %s: %s\\n" % (token, type(e).__name__, str(e)[:200]))
        raise SystemExit(1)
    del globals()["_run"]
    exec(code, globals())
_run({source!r}, {token!r})
"""


class _DoesNotCompile(Exception):
    pass


def extract_code(completion: str) -> str:
    """Linear-time extraction (no backtracking regex on model output): the last closed fenced
    block (Python ones first), else a final unclosed ```python fence, else the last
    <answer>...</answer>, else the text after the first </think>, else everything."""
    parts = completion.split("```")
    blocks = []  # (language, code) of each fenced block; the last is unclosed when the fences are odd
    for body in parts[1::2]:
        header, newline, code = body.partition("\n")
        if newline:
            blocks.append((header.strip().split(" ")[0].lower(), code))
        else:
            blocks.append((None, body))  # inline ``code`` on one line: not a program
    open_block = blocks.pop() if len(parts) % 2 == 0 and blocks else None
    closed = [(lang, code) for lang, code in blocks if lang is not None]
    if closed:
        python = [code for lang, code in closed if lang in _PY]
        return (python or [code for _, code in closed])[-1]
    if open_block is not None and open_block[0] in _PY:
        return open_block[1]
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        return completion[start + len("<answer>") : end]
    think = completion.find("</think>")
    return completion[think + len("</think>") :] if think >= 0 else completion


def normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def check_plan(problem: Mapping[str, Any]) -> dict:
    """Split a HumanEval test module into setup and the statements of ``check`` (parsed once per problem)."""
    return _plan(problem["test"], problem.get("prompt", ""), problem.get("entry_point"))


def _reads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _names_in(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _bindings(check: ast.FunctionDef) -> list[tuple[set[str], ast.AST]]:
    """(names bound, what they are bound from) for every binding inside ``check``'s body."""
    out: list[tuple[set[str], ast.AST]] = []
    for n in (m for stmt in check.body for m in ast.walk(stmt)):
        if isinstance(n, ast.Assign):
            out.append((set().union(*(_names_in(t) for t in n.targets)), n.value))
        elif isinstance(n, (ast.AnnAssign, ast.AugAssign)) and n.value is not None:
            out.append((_names_in(n.target), n.value))
        elif isinstance(n, ast.NamedExpr):
            out.append(({n.target.id}, n.value))
        elif isinstance(n, (ast.For, ast.AsyncFor, ast.comprehension)):
            out.append((_names_in(n.target), n.iter))
        elif isinstance(n, (ast.With, ast.AsyncWith)):
            out += [(_names_in(i.optional_vars), i.context_expr) for i in n.items if i.optional_vars is not None]
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(({n.name}, n))
    return out


def _fixed_point(names: set[str], rules: list[tuple[set[str], ast.AST]], grows) -> set[str]:
    """Add each rule's names to ``names`` while ``grows(node, names)`` holds for its node, until none adds more."""
    names, changed = set(names), True
    while changed:
        changed = False
        for bound, node in rules:
            if not bound <= names and grows(node, names):
                names |= bound
                changed = True
    return names


def _asserts(node: ast.AST, asserting: set[str]) -> bool:
    return any(isinstance(n, (ast.Assert, ast.Raise)) for n in ast.walk(node)) or bool(_reads(node) & asserting)


@functools.lru_cache(maxsize=4096)
def _plan(test: str, prompt: str, entry_point: str | None) -> dict:
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError) as e:
        raise GoldAnswerError(f"test code does not parse: {e}") from None
    check = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not check:
        raise GoldAnswerError("test code defines no check(candidate)")
    check = check[-1]
    setup = ast.unparse([n for n in tree.body if n is not check]) if len(tree.body) > 1 else ""
    # names that refer to the candidate: candidate, the entry point (MBPP's asserts call it by
    # name), and every alias bound from them; local functions that assert
    called = _fixed_point({"candidate", entry_point}, _bindings(check), lambda n, names: bool(_reads(n) & names))
    local_defs = [
        ({n.name}, n) for n in ast.walk(check) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n is not check
    ]
    asserting = _fixed_point(set(), local_defs, _asserts)

    def is_test(stmt: ast.AST) -> bool:
        return not isinstance(stmt, _DEFS) and bool(_reads(stmt) & called) and _asserts(stmt, asserting)

    steps = [{"code": ast.unparse(stmt), "test": is_test(stmt)} for stmt in check.body]
    try:  # statements of a function body that only make sense inside one (return, ...)
        for s in steps:
            compile(s["code"], "<check>", "exec")
    except SyntaxError:
        whole = bool(_reads(check) & called) and _asserts(check, asserting)
        steps = [{"code": ast.unparse(check) + "\ncheck(candidate)", "test": whole}]
    if not any(s["test"] for s in steps):
        raise GoldAnswerError("check(candidate) asserts nothing about candidate: no statement both uses and asserts")
    try:
        prompt_bound = _bound_and_loaded(ast.parse(prompt))[0]
    except (SyntaxError, ValueError) as e:
        raise GoldAnswerError(f"prompt code does not parse: {e}") from None
    bound, loaded = _bound_and_loaded(tree)
    # names the tests read that only the program defines (an MBPP setup building its Node class):
    # the test runner binds them to handles on the program's objects
    foreign = loaded - bound - prompt_bound - set(dir(builtins)) - called
    return {"setup": setup, "steps": steps, "names": sorted(foreign)}


def _bound_and_loaded(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names a module binds anywhere (assignments, defs, arguments, imports) and names it reads."""
    bound, loaded = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return bound, loaded


class Records(NamedTuple):
    results: dict[int, tuple[bool, str]]  # test index -> (passed, reason as JSON)
    error: str | None  # the runner's own failure (JSON): the check could not be done
    compile_error: str | None  # the program does not compile (JSON)


def parse_records(stdout: str, token: str) -> Records:
    """The test runner's records (see ``code_harness``).

    Only lines carrying this run's token count; the first record for an index wins; a ``void``
    line (a setup statement failed) makes every test fail, those recorded as passed included;
    anything else on stdout (the program's output, forged records with another token, malformed
    lines) is ignored.
    """
    results: dict[int, tuple[bool, str]] = {}
    void, compile_error = None, None
    for line in stdout.splitlines():
        parts = line.split(" ", 3)
        if parts[0] != token or len(parts) < 3:
            continue
        if parts[1] == "harness_error":
            return Records(results, line.split(" ", 2)[2], None)
        if parts[1] == "compile_error":
            compile_error = compile_error or line.split(" ", 2)[2]
        elif parts[1] == "void":
            void = void or line.split(" ", 2)[2]
        elif len(parts) == 4 and parts[2] in ("pass", "fail") and parts[1].isdigit():
            results.setdefault(int(parts[1]), (parts[2] == "pass", parts[3]))
    if void is not None:
        results = {i: (False, void) for i in results}
    return Records(results, None, compile_error)


class CodeVerifier:
    name = "code"

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        partial_credit: bool = True,
        isolation: str = "bwrap",
        max_procs: int = 16,
        max_output_kb: int = 1024,
        max_cases: int | None = None,
        cgroup: bool = True,
        tests_beside_program: bool = False,
    ):
        self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"code verifier memory_mb={memory_mb} is below {MIN_MEMORY_MB}: the test runner itself needs that much"
            )
        self.partial_credit = bool(partial_credit)
        self.max_cases = max_cases
        # unsafe opt-in: tests that read the program's own names run next to it, where it can fake them
        self.tests_beside_program = bool(tests_beside_program)
        limits = Limits(max_procs=int(max_procs), max_output_bytes=int(max_output_kb) << 10)
        self.sandbox = Sandbox(isolation=isolation, limits=limits, use_cgroup=bool(cgroup))
        self.sandbox.check()  # refuse at start, with the reason, rather than on every sample

    def deadline_s(self, problem: Mapping[str, Any]) -> float:
        """The longest a check of ``problem`` may take with the program inside its limits: one sandbox run
        for HumanEval-style tests, one per case for stdin/stdout tests (plus start-up margin each). The
        scoring pool gives the check at least this long, so only a hanging check is a ``timeout``."""
        per_run = self.sandbox.wall_limit_s(self.timeout_s) + RUN_MARGIN_S
        cases = problem.get("tests") if "tests" in problem and "entry_point" not in problem else None
        if isinstance(cases, str):
            try:
                cases = json.loads(cases)
            except ValueError:
                cases = None
        n = len(cases) if isinstance(cases, list) else 1
        if self.max_cases:
            n = min(n, self.max_cases)
        return max(1, n) * per_run

    def check_gold(self, problem: Mapping[str, Any]) -> None:
        if "test" in problem and "entry_point" in problem:
            check_plan(problem)
        elif "tests" in problem:
            cases = problem["tests"]
            if isinstance(cases, str):
                cases = json.loads(cases)
            if not cases or not all(isinstance(c, Mapping) and "input" in c and "output" in c for c in cases):
                raise GoldAnswerError("tests must be a non-empty list of {input, output}")

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None:
        humaneval = "test" in problem and "entry_point" in problem
        if not humaneval and "tests" not in problem:
            return None
        if len(completion) > MAX_COMPLETION_CHARS:
            return Verdict(0.0, "format_error", {"reason": "completion too long"})
        code = extract_code(completion)
        if not code.strip():
            return Verdict(0.0, "no_answer", {})
        if len(code) > MAX_PROGRAM_CHARS:
            return Verdict(0.0, "format_error", {"reason": "program too long"})
        program = (problem["prompt"] + "\n" + code) if humaneval else code
        try:
            if humaneval:
                passed, total, info = self._humaneval(problem, program)
            else:
                passed, total, info = self._stdio(problem, program)
        except _DoesNotCompile as e:
            return Verdict(0.0, "format_error", {"reason": f"does not compile: {str(e)[:200]}"})
        if passed is None:
            return Verdict(0.0, "error", info)
        info.update(passed=passed, total=total)
        if passed == total:
            return Verdict(1.0, "correct", info)
        return Verdict(passed / total if self.partial_credit else 0.0, "wrong", info)

    def _humaneval(self, problem, program):
        plan = check_plan(problem)
        tests = [i for i, s in enumerate(plan["steps"]) if s["test"]]
        token = secrets.token_hex(16)
        payload = {
            "program": program,
            "prompt": problem["prompt"],
            "entry_point": problem["entry_point"],
            "reference": problem.get("canonical_solution") or "",
            "mode": "beside" if self.tests_beside_program and plan["names"] else "calls",
            **plan,
        }
        r = self.sandbox.run(
            _HARNESS, stdin=token + "\n" + json.dumps(payload), timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )
        if r.status == "infra_error":
            return None, len(tests), {"sandbox": r.reason[:200]}
        results, harness_error, compile_error = parse_records(r.stdout, token)
        if harness_error is not None:
            return None, len(tests), {"sandbox": harness_error[:200]}
        if compile_error is not None:
            raise _DoesNotCompile(_json_text(compile_error))
        passed = sum(1 for i in tests if results.get(i, (False,))[0])
        info: dict[str, Any] = {}
        if passed < len(tests):
            first = next(i for i in tests if not results.get(i, (False,))[0])
            why = _json_text(results[first][1]) if first in results else f"no result ({r.status}: {r.reason or 'exited early'})"
            info["reason"] = why[:200]
        if r.status != "ok":
            info["run_status"] = r.status
        info.update(getattr(r, "info", None) or {})  # no_memory_cap: the run had no cgroup (said once in the log)
        return passed, len(tests), info

    def _stdio(self, problem, program):
        cases = problem["tests"]
        if isinstance(cases, str):
            cases = json.loads(cases)
        if self.max_cases:
            cases = cases[: self.max_cases]
        token = secrets.token_hex(16)
        wrapped = _STDIO_WRAPPER.format(source=program, token=token)
        passed, info = 0, {}
        for i, case in enumerate(cases):
            r = self.sandbox.run(wrapped, stdin=str(case["input"]), timeout_s=self.timeout_s, memory_mb=self.memory_mb)
            if r.status == "infra_error":
                return None, len(cases), {"sandbox": r.reason[:200]}
            if r.status == "error" and f"\n{token} does_not_compile " in r.stderr:
                raise _DoesNotCompile(r.stderr.split(f"\n{token} does_not_compile ", 1)[1].split("\n", 1)[0])
            info["cases_run"] = i + 1
            info.update(getattr(r, "info", None) or {})  # no_memory_cap: the run had no cgroup
            ok = r.status == "ok" and normalize_output(r.stdout) == normalize_output(str(case["output"]))
            passed += ok
            if not ok and "reason" not in info:
                info["reason"] = f"case {i}: " + (f"{r.status} ({r.reason})" if r.status != "ok" else "output differs")
            # A program over its limits ends the check (the cases left fail): the check's time is then
            # bounded by the problem (cases x limit at most), not multiplied by the program's choice.
            if not ok and (r.status in OVER_LIMIT or not self.partial_credit):
                break
        return passed, len(cases), info


def _json_text(reason: str) -> str:
    """A reason the runner wrote as JSON, as text (the raw line if it is not JSON)."""
    try:
        return str(json.loads(reason))
    except ValueError:
        return reason
