"""Runs that survive: SIGKILL at any point of a step, ``resume=auto``, and the run ends exactly where
one that never stopped ends (parameters, optimizer state, metric rows, prompts drawn, TensorBoard);
killed checkpoint writes are skipped; a config change is refused by name; checkpoints export to
Hugging Face folders.

Run A trains 6 steps straight. Run B is the same config started with ``resume=auto`` on an empty
directory (a fresh start), stopped by the fault-injection hook (``REASONRL_PAUSE_AT``) at a point of
step 4 and killed by this test with SIGKILL, then started again with ``resume=auto`` to step 6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose

STEPS, KILL_STEP = 6, 4
BASE = [
    *TINY,
    f"max_steps={STEPS}",
    "eval.every=4",
    "checkpoint.every=1",
    "checkpoint.keep=2",
    "logging.samples_per_step=16",  # every rollout: the prompts and completions of each step are compared
    "optim.lr=1e-3",
    # graded format credit keeps rewards varied in every group, so every step has a gradient: a resumed run that
    # lost a weight, an optimizer moment or a seed samples and updates differently, and the comparison sees it
    "verifier.format.partial_credit=true",
]
EXE = os.path.join(os.path.dirname(sys.executable), "reasonrl-train")


class Run:
    """The trainer in a subprocess; with ``pause_at`` it stops there and :meth:`wait` kills it with SIGKILL.
    Runs are started together and waited for afterwards: they are independent, and mostly start-up."""

    def __init__(self, run_dir: Path, extra: list[str], pause_at: str | None = None):
        # one thread each: runs share the machine (several torch processes with two threads each on two cores
        # spend their time waiting on each other), and runs compared bit for bit must use the same thread count
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("REASONRL_PAUSE_AT", None)
        self.marker = run_dir.parent / f"{run_dir.name}.paused"
        self.marker.unlink(missing_ok=True)
        if pause_at is not None:
            env.update(REASONRL_PAUSE_AT=pause_at, REASONRL_PAUSE_FILE=str(self.marker))
        self.pause_at, self.log = pause_at, run_dir.parent / f"{run_dir.name}.log"
        with open(self.log, "w") as f:  # a file, not a pipe: nothing blocks while the others run
            base = [o for o in BASE if not (o.startswith("model.pretrain.") and "model=hf" in extra)]  # a folder's model
            self.proc = subprocess.Popen([EXE, *base, *extra, f"run_dir={run_dir}"], stdout=f, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 900) -> str:
        """Its output, once it ended (or, paused, was killed)."""
        deadline = time.monotonic() + timeout
        if self.pause_at is not None:
            while not self.marker.exists():
                assert self.proc.poll() is None, f"the run ended before {self.pause_at}:\n{self.log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"the run did not reach {self.pause_at}"
                time.sleep(0.1)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        out = self.log.read_text()
        if self.pause_at is None:
            assert self.proc.returncode == 0, out[-4000:]
        else:
            assert self.proc.returncode == -signal.SIGKILL
        return out


def _runs(*specs) -> list[str]:
    """Start every (run_dir, extra[, pause_at]) at once; their outputs."""
    started = [Run(*spec) for spec in specs]
    try:
        return [r.wait() for r in started]
    finally:  # a failed wait leaves no run behind (a paused one would wait forever)
        for r in started:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(timeout=60)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _state(checkpoint: Path) -> dict:
    """A checkpoint's model and optimizer tensors, read back as plain tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = checkpoint.parent.parent / f"{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint / "state"), str(out))
    return torch.load(out, weights_only=True)


def _flat(x, prefix=""):
    if isinstance(x, dict):
        return {k2: v2 for k, v in x.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    if isinstance(x, (list, tuple)):
        return {k2: v2 for i, v in enumerate(x) for k2, v2 in _flat(v, f"{prefix}{i}/").items()}
    return {prefix: x}


def _tb_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_same_run(a: Path, b: Path, exact: bool = True, learns: bool = True, last_bits: tuple[str, ...] = ()) -> None:
    """Run b ended where run a did: tensors equal, every row equal but for time/*, same prompts and samples;
    ``last_bits``: row keys that may differ in their last bits (compared to 1e-6 absolute or 1e-4 relative)."""
    sa, sb = _state(a / "checkpoints" / f"step_{STEPS:06d}"), _state(b / "checkpoints" / f"step_{STEPS:06d}")
    fa, fb = _flat(sa), _flat(sb)
    learning = [r for r in _rows(a) if "train/grad_norm" in r and r["step"] >= KILL_STEP - 1]
    assert not learns or all(r["train/grad_norm"] > 1e-3 for r in learning), "the compared steps must move the weights"
    assert fa.keys() == fb.keys()
    assert any(k.startswith("optim/state/") for k in fa), "the optimizer's moments are in the checkpoint"
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            if exact:
                assert torch.equal(fa[k], fb[k]), k
            else:
                torch.testing.assert_close(fa[k], fb[k], rtol=1e-3, atol=1e-4, msg=k)
        else:
            assert fa[k] == fb[k], k
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in rb] == list(range(STEPS + 1)), "no duplicate or missing rows"

    def untimed(r):  # time/* and the throughput derived from it differ between runs
        return {k: v for k, v in r.items() if not k.startswith("time/") and k not in ("rollout/tokens_per_s", *last_bits)}

    for x, y in zip(ra, rb):
        assert {k: x[k] for k in last_bits if k in x} == pytest.approx({k: y[k] for k in last_bits if k in y}, rel=1e-4, abs=1e-6)

    if exact:
        assert [untimed(r) for r in ra] == [untimed(r) for r in rb]
        assert _samples(a) == _samples(b)
    else:
        assert [s["prompt"] for s in _samples(a)] == [s["prompt"] for s in _samples(b)]
    assert [s for s, _ in _tb_scalars(b, "reward/mean")] == list(range(1, STEPS + 1))
    if exact:
        assert _tb_scalars(a, "reward/mean") == _tb_scalars(b, "reward/mean")


PHASES = ["generate", "optimizer", "checkpoint"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (STEPS steps straight) and, beside it, one run B per kill point; then the B runs resumed."""
    root = tmp_path_factory.mktemp("resume")
    killed = [(root / phase, ["resume=auto"], f"{KILL_STEP}:{phase}") for phase in PHASES]  # resume=auto, empty dir: fresh
    _runs((root / "straight", []), *killed)
    partial = {p: (root / p / "checkpoints" / f".step_{KILL_STEP:06d}.partial").exists() for p in PHASES}
    outs = _runs(*[(root / phase, ["resume=auto"]) for phase in PHASES])
    return root, partial, dict(zip(PHASES, outs))


@pytest.fixture(scope="module")
def straight(runs):
    return runs[0] / "straight"


@pytest.mark.parametrize("phase", PHASES)
def test_kill_during_a_step_then_resume_equals_the_straight_run(runs, phase):
    root, partial, outs = runs
    run, out = root / phase, outs[phase]
    assert partial[phase] == (phase == "checkpoint"), "only a kill during the write leaves a partial checkpoint"
    assert f"resumed from {run / 'checkpoints' / f'step_{KILL_STEP - 1:06d}'} (step {KILL_STEP - 1})" in out
    if phase == "checkpoint":
        assert "skipping incomplete checkpoint" in out and f".step_{KILL_STEP:06d}.partial" in out
        assert not (run / "checkpoints" / f".step_{KILL_STEP:06d}.partial").exists()
    assert_same_run(root / "straight", run)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["final", f"step_{STEPS - 1:06d}", f"step_{STEPS:06d}"], "checkpoint.keep=2 and the final folder"


def test_dynamic_sampling_resumes_exactly(tmp_path):
    """DAPO draws and sets aside extra groups; the stream's position carries that across the kill."""
    dapo = ["algorithm=dapo", "algorithm.max_redraws=2", "verifier.format.partial_credit=false"]  # groups to redraw
    a, b = tmp_path / "a", tmp_path / "b"
    _runs((a, dapo), (b, dapo, f"{KILL_STEP}:generate"))
    assert any(r["group/redraws"] > 0 for r in _rows(a)[1:]), "the test must exercise redraws"
    _runs((b, [*dapo, "resume=auto"]))
    assert_same_run(a, b, learns=False)


def test_a_tools_run_resumes_exactly(tmp_path):
    """A kill -9 in the middle of a run with the Python tool: the resumed run's tool turns, observations, masks
    and weights are those of the straight run."""
    from helpers import save_tool_policy, tool_run

    tools = tool_run(save_tool_policy(tmp_path / "policy"))
    a, b = tmp_path / "a", tmp_path / "b"
    _runs((a, tools), (b, tools, f"{KILL_STEP}:generate"))
    assert all(r["tools/calls_mean"] > 0 for r in _rows(a)[1:]), "every step calls the tool"
    assert any(t["role"] == "tool" for s in _samples(a) for t in s.get("turns", []))
    _runs((b, [*tools, "resume=auto"]))
    # which rollouts share a batch of continuations depends on when their tools finished: every sample and weight
    # is the same, but the sampler's own logprobs (logged as their gap to the trainer's, never in the loss of a
    # transformers run) are computed in batches of another shape, and differ in their last bits (gaps of 1e-7 by 5e-10)
    assert_same_run(a, b, last_bits=("sampling/logprob_diff_mean", "sampling/logprob_diff_max"))


@pytest.mark.parametrize("actor", ["thread", "process"])
def test_an_asynchronous_run_killed_mid_step_resumes_without_skipping_or_repeating_a_problem(tmp_path, actor):
    """rollout.max_staleness=1, kill -9 in step 4's update with the next batch in flight: resume=auto continues
    from step 3's checkpoint and samples the batches the learner had not taken again (with the checkpoint's
    weights). Every step trains on the problems a synchronous run trains on at that step, each exactly once.
    An actor process dies with the trainer it served."""
    import re

    sync, run = tmp_path / "sync", tmp_path / "async"
    ahead = ["rollout.max_staleness=1", f"rollout.actor={actor}"]
    killed = _runs((sync, []), (run, ahead, f"{KILL_STEP}:optimizer"))[1]
    if actor == "process":
        pid = int(re.search(r"actor process: pid (\d+)", killed).group(1))
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, f"the actor process {pid} outlived the killed trainer"
            time.sleep(0.2)
    out = _runs((run, [*ahead, "resume=auto"]))[0]
    assert f"resumed from {run / 'checkpoints' / f'step_{KILL_STEP - 1:06d}'} (step {KILL_STEP - 1})" in out

    def problems(where: Path) -> dict[int, list[str]]:
        by_step: dict[int, list[str]] = {}
        for s in _samples(where):
            by_step.setdefault(s["step"], []).append(s["prompt"])
        return {k: sorted(v) for k, v in by_step.items()}

    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(STEPS + 1))
    assert [r["async/batch"] for r in rows[1:]] == list(range(1, STEPS + 1))
    assert any(r["async/staleness"] == 1 for r in rows[1:]), "the actor ran ahead"
    assert problems(run) == problems(sync) and len(problems(run)) == STEPS


def test_a_lora_run_killed_mid_update_resumes_exactly_and_exports(tmp_path):
    """LoRA (r=8, KL to the base): kill -9 in step 4's update, resume=auto ends bit for bit where the straight run
    ends (adapters, their AdamW moments, rows, samples); the checkpoint holds optimizer state for adapter tensors
    only; reasonrl-export writes the merged model (transformers, the policy's logits) and the adapter alone (peft,
    on the base it names, the same logits)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reasonrl.lora import is_adapter_name

    extra = ["model.lora.r=8", "algorithm.kl_coef=0.05"]
    a, b = tmp_path / "a", tmp_path / "b"
    _runs((a, extra), (b, extra, f"{KILL_STEP}:optimizer"))
    _runs((b, [*extra, "resume=auto"]))
    assert_same_run(a, b)
    state = _flat(_state(b / "checkpoints" / f"step_{STEPS:06d}"))
    moments = {k.split("/")[2] for k in state if k.startswith("optim/state/")}
    assert moments and all(is_adapter_name(n) for n in moments), sorted(moments)[:5]
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-export")
    out = subprocess.run([exe, str(b / "checkpoints" / f"step_{STEPS:06d}"), str(tmp_path / "x"), "--dtype", "float32"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    ids = torch.randint(0, 20, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(a / "checkpoints" / "final").eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()(ids).logits
        config = json.loads((tmp_path / "x" / "adapter" / "adapter_config.json").read_text())
        base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
        adapter = PeftModel.from_pretrained(base, tmp_path / "x" / "adapter").eval()(ids).logits
    assert torch.equal(merged, want)
    assert (adapter - want).abs().max() < 1e-5


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (one killed but not yet reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_resume_refuses_a_changed_config_and_allows_max_steps(straight, tmp_path):
    import shutil

    from reasonrl.train import GRPOTrainer

    run = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", run / "checkpoints")
    cfg = compose("train", [*BASE, f"run_dir={run}", "resume=auto", "rollout.temperature=0.5", "optim.lr=2e-3"])
    with pytest.raises(ValueError) as e:
        GRPOTrainer(cfg).setup()
    msg = str(e.value)
    assert "rollout.temperature: 1.0 -> 0.5" in msg and "optim.lr: 0.001 -> 0.002" in msg
    from reasonrl.checkpoint import config_changes

    assert (
        config_changes({"max_steps": 8, "logging": {"progress": True}}, {"max_steps": 20, "logging": {"progress": False}}) == []
    )
    # a key the checkpoint's config lacks (a knob newer than the checkpoint) is compared too, as absent
    assert config_changes({"optim": {"lr": 1.0}}, {"optim": {"lr": 1.0, "warmup": 5}}) == ["optim.warmup: '<absent>' -> 5"]
    # ... unless it is left at the schema's default: a checkpoint written before the knob existed still resumes
    from reasonrl.train import schema_defaults

    defaults = schema_defaults()
    older = {"optim": {"lr": 1.0}}
    assert config_changes(older, {**older, "plugins": [], "algorithm": {"options": {}}}, defaults) == []
    assert config_changes(older, {**older, "plugins": ["mypkg"]}, defaults) == ["plugins: '<absent>' -> ['mypkg']"]
    # a key the checkpoint has is compared as ever, even when the resumed run sets it back to the default
    lr = defaults["optim"]["lr"]
    assert config_changes({"optim": {"lr": 2.0}}, {"optim": {"lr": lr}}, defaults) == [f"optim.lr: 2.0 -> {lr!r}"]
    # the batch's split and layout do not change the update: a resumed run may change them, or find them new
    before, after = (
        {"rollout": {"micro_batch_size": 8, "temperature": 1.0}},
        {"rollout": {"micro_batch_size": 2, "temperature": 1.0}},
    )
    after["rollout"].update(share_prompt=False, pass_cost_tokens=None, max_tokens_per_micro_batch=0)
    assert config_changes(before, after) == []
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        GRPOTrainer(compose("train", [*BASE, f"run_dir={run}", f"resume={tmp_path / 'nowhere'}"])).setup()


def test_checkpoint_carries_the_kl_reference_and_saving_changes_nothing(tmp_path):
    """In one process: step, save_state, step; a second trainer resumed from the checkpoint repeats that
    second step exactly, with the frozen KL reference restored from the checkpoint (not rebuilt)."""
    from reasonrl.train import GRPOTrainer

    over = [
        *BASE,
        "max_steps=3",
        "algorithm.kl_coef=0.04",
        "verify.workers=0",
        "logging.tensorboard=false",
        f"run_dir={tmp_path}",
    ]
    first = GRPOTrainer(compose("train", over)).setup()
    try:
        first.step()
        with torch.no_grad():  # a reference that differs from the base model's weights, as after a cold start
            for p in first.ref_model.parameters():
                p.add_(0.01)
        ref = [p.detach().clone() for p in first.ref_model.parameters()]
        path = first.save_state()
        row = first.step()
        params = [p.detach().clone() for p in first.model.parameters()]
    finally:
        first.close()
    assert (path / "meta.json").is_file() and json.loads((path / "meta.json").read_text())["step"] == 1
    second = GRPOTrainer(compose("train", [*over, "resume=auto"])).setup()
    try:
        assert second.steps_done == 1 and second.resumed_from == path
        assert all(torch.equal(a, b) for a, b in zip(ref, second.ref_model.parameters()))
        again = second.step()
    finally:
        second.close()
    untimed = lambda r: json.dumps({k: v for k, v in r.items() if not k.startswith(("time/", "rollout/tokens_per_s"))})  # noqa: E731
    assert untimed(again) == untimed(row) and row["train/kl"] > 0
    assert all(torch.equal(a, b) for a, b in zip(params, second.model.parameters()))


def test_incomplete_checkpoints_are_never_chosen(tmp_path):
    from reasonrl.checkpoint import complete_checkpoints, resolve

    root = tmp_path / "checkpoints"
    for name in ("step_000001", "step_000002", "step_000003", ".step_000004.partial", "final"):
        (root / name).mkdir(parents=True)
    for name in ("step_000001", "step_000002"):
        (root / name / "meta.json").write_text("{}")
        (root / name / "trainer.pt").write_bytes(b"")
    assert [p.name for p in complete_checkpoints(root)] == ["step_000001", "step_000002"]
    assert resolve("auto", root).name == "step_000002"
    assert not (root / ".step_000004.partial").exists()
    assert resolve("auto", tmp_path / "empty") is None


def test_export_loads_in_transformers_with_the_trained_logits(straight, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = straight / "checkpoints" / f"step_{STEPS:06d}"
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-export")
    trained = AutoModelForCausalLM.from_pretrained(straight / "checkpoints" / "final").eval()
    ids = torch.randint(0, trained.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    ref = trained(ids).logits
    for dtype, tol in (("float32", 0.0), ("bfloat16", 0.05)):
        out = subprocess.run([exe, str(ckpt), str(tmp_path / dtype), "--dtype", dtype], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        model = AutoModelForCausalLM.from_pretrained(tmp_path / dtype).eval()
        assert next(model.parameters()).dtype == getattr(torch, dtype)
        logits = model(ids).logits.float()
        if tol == 0.0:
            assert torch.equal(logits, ref)
        else:
            assert (logits - ref).abs().max() <= tol * ref.abs().max()
    bad = subprocess.run([exe, str(tmp_path / "missing"), str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and "not a complete training checkpoint" in bad.stderr


def test_vllm_run_resumes_with_restored_weights_and_seeds(tmp_path):
    from reasonrl.rollout_vllm import vllm_available

    ok, reason = vllm_available()
    if not ok:
        pytest.skip(reason)
    vllm = ["generator=vllm", "generator.cpu_kv_cache_gib=1"]
    a, b = tmp_path / "a", tmp_path / "b"
    _runs((a, vllm), (b, vllm, f"{KILL_STEP}:optimizer"))
    _runs((b, [*vllm, "resume=auto"]))
    assert_same_run(a, b, exact=True)
    # the exported folder (bfloat16) loads in vLLM, whose logprobs match transformers' on the same folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrl.rollout import Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-export")
    out = subprocess.run(
        [exe, str(b / "checkpoints" / f"step_{STEPS:06d}"), str(tmp_path / "hf")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert next(model.parameters()).dtype == torch.bfloat16
    gen = VLLMGenerator(model, tok, model_path=str(tmp_path / "hf"), dtype="bfloat16", cpu_kv_cache_gib=1)
    prompts = [tok(f"{i}+{i + 3}=", add_special_tokens=False)["input_ids"] for i in range(4)]
    rollouts = gen.generate(prompts, 1, Sampling(temperature=1.0, max_new_tokens=8, seed=0))
    with torch.no_grad():
        for r in rollouts:
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            logits = model.float()(ids).logits[0, len(r.prompt_ids) - 1 : -1]
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
            assert (lp - torch.tensor(r.logprobs)).abs().max() < 0.1


def test_checkpoint_schedule_every_n_steps_and_after_the_last():
    from reasonrl.train import GRPOTrainer

    t = GRPOTrainer(compose("train", [*BASE, "max_steps=7", "checkpoint.every=3"]))
    assert [s for s in range(1, 8) if t._checkpoint_due(s)] == [3, 6, 7]
    t = GRPOTrainer(compose("train", [*BASE, "max_steps=7", "checkpoint.every=0"]))
    assert not any(t._checkpoint_due(s) for s in range(1, 8))
    t = GRPOTrainer(compose("train", [*BASE, "max_steps=7", "checkpoint.every=0", "checkpoint.every_minutes=0.5"]))
    t.last_checkpoint_time -= 31
    assert t._checkpoint_due(2)
    t.last_checkpoint_time += 31
    assert not t._checkpoint_due(2) and t._checkpoint_due(7)
