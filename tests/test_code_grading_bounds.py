"""Item 3 of the grader's attacks: work on the model's text in the trusted process is bounded.

The trusted process (the scoring pool's worker) used to compile the program before any sandbox, and
matched two backtracking regular expressions against the completion. Each test here writes the input
that made that work explode, shows that the old work on it is slow (the weakened setup: the old
compile or pattern, run here), and that the grader now gives the program its verdict in time: the
program's own failure (`wrong`), never a masked `timeout`.
"""

from __future__ import annotations

import random
import re
import time
import unicodedata

import pytest

from reasonrl.verifiers.code import MAX_COMPLETION_CHARS, MAX_PROGRAM_CHARS, CodeVerifier
from reasonrl.verifiers.format import MAX_CHARS, CodeBlockVerifier, FormatVerifier, fenced_blocks
from reasonrl.verifiers.pool import ScoringPool

# The patterns the format verifiers used (the weakened setup for the controls).
OLD_FENCE = re.compile(r"```[ \t]*(python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
OLD_STRICT = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


def _slow_to_compile(limit: int = MAX_PROGRAM_CHARS) -> str:
    """A call with as many distinct one-character keyword arguments as fit in ``limit`` characters:
    CPython's compiler checks them for repeats pairwise."""
    head, tail = "def f(**k):\n    return 0\nf(", ")\n"
    n = (limit - len(head) - len(tail)) // 4  # "X=1," per argument
    names, c = [], 0x4E00
    while len(names) < n:
        ch = chr(c)
        c += 1
        if ch.isidentifier() and unicodedata.normalize("NFKC", ch) == ch:
            names.append(ch)
    program = head + ",".join(f"{x}=1" for x in names) + tail
    assert len(program) <= limit
    return program


class CompilesHere(CodeVerifier):
    """The weakened setup: the old code verifier, which compiled the program in the trusted process first."""

    def __call__(self, problem, completion):
        compile(completion, "solution.py", "exec")
        return super().__call__(problem, completion)

    def deadline_s(self, problem):
        return self.timeout_s + 1.0  # and its deadline: the program's limit plus a margin, before limits were CPU time


HUMANEVAL_LIKE = {"prompt": "", "entry_point": "f", "test": "def check(candidate):\n    assert candidate() == 0\n"}
STDIO = {"tests": [{"input": "", "output": "0"}]}


@pytest.fixture(scope="module")
def slow_program():
    program = _slow_to_compile()
    t = time.perf_counter()
    compile(program, "solution.py", "exec")
    return program, time.perf_counter() - t


def test_a_program_slow_to_compile_costs_the_trusted_process_nothing(slow_program):
    program, compile_s = slow_program
    assert compile_s > 1.0, f"compiling the attack took {compile_s:.2f} s here: not an attack on this machine"
    v = CodeVerifier(timeout_s=1.0)
    for problem in (HUMANEVAL_LIKE, STDIO):
        cpu = time.process_time()
        r = v(problem, program)
        trusted_s = time.process_time() - cpu  # this process only: the sandbox runs in its own
        assert r.status == "wrong" and r.score == 0.0, r
        assert "timeout" in (r.info.get("run_status", "") + r.info.get("reason", "")), r
        assert trusted_s < min(0.25, compile_s / 4), (trusted_s, compile_s)


def test_a_program_slow_to_compile_is_wrong_not_a_masked_timeout_in_the_pool(slow_program):
    """Through the scoring pool: the check's deadline covers the program's limits (wall clock included) plus margins;
    the control keeps the old verifier's 3 s."""
    program, compile_s = slow_program
    with ScoringPool({"code": CodeVerifier(timeout_s=1.0)}, workers=1, timeout_s=2.0) as pool:
        (row,) = pool.run([HUMANEVAL_LIKE], [program])
    assert row["code"].status == "wrong", row
    # control: the old verifier compiles first, in the pool's worker, which the deadline kills (its
    # check takes the compile here, then at least the 1 s the sandbox gives the program)
    if compile_s + 1.0 < 3.0 + 0.5:
        pytest.skip(f"compiling takes {compile_s:.2f} s here, too close to the 3 s deadline for the control")
    with ScoringPool({"code": CompilesHere(timeout_s=1.0)}, workers=1, timeout_s=2.0) as pool:
        (row,) = pool.run([HUMANEVAL_LIKE], [program])
    assert row["code"].status == "timeout", row


def test_the_code_verifiers_length_caps():
    v = CodeVerifier(timeout_s=5.0)
    over = "print(0)\n" + "#" * MAX_PROGRAM_CHARS
    assert v(STDIO, over).info["reason"] == "program too long"
    assert v(STDIO, "```python\nprint(0)\n```" + " " * MAX_COMPLETION_CHARS).info["reason"] == "completion too long"
    assert v(STDIO, "print(0)\n" + "#" * (MAX_PROGRAM_CHARS - 10)).status == "correct"  # just under both


# -- the format verifiers ---------------------------------------------------------------------------


def _seconds(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def test_the_fence_scan_is_linear_where_the_old_pattern_was_quadratic():
    """A fence followed by blanks: the old pattern tried every split of the blanks at every fence."""
    attack = "```python\nprint(0)\n```\n```" + " " * 70_000
    new_s = _seconds(CodeBlockVerifier(), {}, attack)
    assert CodeBlockVerifier()({}, attack).status == "correct"
    assert new_s < 0.2, new_s
    # control (a third as many blanks, to keep it short): the old pattern is orders of magnitude slower
    old_s = _seconds(OLD_FENCE.findall, attack[:25_000])
    assert old_s > 20 * _seconds(fenced_blocks, attack[:25_000]) and old_s > 0.1, old_s
    big = "```" + " \t" * (MAX_CHARS // 2 - 2)
    assert _seconds(CodeBlockVerifier(), {}, big) < 0.5


class OldCodeBlock(CodeBlockVerifier):
    """The weakened setup: the old fence pattern, run before the new check."""

    def __call__(self, problem, completion):
        OLD_FENCE.findall(completion)
        return super().__call__(problem, completion)


def test_a_masked_fence_check_no_longer_masks_a_correct_sample():
    """Through the pool, the old pattern ran past its deadline (`timeout`: the sample was masked)."""
    attack = "```python\nprint(0)\n```\n```" + " " * 70_000
    if 4 * _seconds(OLD_FENCE.findall, attack[:35_000]) < 1.0 + 0.5:  # quadratic: half the text, a quarter the time
        pytest.skip("the old pattern is too fast here for a 1 s deadline")
    with ScoringPool({"code_format": CodeBlockVerifier(), "old": OldCodeBlock()}, workers=1, timeout_s=1.0) as pool:
        (row,) = pool.run([STDIO], [attack])
    assert row["code_format"].status == "correct" and row["old"].status == "timeout", row


def test_the_strict_format_check_is_linear_and_capped():
    attack = "<think>" + "</think><answer>" * 24_000 + "x"
    new_s = _seconds(FormatVerifier(), {}, attack)
    assert FormatVerifier()({}, attack).status == "format_error" and new_s < 0.1, new_s
    old_s = _seconds(OLD_STRICT.match, attack[: len(attack) // 8])  # control: an eighth of it, already slow
    assert old_s > 0.1 and old_s > 20 * new_s, (old_s, new_s)
    right = "<think>x</think>\n<answer>1</answer>\n"
    assert FormatVerifier()({}, right).status == "correct"
    assert FormatVerifier()({}, right + " " * (MAX_CHARS - len(right))).status == "correct"  # at the cap
    over = FormatVerifier()({}, right + " " * (MAX_CHARS - len(right) + 1))
    assert over.status == "format_error" and over.info == {"too_long": 1}
    assert CodeBlockVerifier()({}, "```python\nx\n```" + " " * MAX_CHARS).info == {"too_long": 1}


def test_the_linear_checks_agree_with_the_old_patterns():
    """On random short texts over the characters that matter, the new checks decide as the patterns did."""
    rng = random.Random(0)
    atoms = ["`", "```", " ", "\t", "\n", "py", "python", "PYTHON3", "Py", "3", "x", "\u00a0"]
    for _ in range(20_000):
        s = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 14)))
        assert fenced_blocks(s) == [m[1] for m in OLD_FENCE.findall(s)], repr(s)
    tags = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "\x1c", "\u2003", "<", ">"]
    f = FormatVerifier()
    for _ in range(20_000):
        s = "".join(rng.choice(tags) for _ in range(rng.randint(0, 9)))
        once = all(s.count(t) == 1 for t in ("<think>", "</think>", "<answer>", "</answer>"))
        assert (f({}, s).status == "correct") == (bool(OLD_STRICT.match(s)) and once), repr(s)
