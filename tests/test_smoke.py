"""End to end on a tiny model: GRPO steps change the parameters with a finite loss, the
run directory holds what it should, same seed gives the same step-0 numbers, cold start and
the SFT entry point run, and the console script works."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import TINY, compose

CORE_KEYS = [
    "step",
    "time/step_s",
    "time/generate_s",
    "time/verify_s",
    "time/train_s",
    "time/sync_s",
    "reward/mean",
    "reward/std",
    "reward/integer/mean",
    "reward/format/mean",
    *[f"verify/{s}_frac" for s in ("correct", "wrong", "no_answer", "format_error", "timeout", "error")],
    "rollout/len_mean",
    "rollout/len_max",
    "rollout/clipped_frac",
    "rollout/tokens_per_s",
    "rollout/think_len_mean",
    "rollout/answer_len_mean",
    "rollout/len_correct_mean",
    "rollout/len_wrong_mean",
    "train/loss",
    "train/kl",
    "train/entropy",
    "train/clip_frac",
    "train/grad_norm",
    "train/lr",
    "sampling/logprob_diff_mean",
    "sampling/logprob_diff_max",
    "group/zero_std_frac",
]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    from reasonrl.models import load_policy
    from reasonrl.train import main

    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose(
        "train",
        [*TINY, "max_steps=2", "eval.every=1", "checkpoint.every=1", "logging.plot=true", f"run_dir={run_dir}", "optim.lr=1e-3"],
    )
    before, _, _ = load_policy(cfg.model, progress=False)
    summary = main(cfg)
    return cfg, run_dir, summary, {k: v.clone() for k, v in before.state_dict().items()}


def test_parameters_change_and_loss_is_finite(two_step_run):
    from transformers import AutoModelForCausalLM

    _, run_dir, _, before = two_step_run
    after = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "final").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, changed
    for row in _rows(run_dir)[1:]:
        assert math.isfinite(row["train/loss"]) and math.isfinite(row["train/grad_norm"])


def test_run_directory_and_core_metric_keys(two_step_run):
    _, run_dir, summary, _ = two_step_run
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "step_000001" / "meta.json").is_file()  # a training checkpoint
    assert (run_dir / "checkpoints" / "final" / "config.json").is_file()  # the policy as a Hugging Face folder
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in CORE_KEYS:
        assert key in rows[1], key
    assert "eval/arith/accuracy" in rows[0] and "eval/arith/len_mean" in rows[2]
    assert rows[1]["sampling/logprob_diff_max"] < 1e-3  # the HF generator samples from the trained module
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "completion", "reward", "verdicts"} <= set(samples[0])
    assert json.loads((run_dir / "summary.json").read_text())["end"] == summary["end"]


def test_same_seed_same_step0(two_step_run, tmp_path):
    from reasonrl.train import main

    cfg, run_dir, summary, _ = two_step_run
    again = main(
        compose("train", [*TINY, "max_steps=1", "eval.every=1", "optim.lr=1e-3", f"run_dir={tmp_path}", "checkpoint.final=false"])
    )
    assert again["start"] == summary["start"]
    first_step = lambda d: {k: v for k, v in _rows(d)[1].items() if not k.startswith("time/") and "per_s" not in k}  # noqa: E731
    assert first_step(tmp_path) == first_step(run_dir)


def test_cold_start_then_rl(tmp_path):
    from reasonrl.train import main

    cfg = compose(
        "train",
        [
            *TINY,
            "experiment=sft_cold_start_arith",
            "max_steps=1",
            "cold_start.steps=3",
            "cold_start.demos=16",
            f"run_dir={tmp_path}",
        ],
    )
    summary = main(cfg)
    assert (tmp_path / "checkpoints" / "sft" / "config.json").is_file()
    assert summary["experiment"] == "sft_cold_start_arith"
    assert 0.5 < summary["before_sft"]["demonstration_accuracy"] < 1.0
    assert "eval/arith/accuracy" in summary["before_sft"]


def test_sft_entry_point(tmp_path):
    from reasonrl.finetune import main

    overrides = [o for o in TINY if not o.startswith(("rollout.",))]
    cfg = compose("sft", [*overrides, "max_steps=4", "sft.eval_every=2", "sft.demos=16", f"run_dir={tmp_path}"])
    summary = main(cfg)
    rows = _rows(tmp_path)
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 4 and all(math.isfinite(r.get("train/loss", 0)) for r in rows)
    assert 0.5 < summary["demonstration_accuracy"] < 1.0
    assert (tmp_path / "checkpoints" / "final" / "config.json").is_file()


def test_console_script(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-train")
    run_dir = tmp_path / "cli"
    out = subprocess.run(
        [exe, *TINY, "max_steps=1", "generator=hf", "experiment=r1_zero_arith", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(f"run directory: {run_dir}") == 2  # at start and at end
    assert "held-out accuracy (greedy)" in out.stdout
    assert (run_dir / "summary.json").is_file()
    bad = subprocess.run([exe, "max_stpes=1", f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "max_stpes" in bad.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        ["algorithm=grpo_deepseekmath"],
        ["algorithm=dr_grpo"],
        ["algorithm=dapo", "algorithm.overlong_buffer=4"],
        [
            "algorithm.updates_per_batch=2",
            "algorithm.dual_clip=3.0",
            "algorithm.entropy_coef=0.01",
            "algorithm.mask_truncated=true",
        ],
    ],
)
def test_algorithm_variants_train(tmp_path, overrides):
    from reasonrl.models import load_policy
    from reasonrl.train import main

    cfg = compose(
        "train", [*TINY, *overrides, "max_steps=2", "optim.lr=1e-3", f"run_dir={tmp_path}", "rollout.max_new_tokens=16"]
    )
    before, _, _ = load_policy(cfg.model, progress=False)
    main(cfg)
    rows = _rows(tmp_path)[1:]
    for r in rows:
        assert math.isfinite(r["train/loss"]) and math.isfinite(r["train/grad_norm"])
        assert {"group/dropped", "group/redraws", "reward/overlong_penalty_mean", "train/masked_frac"} <= set(r)
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "final").state_dict()
    assert any(not torch.equal(before.state_dict()[k], after[k]) for k in after)
    if "algorithm=grpo_deepseekmath" in overrides:
        assert rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the starting policy
        assert rows[1]["train/kl"] > 0  # one step later it differs
    if "algorithm.mask_truncated=true" in overrides:
        assert rows[0]["train/masked_frac"] == pytest.approx(rows[0]["rollout/clipped_frac"])


def test_dynamic_sampling_redraws_until_groups_carry_signal():
    import torch as t

    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.rollout import Rollout, Sampling
    from reasonrl.verifiers.integer import IntegerVerifier

    class Scripted:
        """Group i answers correctly in samples whose index < i % 3: groups 0 (all wrong) carry no signal."""

        exact_logprobs = True

        def generate(self, prompt_ids, n, sampling):
            out = []
            for i, p in enumerate(prompt_ids):
                k = int(p[0]) % 3
                for j in range(n):
                    out.append(Rollout(i, list(p), [1], f"<answer>{'7' if j < k else '0'}</answer>", "stop", [0.0]))
            return out

    stream = iter({"question": str(i), "answer": "7"} for i in range(100))
    plan = dict(B=3, G=2, sampling=Sampling(max_new_tokens=8), mask_statuses=("error",), max_redraws=5)
    tok = lambda text, add_special_tokens=False: {"input_ids": [int(text)]}  # noqa: E731
    verifiers = {"integer": (IntegerVerifier(), 1.0)}
    batch = collect_groups(
        Scripted(), tok, stream, lambda p: p["question"], verifiers, None, GroupPlan(**plan, dynamic=True), seed=0
    )
    problems, rollouts, rewards, stats = batch.problems, batch.rollouts, batch.rewards, batch.stats
    # questions 0..2: only "1" (k=1 of G=2) has signal; 3..5: "4"; 6..8: "7" -> 3 draws fill B=3
    assert [p["question"] for p in problems] == ["1", "4", "7"]
    assert stats.redraws == 2 and stats.dropped == 6 and stats.zero_std_frac == pytest.approx(2 / 3)
    assert [r.prompt_index for r in rollouts] == [0, 0, 1, 1, 2, 2]
    assert rewards.tolist() == [1.0, 0.0] * 3 and all("integer" in r.verdicts for r in rollouts)
    stream2 = iter({"question": str(i), "answer": "7"} for i in range(100))
    b2 = collect_groups(
        Scripted(), tok, stream2, lambda p: p["question"], verifiers, None, GroupPlan(**plan, dynamic=False), seed=0
    )
    assert [p["question"] for p in b2.problems] == ["0", "1", "2"] and b2.stats.redraws == 0
    assert t.equal(b2.rewards[:2], t.zeros(2))


def test_trainer_state_round_trip_repeats_the_next_step(tmp_path):
    """state_dict() after a step, another step, load_state_dict(), the same step again: identical."""
    import copy

    from reasonrl.train import GRPOTrainer

    cfg = compose(
        "train", [*TINY, "max_steps=3", "optim.lr=1e-3", "verify.workers=0", "logging.tensorboard=false", f"run_dir={tmp_path}"]
    )
    trainer = GRPOTrainer(cfg).setup()
    try:
        trainer.step()
        saved = copy.deepcopy(trainer.state_dict())
        first = trainer.step()
        params = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.load_state_dict(saved)
        assert trainer.steps_done == 1
        again = trainer.step()
    finally:
        trainer.close()
    drop = lambda r: json.dumps(
        {k: v for k, v in r.items() if not k.startswith(("time/", "rollout/tokens_per_s"))},  # noqa: E731
        sort_keys=True,
    )  # NaN-safe comparison
    assert drop(again) == drop(first)
    assert all(torch.equal(a, b) for a, b in zip(params, trainer.model.parameters()))


def test_sft_on_a_task_without_demonstrations_says_what_is_missing(tmp_path):
    from reasonrl.finetune import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) for i in range(20)))
    cfg = compose(
        "sft",
        [
            "task.name=mine",
            f"task.path={data}",
            "task.template=text",
            "task.heldout_size=4",
            "model.pretrain.max_steps=0",
            f"run_dir={tmp_path / 'run'}",
            "logging.progress=false",
        ],
    )
    with pytest.raises(ValueError, match="task 'mine' provides no demonstrations.*task.target"):
        main(cfg)
