"""The Verifier protocol: a verifier with only ``name`` and ``__call__`` and one with every optional hook both work
through scoring and the scoring pool; each hook is read through its one function in ``reasonrl.verifiers.base``,
with the documented default when it is absent; ``reasonrl-eval`` takes its pool deadlines from its config."""

from __future__ import annotations

import threading
import time

import pytest

from reasonrl.verifiers import GoldAnswerError, Verdict, Verifier, base
from reasonrl.verifiers.pool import ScoringPool
from reasonrl.verifiers.scoring import check_golds, score

from conftest import compose, needs_data


class Minimal:
    """Only what the protocol requires."""

    name = "minimal"

    def __call__(self, problem, completion):
        if "answer" not in problem:
            return None
        ok = completion.strip() == str(problem["answer"])
        return Verdict(float(ok), "correct" if ok else "wrong", {})


class Full(Minimal):
    """Every optional hook: a gold check, a per-problem deadline, its own limit, answer extraction. A completion
    'slow' takes the problem's ``slow_s``, which its deadline declares."""

    name = "full"
    timeout_s = 30.0  # above the pools' deadlines below: allowed, since it declares each problem's deadline

    def check_gold(self, problem):
        if not str(problem.get("answer", "")).isdigit():
            raise GoldAnswerError(f"not a number: {problem.get('answer')!r}")

    def deadline_s(self, problem):
        return float(problem.get("slow_s", 0.0))

    def extract(self, completion):
        found = completion.strip()
        return (found or None, [found] if found else [])

    def __call__(self, problem, completion):
        if completion == "slow":
            time.sleep(problem["slow_s"])
            return Verdict(1.0, "correct", {"slept_s": problem["slow_s"]})
        return super().__call__(problem, completion)


class OwnLimit(Minimal):
    """A limit on what it runs, without a per-problem deadline."""

    name = "own_limit"
    timeout_s = 5


class Unpicklable(Minimal):
    name = "unpicklable"

    def __init__(self):
        self.lock = threading.Lock()  # cannot cross into a worker process


PROBLEMS = [{"answer": "7"}, {"answer": "12"}, {"question": "no answer field"}]
COMPLETIONS = ["7", " 13", "7"]


def test_each_hook_has_its_default_when_absent():
    v = Minimal()
    assert isinstance(v, Verifier) and isinstance(Full(), Verifier)
    base.check_gold(v, {"answer": "not checked"})  # no hook: every gold is kept
    assert not base.declares_deadlines(v) and base.deadline_s(v, {"answer": "1"}) is None
    assert base.own_timeout_s(v) is None
    assert base.extract_answer(v, "<answer>7</answer>") is None
    base.check_picklable("minimal", v)


def test_each_hook_is_read_when_present():
    v = Full()
    with pytest.raises(GoldAnswerError, match="not a number"):
        base.check_gold(v, {"answer": "x"})
    assert base.declares_deadlines(v) and base.deadline_s(v, {"slow_s": 2}) == 2.0
    assert base.deadline_s(v, {"slow_s": "soon"}) is None  # a hook that cannot say: the caller's deadline applies
    assert base.own_timeout_s(v) == 30.0 and base.own_timeout_s(OwnLimit()) == 5.0
    assert base.extract_answer(v, " 42 ") == "42" and base.extract_answer(v, "") is None
    with pytest.raises(TypeError, match="verifier 'unpicklable' .*Unpicklable.* cannot be pickled .*verify.workers=0"):
        base.check_picklable("unpicklable", Unpicklable())


def test_gold_checks_run_only_where_a_verifier_has_one(caplog):
    problems = [{"answer": "7"}, {"answer": "seven"}]
    assert check_golds(problems, {"minimal": (Minimal(), 1.0)}, "rows") == problems
    with caplog.at_level("ERROR"):
        assert check_golds(problems, {"minimal": (Minimal(), 1.0), "full": (Full(), 1.0)}, "rows") == problems[:1]
    assert "rows row 1 skipped (full: not a number: 'seven')" in caplog.text


def test_minimal_and_full_verifiers_score_alike_in_process_and_in_the_pool():
    verifiers = {"minimal": (Minimal(), 1.0), "full": (Full(), 0.5)}
    local = score(PROBLEMS, COMPLETIONS, verifiers)
    assert [{k: v and v.status for k, v in row.items()} for row in local.verdicts] == [
        {"minimal": "correct", "full": "correct"},
        {"minimal": "wrong", "full": "wrong"},
        {"minimal": None, "full": None},  # neither applies
    ]
    assert local.rewards == [1.5, 0.0, 0.0]
    slow = {"answer": "1", "slow_s": 1.5}
    with ScoringPool({k: v for k, (v, _) in verifiers.items()}, workers=1, timeout_s=0.5) as pool:
        assert pool._job_deadline("minimal", slow) == 0.5  # no deadline_s: the pool's
        assert pool._job_deadline("full", slow) == 2.5  # its declared deadline, plus the worker's overhead
        assert pool._job_deadline("full", {"slow_s": "soon"}) == 0.5
        pooled = score(PROBLEMS, COMPLETIONS, verifiers, pool=pool)
        assert pooled.verdicts == local.verdicts and pooled.rewards == local.rewards
        rows = pool.run([slow], ["slow"])  # three times the pool's deadline, within its own: not a timeout
    assert rows[0]["full"] == Verdict(1.0, "correct", {"slept_s": 1.5}) and rows[0]["minimal"].status == "wrong"


def test_the_pool_refuses_an_own_limit_above_its_deadline_and_names_an_unpicklable_verifier():
    with pytest.raises(ValueError, match=r"'own_limit' lets a program run for 5 s .*verify.timeout_s"):
        ScoringPool({"own_limit": OwnLimit()}, workers=1, timeout_s=1.0)
    with pytest.raises(TypeError, match="verifier 'unpicklable' .*cannot be pickled"):
        ScoringPool({"minimal": Minimal(), "unpicklable": Unpicklable()}, workers=1, timeout_s=1.0)
    assert score(PROBLEMS[:1], ["7"], {"unpicklable": (Unpicklable(), 1.0)}).rewards == [1.0]  # in-process it runs


class _Stop(Exception):
    pass


@needs_data
@pytest.mark.parametrize("benchmark, key", [("aime24", "verify_timeout_s"), ("humaneval", "code_verify_timeout_s")])
def test_eval_pool_deadlines_come_from_the_config(monkeypatch, tmp_path, benchmark, key):
    from reasonrl import benchmark as bench
    from reasonrl.verifiers import pool as pool_module

    defaults = compose("eval")
    assert (defaults.verify_timeout_s, defaults.code_verify_timeout_s) == (10.0, 60.0)
    seen = {}

    def recording(verifiers, workers, timeout_s):
        seen.update(timeout_s=timeout_s, names=list(verifiers))
        raise _Stop

    monkeypatch.setattr(pool_module, "ScoringPool", recording)
    cfg = compose("eval", ["check=true", "limit=2", "verify_workers=1", f"{key}=2.5", f"benchmarks=[{benchmark}]"])
    with open(tmp_path / "samples.jsonl", "w") as samples, pytest.raises(_Stop):
        bench._one_benchmark(cfg, benchmark, None, None, samples)
    assert seen["timeout_s"] == 2.5
