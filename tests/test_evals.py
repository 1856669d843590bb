"""Benchmark evaluation: estimators by hand, loaders on the real files, the reference check, a model run."""

from __future__ import annotations

import json

import pytest

from reasonrl.evals.estimators import maj_at_k, pass_at_k

from conftest import SHARED_DATA, TINY, compose, needs_data


def test_pass_at_k_by_hand():
    # n=4, c=1: pass@1 = 1 - C(3,1)/C(4,1) = 1 - 3/4 = .25; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = .5
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10 = .9 ; n-c < k -> 1
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(4, 2, 3) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_maj_at_k_by_hand():
    answers = ["12", "13", "13", "12", " 1 2"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 1) == 1.0  # only "12"
    assert maj_at_k(answers, correct, 3) == 0.0  # "13" twice beats "12" once
    assert maj_at_k(answers, correct, 4) == 1.0  # 2-2 tie: the earliest ("12") wins
    assert maj_at_k(answers, correct, 5) == 1.0  # " 1 2" counts as "12": 3 votes
    assert maj_at_k([None, None], [False, False], 2) == 0.0


@needs_data
def test_reference_check_scores_every_benchmark_at_100(tmp_path):
    from reasonrl.benchmark import main

    names = ["gsm8k", "math500", "aime24", "amc23", "minerva_math", "olympiadbench"]
    cfg = compose("eval", ["check=true", f"benchmarks=[{','.join(names)}]", f"run_dir={tmp_path}"])
    results = main(cfg)
    for name in names:
        assert results[name]["accuracy"] == 1.0, name
    assert results["gsm8k"]["problems"] == 1319 and results["math500"]["problems"] == 500
    assert json.loads((tmp_path / "results.json").read_text())["gsm8k"]["accuracy"] == 1.0
    assert "| gsm8k | 1319 |" in (tmp_path / "results.md").read_text()


@needs_data
def test_reference_check_on_code_benchmarks(tmp_path):
    """HumanEval's canonical solutions and MBPP's reference code, run in the sandbox by the code verifier."""
    from reasonrl.benchmark import main

    cfg = compose("eval", ["check=true", "benchmarks=[humaneval,mbpp]", f"run_dir={tmp_path}"])
    results = main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    he_misses = [(r["id"], r["status"], r["info"]) for r in rows if r["benchmark"] == "humaneval" and r["status"] != "correct"]
    assert results["humaneval"]["problems"] == 164 and not he_misses, he_misses
    assert results["mbpp"]["problems"] == 974 and "maj@1" not in results["mbpp"]
    misses = {r["id"] for r in rows if r["benchmark"] == "mbpp" and r["status"] != "correct"}
    # the data's own README: 341, 596 and 642 depend on set order or object sizes (596 and 642
    # expect values this Python does not produce; 341's set survives the trip to the program's
    # process in the order its test expects)
    assert {596, 642} <= misses <= {341, 596, 642}


def _tiny_eval(tmp_path, benchmark: str, limit: int, n: int) -> dict:
    """reasonrl-eval with the tiny test model, n samples at temperature 1."""
    from reasonrl.benchmark import main

    model_overrides = [o for o in TINY if o.startswith("model.")]
    ks = ",".join(str(k) for k in (1, 2, 4) if k <= n)
    cfg = compose(
        "eval",
        [
            "model=tiny_arith",
            *model_overrides,
            "model.arch.max_position_embeddings=2048",  # real benchmark prompts fit (a model without room is refused)
            f"benchmarks=[{benchmark}]",
            f"limit={limit}",
            f"n={n}",
            f"ks=[{ks}]",
            "temperature=1.0",
            "max_new_tokens=8",
            "template=r1",
            "verify_workers=0",
            f"run_dir={tmp_path}",
        ],
    )
    return main(cfg)[benchmark]


@needs_data
def test_model_eval_on_humaneval_runs_through_the_sandbox(tmp_path):
    res = _tiny_eval(tmp_path, "humaneval", limit=2, n=2)
    assert res["samples"] == 4 and "pass@2" in res and "maj@2" not in res
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} <= {"wrong", "format_error", "no_answer"}


@needs_data
def test_model_eval_runs_with_n_samples(tmp_path):
    res = _tiny_eval(tmp_path, "gsm8k", limit=3, n=4)
    assert res["problems"] == 3 and res["samples"] == 12 and {"pass@4", "maj@2", "len_mean", "truncated_frac"} <= set(res)
    assert res["pass@1"] == pytest.approx(res["accuracy"])
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 12


def test_loader_errors_name_the_culprit(tmp_path):
    from reasonrl.data import DataError
    from reasonrl.evals.loaders import load_benchmark

    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(DataError, match=r"row 1 has no field 'answer'"):
        load_benchmark("gsm8k", str(f))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("gsm9k", str(f))
    with pytest.raises(FileNotFoundError, match="is not a file or folder here"):
        load_benchmark("gsm8k", str(tmp_path / "missing.jsonl"))


@needs_data
def test_benchmarks_are_evaluated_during_training(tmp_path):
    from reasonrl.train import main

    gsm = SHARED_DATA / "gsm8k" / "test.jsonl"
    cfg = compose(
        "train",
        [
            *TINY,
            "max_steps=2",
            "eval.every=1",
            f"+eval.benchmarks.gsm8k={gsm}",
            "eval.benchmark_limit=2",
            "eval.benchmark_template=r1",
            f"run_dir={tmp_path}",
        ],
    )
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/gsm8k/accuracy" in r] == [0, 1, 2]
    assert all("eval/gsm8k/len_mean" in r and "eval/arith/accuracy" in r for r in rows)


def test_reasonrl_eval_runs_the_agent_loop_with_env_python(tmp_path):
    """reasonrl-eval with env.name=python samples through the same agent loop as training: the scripted policy
    calls the tool and copies its output into the answer (all correct); without the tool it writes the call and
    stops (none correct): the control the tools study uses."""
    from helpers import save_tool_policy, tool_run

    from reasonrl.benchmark import main

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"{k}+{3 - k}", "answer": "#### 3"}) + "\n" for k in range(3)))
    policy = save_tool_policy(tmp_path / "policy", margin=40.0)
    tools = [o for o in tool_run(policy) if o.startswith("env.")]
    base = [f"model.path={policy}", "model=hf", "benchmarks=[gsm8k]", f"data.gsm8k={data}", "template=r1", "n=2",
            "ks=[1,2]", "temperature=1.0", "max_new_tokens=40", "verify_workers=0"]  # fmt: skip
    on = main(compose("eval", [*base, *tools, f"run_dir={tmp_path / 'on'}"]))["gsm8k"]
    off = main(compose("eval", [*base, f"run_dir={tmp_path / 'off'}"]))["gsm8k"]
    assert on["accuracy"] == 1.0 and on["tool_calls_mean"] == 1.0 and on["tool_used_frac"] == 1.0
    assert off["accuracy"] == 0.0 and "tool_calls_mean" not in off
    rows = [json.loads(x) for x in (tmp_path / "on" / "samples.jsonl").read_text().splitlines()]
    assert all([t["role"] for t in r["turns"]] == ["model", "tool", "model"] for r in rows)
    assert all(r["turns"][1] == {"role": "tool", "text": "<output>3</output>", "tokens": 3, "status": "ok"} for r in rows)
