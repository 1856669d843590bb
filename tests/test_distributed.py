"""The trainer under torchrun: 2 processes with gloo and FSDP2 on this CPU, against one process.

The update-level checks run tests/distributed_worker.py under torchrun; the run-level ones run
``reasonrl-train`` itself under torchrun and then in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 600, env: dict | None = None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    t = time.time()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return res, time.time() - t


def worker(mode: str, tmp_path: Path, nproc: int = 2):
    out = tmp_path / mode
    res, seconds = torchrun([str(WORKER), mode, str(out)], cwd=WORKER.parent, nproc=nproc, timeout=300)
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(nproc) if Path(f"{out}.{r}.json").exists()]
    return res, ranks, seconds


def test_fixed_rollouts_give_the_one_process_update(tmp_path):
    """The same global batch (unequal tokens and micro-batches per rank) on 1 and 2 processes: loss, KL and
    every parameter after one step agree to 1e-6, for every loss aggregation, both advantage scales, with and
    without KL, and with each group's prompt run once on the sharded side."""
    res, ranks, _ = worker("update", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(ranks) == 2
    for results in ranks:
        assert len(results) == 24
        for r in results:
            assert abs(r["loss"] - r["loss_1"]) < 1e-6, r
            assert abs(r["kl"] - r["kl_1"]) < 1e-6, r
            assert r["param_gap"] < 1e-6, r
            assert r["moved"] > 1e-2, r  # the step did something to compare
            assert r["passes"] == r["micro_batches"] * (2 if r["share"] else 1), r  # shared: prompts, then completions
    assert {r["local_micro_batches"] for r in ranks[0]} != {r["local_micro_batches"] for r in ranks[1]}
    assert all(a["micro_batches"] == max(a["local_micro_batches"], b["local_micro_batches"]) for a, b in zip(*ranks))
    # with KL the reference differs from the policy: the term moves the loss
    by_case = {r["case"]: r for r in ranks[0]}
    assert by_case["token_mean/group/kl=0.1/share=True"]["loss"] != pytest.approx(
        by_case["token_mean/group/kl=0.0/share=True"]["loss"]
    )


def test_a_lora_policy_under_fsdp2_gives_the_one_process_update(tmp_path):
    """LoRA under torchrun: the policy sharded with FSDP2 (frozen base and trainable adapters in the same
    shards), its KL reference its own base with the adapters off. Loss, KL and every tensor after one step
    equal one unsharded process's to 1e-6; the base did not move, the adapters did."""
    res, ranks, _ = worker("lora", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(ranks) == 2
    for results in ranks:
        assert [r["share"] for r in results] == [False, True]  # every sequence whole; each group's prompt once
        for r in results:
            assert abs(r["loss"] - r["loss_1"]) < 1e-6 and abs(r["kl"] - r["kl_1"]) < 1e-6, r
            assert r["param_gap"] < 1e-6 and r["base_moved"] == 0.0 and r["adapter_moved"] > 1e-2, r
            assert r["kl"] > 1e-5, r  # the adapters moved the policy from the base: the reference is not the policy


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    res, ranks, seconds = worker("nan", tmp_path)
    assert len(ranks) == 2
    messages = {r["message"] for r in ranks}
    assert len(messages) == 1 and "non-finite loss" in messages.pop()
    assert seconds < 120


def test_dynamic_sampling_when_the_ranks_disagree(tmp_path):
    """Rank 1's groups never carry signal, rank 0's always do: both sample as often (3 calls: the first draw
    and 2 redraws), both end with their 2 groups, rank 1 fills up with set-aside groups."""
    res, ranks, _ = worker("dynamic", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = ranks
    assert r0["calls"] == r1["calls"] == 3
    assert r0["groups"] == r1["groups"] == 2
    assert r0["zero_std_frac"] < 1.0 and r1["zero_std_frac"] == 1.0
    assert r1["dropped"] > r0["dropped"]


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """Sharded model and AdamW state saved by 2 processes, loaded by 1: the next step's loss and parameters
    are those of the 2-process run to 1e-6."""
    out = tmp_path / "ckpt"
    res, _ = torchrun([str(WORKER), "save", str(out)], cwd=WORKER.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), "resume", str(out)], cwd=WORKER.parent, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    saved, resumed = (json.loads((out / f"{k}.json").read_text()) for k in ("saved", "resumed"))
    assert abs(saved["loss"] - resumed["loss"]) < 1e-6

    def flat(x):
        return [x] if not isinstance(x, list) else [z for y in x for z in flat(y)]

    gap = max(abs(a - b) for k in saved["params"] for a, b in zip(flat(saved["params"][k]), flat(resumed["params"][k])))
    assert gap < 1e-6


TRAIN = [
    "-m",
    "reasonrl.train",
    *[o for o in TINY if not o.startswith("rollout.prompts_per_step")],
    "max_steps=3",
    "eval.every=3",
    "rollout.prompts_per_step=8",
    "checkpoint.every=2",
    "model.compute_dtype=float32",
    "verify.workers=0",
]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_two_process_training_run(tmp_path):
    """reasonrl-train on 2 processes completes; the main process alone wrote the run directory (nothing else
    appears in the working directory); its numbers are those of a 1-process run on the same global batch within
    sampling noise; its checkpoint resumes in one process."""
    work = tmp_path / "cwd"
    work.mkdir()
    two, one = tmp_path / "two", tmp_path / "one"
    res, t2 = torchrun([*TRAIN, f"hydra.run.dir={two}"], cwd=work)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    assert sorted(p.name for p in work.iterdir()) == []  # no Hydra folder, no log file from any rank
    assert res.stdout.count("run directory:") == 2  # announced at start and end, by the main process only
    assert {p.name for p in two.iterdir()} >= {"metrics.jsonl", "samples.jsonl", "summary.json", "checkpoints", "config.yaml"}
    rows = read_metrics(two)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    res1 = subprocess.run([sys.executable, *TRAIN, f"run_dir={one}"], cwd=work, capture_output=True, text=True, timeout=600)
    assert res1.returncode == 0, res1.stderr[-3000:]
    rows1 = read_metrics(one)
    report = {}
    for key in ("reward/mean", "rollout/len_mean", "train/entropy", "verify/correct_frac"):
        a = sum(r[key] for r in rows[1:]) / 3
        b = sum(r[key] for r in rows1[1:]) / 3
        report[key] = (round(a, 3), round(b, 3))
    print("2 vs 1 process, means over 3 steps:", report, f"wall {t2:.1f}s")
    assert rows[0]["eval/arith/accuracy"] == rows1[0]["eval/arith/accuracy"]  # the same model, greedy, split eval
    assert abs(report["reward/mean"][0] - report["reward/mean"][1]) < 0.2
    assert abs(report["rollout/len_mean"][0] - report["rollout/len_mean"][1]) < 0.25 * report["rollout/len_mean"][1]
    # the 2-process checkpoint at step 2 resumes in 1 process, which re-runs step 3
    (two / "checkpoints" / "step_000003").rename(tmp_path / "step3")
    res2 = subprocess.run([sys.executable, *TRAIN, f"run_dir={two}", "resume=auto"], cwd=work, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert "resumed from" in res2.stdout and "step_000002" in res2.stdout
    assert [r["step"] for r in read_metrics(two)] == [0, 1, 2, 3]


def test_prompts_must_divide_among_the_processes(tmp_path):
    res, _ = torchrun([*TRAIN, f"run_dir={tmp_path / 'r'}", "rollout.prompts_per_step=7"], cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    assert "7 prompts per step (rollout.prompts_per_step) do not divide among 2 processes" in res.stderr + res.stdout


@pytest.mark.parametrize("policy", ["full", "lora"])
def test_a_two_process_run_with_one_vllm_engine_per_rank(tmp_path, policy):
    """generator=vllm under torchrun: one engine per rank (vLLM's external launcher, data-parallel engines), weights
    gathered tensor by tensor into each after every step (a LoRA policy: the adapter alone); the run ends cleanly
    (the engines' groups torn down before the trainer's). Groups stream to a scoring worker as they finish, so
    one rank's requests end steps before the other's: the engine that is done keeps stepping with the others
    (leaving early hung them in vLLM's data-parallel collective)."""
    from reasonrl.rollout_vllm import vllm_available

    ok, reason = vllm_available()
    if not ok:
        pytest.skip(reason)
    run = tmp_path / "run"
    lora = ["model.lora.r=8", "optim.lr=1e-2", "verifier.format.partial_credit=true"] if policy == "lora" else []
    res, _ = torchrun([*TRAIN, f"run_dir={run}", "generator=vllm", "max_steps=2", "eval.every=2", "checkpoint.every=0",
                       "verify.workers=1", *lora], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["sampling/logprob_diff_max"] < 1e-3 for r in rows[1:])  # each engine samples with the synced weights
    if policy == "lora":
        assert "LoRA into the generator: adapter" in res.stdout and all(r["train/grad_norm"] > 0 for r in rows[1:])


def test_a_two_process_run_with_the_python_tool(tmp_path):
    """2 processes, FSDP2, the agent loop and the sandboxed tool on every rank: each rank runs its groups' tool
    calls, and the main process logs every rank's turns."""
    from helpers import save_tool_policy, tool_run

    run = tmp_path / "run"
    train = [o for o in TRAIN if not o.startswith("model.pretrain.")]
    res, _ = torchrun([*train, *tool_run(save_tool_policy(tmp_path / "policy")), f"run_dir={run}", "max_steps=2",
                       "eval.every=2", "checkpoint.every=0", "logging.samples_per_step=32"], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    rows = read_metrics(run)
    assert all(r["tools/calls_mean"] > 0 and r["rollout/finish_stop_frac"] > 0 for r in rows[1:])
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 32 and sum(any(t["role"] == "tool" for t in s.get("turns", [])) for s in samples) > 8


def test_a_two_process_asynchronous_run(tmp_path):
    """rollout.max_staleness=1 under torchrun with FSDP2: each rank's actor samples its share on the actors' own
    process group while the learners train on theirs; the run ends cleanly with every batch within the bound."""
    run = tmp_path / "run"
    res, _ = torchrun([*TRAIN, f"run_dir={run}", "rollout.max_staleness=1", "checkpoint.every=0"], cwd=tmp_path)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "eval/arith/accuracy" in rows[3]
    assert [r["async/batch"] for r in rows[1:]] == [1, 2, 3]
    assert all(0 <= r["async/staleness"] <= 1 for r in rows[1:]) and any(r["async/staleness"] == 1 for r in rows[1:])
