"""Code answers: run the program in the sandbox, grade it in this (trusted) process.

Problems come in two shapes (DESIGN.md):

- HumanEval style: ``prompt`` (signature and docstring), ``test`` (a module
  defining ``check(candidate)``) and ``entry_point``. The program is the
  prompt followed by the extracted code, so a completion may be the function
  body (as HumanEval's canonical solutions are) or a whole definition. Every
  top-level statement of ``check`` that uses ``candidate`` (or calls the entry
  point by name, as MBPP's asserts do) is one test.
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

Cheating that does not pay: exiting early (``sys.exit(0)``, ``os._exit(0)``;
the exit code is never evidence, only per-test records carrying this run's
random token are), printing fake "passed" lines (no token), returning an
object whose ``__eq__`` is always true (only exact built-in values cross back),
patching built-ins or modules the tests use, walking frames or the garbage
collector for the token or the recorder (the program runs in a separate
worker process that never holds the token and never sees the tests; see
``code_harness``), printing a prefix of the expected output. Not covered: the
rare problems whose tests use names only the program defines (3 of MBPP's 974,
none of HumanEval's) run their tests beside the program, where a program that
tampers with the interpreter could fake its own results.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import secrets
from pathlib import Path
from typing import Any, Mapping

from reasonrl.sandbox import Limits, Sandbox
from reasonrl.verifiers.base import GoldAnswerError, Verdict

_PY = {"", "python", "python3", "py"}
_HARNESS = (Path(__file__).parent / "code_harness.py").read_text()
MAX_PROGRAM_CHARS = 100_000
MAX_COMPLETION_CHARS = 4 * MAX_PROGRAM_CHARS  # longer completions are refused before any parsing
MIN_MEMORY_MB = 64  # below this the test runner's own start-up could fail part-way
RUN_MARGIN_S = 1.0  # sandbox start-up and teardown around one run's own time limit
OVER_LIMIT = ("timeout", "memory", "output_limit")  # sandbox statuses of a program over its own limits


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


@functools.lru_cache(maxsize=4096)
def _plan(test: str, prompt: str, entry_point: str | None) -> dict:
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError) as e:
        raise GoldAnswerError(f"test code does not parse: {e}") from None
    check = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not check:
        raise GoldAnswerError("test code defines no check(candidate)")
    setup = ast.unparse([n for n in tree.body if n is not check[-1]]) if len(tree.body) > 1 else ""
    steps, called = [], {"candidate", entry_point}  # MBPP-style asserts call it by name
    for stmt in check[-1].body:
        code = ast.unparse(stmt)
        uses = any(isinstance(n, ast.Name) and n.id in called for n in ast.walk(stmt))
        steps.append({"code": code, "test": uses})
    try:  # statements of a function body that only make sense inside one (return, ...)
        for s in steps:
            compile(s["code"], "<check>", "exec")
    except SyntaxError:
        steps = [{"code": ast.unparse(check[-1]) + "\ncheck(candidate)", "test": True}]
    if not any(s["test"] for s in steps):
        raise GoldAnswerError("check(candidate) never calls candidate")
    try:
        prompt_bound = _bound_and_loaded(ast.parse(prompt))[0]
    except (SyntaxError, ValueError) as e:
        raise GoldAnswerError(f"prompt code does not parse: {e}") from None
    bound, loaded = _bound_and_loaded(tree)
    foreign = loaded - bound - prompt_bound - set(dir(builtins)) - called
    # tests that build on names only the program defines (an MBPP setup using its Node class)
    # must run beside it; all others call it across a process boundary
    return {"setup": setup, "steps": steps, "mode": "tests" if foreign else "calls"}


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


def parse_records(stdout: str, token: str) -> tuple[dict[int, tuple[bool, str]], str | None]:
    """The test runner's records: ({test index: (passed, reason as JSON)}, the runner's own error or None).

    Only lines ``<token> <index> pass|fail <json>`` carrying this run's token count; the first
    record for an index wins; anything else on stdout (the program's output, forged records with
    another token, malformed lines) is ignored.
    """
    results: dict[int, tuple[bool, str]] = {}
    for line in stdout.splitlines():
        if line.startswith(f"{token} harness_error "):
            return results, line.split(" ", 2)[2]
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] == token and parts[2] in ("pass", "fail") and parts[1].isdigit():
            results.setdefault(int(parts[1]), (parts[2] == "pass", parts[3]))
    return results, None


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
    ):
        self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"code verifier memory_mb={memory_mb} is below {MIN_MEMORY_MB}: the test runner itself needs that much"
            )
        self.partial_credit = bool(partial_credit)
        self.max_cases = max_cases
        limits = Limits(max_procs=int(max_procs), max_output_bytes=int(max_output_kb) << 10)
        self.sandbox = Sandbox(isolation=isolation, limits=limits, use_cgroup=bool(cgroup))
        self.sandbox.check()  # refuse at start, with the reason, rather than on every sample

    def deadline_s(self, problem: Mapping[str, Any]) -> float:
        """The longest a check of ``problem`` may take with the program inside its limits: one sandbox run
        for HumanEval-style tests, one per case for stdin/stdout tests (plus start-up margin each). The
        scoring pool gives the check at least this long, so only a hanging check is a ``timeout``."""
        per_run = self.timeout_s + RUN_MARGIN_S
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
            compile(program, "solution.py", "exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            return Verdict(0.0, "format_error", {"reason": f"does not compile: {type(e).__name__}"})
        if humaneval:
            passed, total, info = self._humaneval(problem, program)
        else:
            passed, total, info = self._stdio(problem, program)
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
            **plan,
        }
        r = self.sandbox.run(
            _HARNESS, stdin=token + "\n" + json.dumps(payload), timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )
        if r.status == "infra_error":
            return None, len(tests), {"sandbox": r.reason[:200]}
        results, harness_error = parse_records(r.stdout, token)
        if harness_error is not None:
            return None, len(tests), {"sandbox": harness_error[:200]}
        passed = sum(1 for i in tests if results.get(i, (False,))[0])
        info: dict[str, Any] = {}
        if passed < len(tests):
            first = next(i for i in tests if not results.get(i, (False,))[0])
            why = json.loads(results[first][1]) if first in results else f"no result ({r.status}: {r.reason or 'exited early'})"
            info["reason"] = str(why)[:200]
        if r.status != "ok":
            info["run_status"] = r.status
        return passed, len(tests), info

    def _stdio(self, problem, program):
        cases = problem["tests"]
        if isinstance(cases, str):
            cases = json.loads(cases)
        if self.max_cases:
            cases = cases[: self.max_cases]
        passed, info = 0, {}
        for i, case in enumerate(cases):
            r = self.sandbox.run(program, stdin=str(case["input"]), timeout_s=self.timeout_s, memory_mb=self.memory_mb)
            if r.status == "infra_error":
                return None, len(cases), {"sandbox": r.reason[:200]}
            info["cases_run"] = i + 1
            ok = r.status == "ok" and normalize_output(r.stdout) == normalize_output(str(case["output"]))
            passed += ok
            if not ok and "reason" not in info:
                info["reason"] = f"case {i}: " + (f"{r.status} ({r.reason})" if r.status != "ok" else "output differs")
            # A program over its limits ends the check (the cases left fail): the check's time is then
            # bounded by the problem (cases x limit at most), not multiplied by the program's choice.
            if not ok and (r.status in OVER_LIMIT or not self.partial_credit):
                break
        return passed, len(cases), info
