"""The scoring pool: a hung check costs one timeout, a dying worker one error; the step goes on."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from reasonrl.verifiers import Verdict
from reasonrl.verifiers.integer import IntegerVerifier
from reasonrl.verifiers.pool import ScoringPool
from reasonrl.verifiers.scoring import score, summarize


class Moody:
    """Hangs forever on 'hang', kills its process on 'die', raises on 'raise', else checks the answer."""

    name = "moody"

    def __call__(self, problem, completion):
        if "hang" in completion:
            while True:
                time.sleep(1)
        if "die" in completion:
            os._exit(3)
        if "raise" in completion:
            raise RuntimeError("bug in a verifier")
        return Verdict(
            1.0 if completion.strip() == problem["answer"] else 0.0,
            "correct" if completion.strip() == problem["answer"] else "wrong",
            {},
        )


@pytest.fixture(scope="module")
def pool():
    with ScoringPool({"moody": Moody(), "integer": IntegerVerifier()}, workers=2, timeout_s=1.0) as p:
        yield p


def test_results_match_in_process_scoring(pool):
    problems = [{"answer": str(i)} for i in range(300)]
    completions = [f"<answer>{i if i % 3 else i + 1}</answer>" for i in range(300)]
    rows = pool.run(problems, completions)
    local = score(problems, completions, {"integer": (IntegerVerifier(), 1.0)}).verdicts
    assert [r["integer"] for r in rows] == [r["integer"] for r in local]


def test_a_hanging_check_costs_one_timeout_and_the_step_goes_on(pool):
    problems = [{"answer": "5"}] * 6
    completions = ["5", "4", "hang", "5", "5", "6"]
    t = time.perf_counter()
    scored = score(problems, completions, {"moody": (Moody(), 1.0), "integer": (IntegerVerifier(), 0.0)}, pool=pool)
    assert time.perf_counter() - t < 5
    statuses = [r["moody"].status for r in scored.verdicts]
    assert statuses == ["correct", "wrong", "timeout", "correct", "correct", "wrong"]
    assert scored.masked == [False, False, True, False, False, False]  # masked, not scored as wrong
    assert summarize(scored, ["moody", "integer"])["verify/timeout_frac"] == pytest.approx(1 / 12)
    assert pool.run([{"answer": "1"}], ["1"])[0]["moody"].status == "correct"  # the pool still works


def test_a_dying_worker_costs_one_error_and_is_replaced(pool):
    before = pool.replaced
    rows = pool.run([{"answer": "1"}] * 4, ["1", "die", "raise", "1"])
    assert [r["moody"].status for r in rows] == ["correct", "error", "error", "correct"]
    assert rows[1]["moody"].info == {"worker_died": 1}
    assert "RuntimeError" in rows[2]["moody"].info["exception"]
    assert pool.replaced == before + 1


def _dead_unreaped(pid: int, within_s: float = 10.0) -> bool:
    """True once ``pid`` has died and waits, unreaped, for its parent (as after an OOM kill)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        time.sleep(0.02)
    return False


def test_a_worker_killed_while_idle_is_replaced_before_work_is_sent_to_it():
    """An idle worker killed from outside (SIGKILL by its pid, as the OOM killer does) once made the next
    step raise BrokenPipeError and lose all its verdicts: it is now found dead before any work goes to it,
    replaced, and the step returns every verdict. Then every worker at once."""
    problems = [{"answer": str(i)} for i in range(200)]
    completions = [f"<answer>{i if i % 5 else -1}</answer>" for i in range(200)]
    expect = ["correct" if i % 5 else "wrong" for i in range(200)]
    with ScoringPool({"integer": IntegerVerifier()}, workers=2, timeout_s=5.0) as pool:
        assert [r["integer"].status for r in pool.run(problems, completions)] == expect  # both ready, now idle
        for how_many in (1, len(pool._workers)):
            before, victims = pool.replaced, pool._workers[:how_many]
            for w in victims:
                os.kill(w.proc.pid, signal.SIGKILL)
                assert _dead_unreaped(w.proc.pid)
            rows = pool.run(problems, completions)
            assert [r["integer"].status for r in rows] == expect
            assert pool.replaced == before + len(victims)
            assert all(w.proc.is_alive() for w in pool._workers)


def test_no_worker_processes_are_left_behind():
    p = ScoringPool({"integer": IntegerVerifier()}, workers=2)
    procs = [w.proc for w in p._workers]
    assert all(x.is_alive() for x in procs)
    p.close()
    assert not any(x.is_alive() for x in procs)


def test_checks_within_the_programs_limits_are_never_killed_and_loops_are_wrong():
    """A 10-case stdin/stdout problem: a slow program within its per-case limit takes several times
    verify.timeout_s and is still scored (the code verifier declares cases x limit as the deadline);
    a program looping forever on every case is `wrong` with the reason, not a masked `timeout`."""
    from reasonrl.verifiers.code import CodeVerifier

    problem = {"tests": [{"input": str(i), "output": str(2 * i)} for i in range(10)]}
    slow = "```python\nimport time\ntime.sleep(0.35)\nprint(2 * int(input()))\n```"
    loop = "```python\nwhile True:\n    pass\n```"
    code = CodeVerifier(timeout_s=1.0, memory_mb=256)
    assert code.deadline_s(problem) == 10 * code.deadline_s({"tests": problem["tests"][:1]})  # per case
    with ScoringPool({"code": code}, workers=2, timeout_s=1.5) as pool:
        t = time.monotonic()
        rows = pool.run([problem, problem], [slow, loop])
        took = time.monotonic() - t
    assert took > 1.5 * 2, "the slow program's check ran longer than verify.timeout_s"
    assert rows[0]["code"].status == "correct", rows[0]["code"]
    assert rows[1]["code"].status == "wrong" and "case 0: timeout" in rows[1]["code"].info["reason"]
    assert pool.replaced == 0


class HangsOnMarked:
    """Hangs forever on a problem marked ``hang``; otherwise exact match of the integer answer."""

    name = "integer"

    def __call__(self, problem, completion):
        if problem.get("hang"):
            while True:
                time.sleep(1)
        return IntegerVerifier()(problem, completion)


def test_a_hanging_check_at_an_eval_step_costs_one_timeout():
    """Evaluation scores through the same killable pool: the held-out set with one problem whose check
    hangs gives that problem a `timeout` verdict and the other problems their verdicts."""
    from omegaconf import OmegaConf

    from reasonrl.evals.harness import training_eval
    from reasonrl.models import load_policy
    from reasonrl.rollout import HFGenerator
    from reasonrl.tasks import arith

    from conftest import TINY, compose

    cfg = compose("train", TINY)
    model, tok, _ = load_policy(cfg.model, progress=False)
    problems = [dict(p) for p in arith.heldout(6)]
    problems[2]["hang"] = True
    cfg = OmegaConf.merge(cfg, {"eval": {"sampled": False}})
    with ScoringPool({"integer": HangsOnMarked()}, workers=1, timeout_s=1.0) as pool:
        t = time.monotonic()
        out = training_eval(HFGenerator(model, tok), tok, problems, arith.render_prompt, None, cfg, 0, pool=pool)
        assert time.monotonic() - t < 60 and pool.replaced == 1
    assert 0.0 <= out["eval/arith/accuracy"] <= 5 / 6
    from reasonrl.evals.harness import sample_and_score

    with ScoringPool({"integer": HangsOnMarked()}, workers=1, timeout_s=1.0) as pool:
        s = sample_and_score(HFGenerator(model, tok), tok, problems, render=arith.render_prompt, pool=pool, pool_name="integer")
    statuses = [v.status for v in s["verdicts"]]
    assert statuses[2] == "timeout" and statuses.count("timeout") == 1


def test_a_problem_crosses_to_a_worker_once_per_group(pool):
    """G completions of one problem share its object: the pool pickles the problem once per worker it
    goes to, not once per completion, and the verdicts are those of in-process scoring."""
    problems = [{"answer": str(i), "padding": "x" * 10_000} for i in range(4)]
    per_completion = [problems[i // 8] for i in range(32)]  # 4 groups of 8, prompt-major as a step makes them
    completions = [f"<answer>{i // 8 if i % 2 else -1}</answer>" for i in range(32)]
    before = pool.problems_sent
    rows = pool.run(per_completion, completions)
    assert pool.problems_sent - before <= 4 * len(pool._workers)
    verifiers = {"moody": (Moody(), 1.0), "integer": (IntegerVerifier(), 1.0)}
    assert score(per_completion, completions, verifiers).verdicts == rows
    assert [r["integer"].status for r in rows[:4]] == ["wrong", "correct", "wrong", "correct"]


def test_pool_size_by_default_from_the_machine():
    from reasonrl.verifiers.pool import resolve_workers

    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(-1) == max(2, cores - 2)  # the schema's default: cores left to generation and the trainer
    assert resolve_workers(0) == 0 and resolve_workers(5) == 5
    with pytest.raises(ValueError, match="verify.workers=-3"):
        resolve_workers(-3)
    from conftest import compose

    assert compose("train").verify.workers == -1 and compose("eval").verify_workers == -1


class Clocked:
    """Correct when the completion is the answer; records in its verdict when (wall clock) the check ran."""

    def __call__(self, problem, completion):
        ok = completion.strip() == problem["answer"]
        return Verdict(float(ok), "correct" if ok else "wrong", {"at": time.time()})


def test_a_stream_scores_while_checks_are_still_being_added():
    """Checks added in three parts with pauses between them (as groups arrive from a generator) are scored
    during the pauses, come back in the order added, and match a plain run."""
    problems = [{"answer": str(i)} for i in range(30)]
    completions = [str(i if i % 4 else i + 1) for i in range(30)]
    with ScoringPool({"c": Clocked()}, workers=2, timeout_s=5.0) as pool:
        pool.run(problems[:2], completions[:2])  # workers started
        checks = pool.stream()
        last_added = 0.0
        for part in range(3):
            checks.add(problems[part * 10 : (part + 1) * 10], completions[part * 10 : (part + 1) * 10])
            last_added = time.time()
            time.sleep(0.5)
        rows = checks.results()
        plain = pool.run(problems, completions)
    assert [r["c"].status for r in rows] == [r["c"].status for r in plain]
    assert [r["c"].status == "correct" for r in rows] == [bool(i % 4) for i in range(30)]
    first_parts = [r["c"].info["at"] for r in rows[:20]]
    assert max(first_parts) < last_added  # scored before the last part was even added


def test_a_hanging_check_in_a_stream_costs_one_timeout():
    with ScoringPool({"moody": Moody()}, workers=2, timeout_s=1.0) as pool:
        checks = pool.stream()
        checks.add([{"answer": "1"}] * 3, ["1", "hang", "2"])
        checks.add([{"answer": "3"}], ["3"])
        t = time.perf_counter()
        rows = checks.results()
    assert [r["moody"].status for r in rows] == ["correct", "timeout", "wrong", "correct"]
    assert time.perf_counter() - t < 5


class Parity:
    """1 when the completion's character codes sum to an even number (varied rewards from random text)."""

    def __call__(self, problem, completion):
        even = sum(map(ord, completion)) % 2 == 0
        return Verdict(float(even), "correct" if even else "wrong", {})


def test_overlapped_scoring_gives_the_same_batch():
    """collect_groups with the transformers generator in 4 chunks: scoring each group as it is generated
    (overlap), after generation (overlap off) and in-process give the same rollouts, rewards and verdicts;
    with overlap the checks of the first chunk ran before generation ended."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(list("0123456789q "), [], vocab_size=64)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=64, pad_token_id=0, bos_token_id=None, eos_token_id=1)  # fmt: skip
    gen = HFGenerator(LlamaForCausalLM(cfg), tok, batch_size=8)  # 8 prompts x 4 samples: 4 chunks of 2 groups
    plan = GroupPlan(B=8, G=4, sampling=Sampling(temperature=1.0, max_new_tokens=12))
    verifiers = {"p": (Parity(), 1.0), "c": (Clocked(), 0.5)}

    def batch(pool, overlap):
        stream = iter({"question": f"q{i}", "answer": str(i)} for i in range(100))
        return collect_groups(gen, tok, stream, lambda p: p["question"], verifiers, pool,
                              dataclasses.replace(plan, overlap=overlap), seed=3)  # fmt: skip

    with ScoringPool({name: v for name, (v, _) in verifiers.items()}, workers=2, timeout_s=5.0) as pool:
        pool.run([{"answer": "1"}], ["1"])  # workers started
        t = time.time()
        on = batch(pool, True)
        generated_by = t + on.stats.generate_s
        off = batch(pool, False)
    local = batch(None, False)
    key = [(r.completion_ids, r.reward, r.masked, {k: v.status for k, v in r.verdicts.items()}) for r in on.rollouts]
    assert key == [(r.completion_ids, r.reward, r.masked, {k: v.status for k, v in r.verdicts.items()}) for r in off.rollouts]
    assert key == [(r.completion_ids, r.reward, r.masked, {k: v.status for k, v in r.verdicts.items()}) for r in local.rollouts]
    assert len({r.reward for r in on.rollouts}) > 1
    assert min(r.verdicts["c"].info["at"] for r in on.rollouts) < generated_by
