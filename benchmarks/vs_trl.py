"""reasonrl's GRPO step against TRL's GRPOTrainer on identical work, one after the other in one invocation.

    .venv/bin/python benchmarks/vs_trl.py                       # config a (tiny Qwen2), then b and c (SmolLM2)
    .venv/bin/python benchmarks/vs_trl.py --configs a --steps 6 --rounds 3

Configs (as in the issue):
  a  a randomly initialised Qwen2 (hidden 128, 2 layers, 2 heads of 64, the arithmetic world's character
     tokenizer), arithmetic prompts, 16 prompts x 8 samples x 64 new tokens; transformers generation on both sides
  b  SmolLM2-135M-Instruct on GSM8K training prompts, 8 prompts x 4 samples x 256 new tokens; each side's fastest
     generator here (reasonrl: vLLM; TRL: transformers generation, its vLLM modes need a server or a
     distributed launch of TRL's own); TRL's side is the same work as in c and is measured once for both
  c  as b, both on transformers generation
Identical on both sides: the model folder, the prompts in the same order (TRL's dataset is the next problems of a
copy of reasonrl's stream, unshuffled), the reward (reasonrl's answer verifier called on each completion: exact
integer answer), G, the completion cap, temperature 1, no KL, AdamW at lr 1e-4 (a) / 1e-6 (b, c) with one update
per batch, float32 weights, threads (torch's, 2 here). Not identical: TRL's loss aggregation and std scaling are
its defaults (loss_type "dapo"-style token mean in 1.16; ours set to token_mean to match), the sampled tokens (each
side seeds its own sampler), TRL's Trainer bookkeeping (dataloader, logging) around the step.

Each round runs `--steps` steps of each framework after one warm-up step, alternating frameworks across rounds;
reported: the median step time over all timed steps, the split (generation + scoring vs the rest, where TRL
exposes it: ``_generate_and_score_completions`` is timed by wrapping it here), generated tokens per second, peak
resident memory of each framework's process, and ours/TRL. Each framework runs in its own subprocess so their
memory peaks are their own. TRL is not a dependency: it is installed without its dependencies into
``<venv>/trl-parity-<version>`` on first use, as the parity test does.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_VERSION = "1.16.0"
CONFIGS = {
    # micro: sequences per forward/backward (SmolLM2 at 32 x ~400 tokens in one float32 pass needs over 20 GB)
    "a": dict(model="tiny-qwen2", task="arith", B=16, G=8, new_tokens=64, lr=1e-4, micro=128, ours_generator="hf"),
    "b": dict(model="smollm2", task="gsm8k", B=8, G=4, new_tokens=256, lr=1e-6, micro=4, ours_generator="vllm"),
    "c": dict(model="smollm2", task="gsm8k", B=8, G=4, new_tokens=256, lr=1e-6, micro=4, ours_generator="hf"),
}


def trl_path() -> Path:
    target = Path(sys.prefix) / f"trl-parity-{TRL_VERSION}"
    if not (target / "trl").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"trl=={TRL_VERSION}"], check=True)  # fmt: skip
    return target


def tiny_qwen2(folder: Path) -> Path:
    """A randomly initialised Qwen2 (hidden 128, 2 layers, 2 heads of 64) with the arithmetic tokenizer."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reasonrl.tasks import arith
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(arith.CHARSET, arith.TAGS)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def overrides(c: dict, model_dir: str, generator: str) -> list[str]:
    task = ["task=gsm8k", "experiment_name=vs_trl"] if c["task"] == "gsm8k" else ["task=arith"]
    gen = ["generator=vllm", "generator.max_model_len=1024"] if generator == "vllm" else ["generator=hf"]
    return [
        "model=hf" if c["model"] != "smollm2" else "model=smollm2_135m",
        *([f"model.path={model_dir}"] if c["model"] != "smollm2" else []),
        "model.compute_dtype=float32",
        *task,
        *gen,
        "verifier=[integer]",
        "task.answer_verifier=integer",
        "task.heldout_size=4",
        f"rollout.prompts_per_step={c['B']}",
        f"rollout.samples_per_prompt={c['G']}",
        f"rollout.max_new_tokens={c['new_tokens']}",
        f"rollout.micro_batch_size={c['micro']}",
        "rollout.temperature=1.0",
        "algorithm.kl_coef=0.0",
        "algorithm.loss_agg=token_mean",
        f"optim.lr={c['lr']}",
        "optim.warmup_steps=0",
        "verify.workers=0",
        "eval.every=0",
        "logging.progress=false",
        "logging.tensorboard=false",
    ]


def compose(overrides_: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from reasonrl.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="train", overrides=overrides_)


def run_ours(c: dict, model_dir: str, steps: int, generator: str, run_dir: Path) -> dict:
    from reasonrl.train import GRPOTrainer

    cfg = compose([*overrides(c, model_dir, generator), f"run_dir={run_dir}", f"max_steps={steps + 1}"])
    trainer = GRPOTrainer(cfg).setup()
    rows = []
    try:
        for _ in range(steps + 1):
            rows.append(trainer.step())
    finally:
        trainer.close()
    timed = rows[1:]
    return {
        "step_s": [r["time/step_s"] for r in timed],
        "gen_score_s": [r["time/generate_s"] + r["time/verify_s"] for r in timed],
        "tokens": [r["rollout/len_mean"] * c["B"] * c["G"] for r in timed],
        "reward": [r["reward/mean"] for r in rows],
    }


def run_trl(c: dict, model_dir: str, steps: int, run_dir: Path) -> dict:
    sys.path.append(str(trl_path()))
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reasonrl.train import GRPOTrainer as Ours

    # the prompts reasonrl would draw, in its order: a copy of its stream after setup
    cfg = compose([*overrides(c, model_dir, "hf"), f"run_dir={run_dir / 'ours-setup'}", "max_steps=1"])
    ours = Ours(cfg).setup()
    stream, verifier = copy.deepcopy(ours.stream), ours.answer_verifier
    rows = []
    for _ in range((steps + 1) * c["B"]):
        p = next(stream)
        rows.append({"prompt": ours.render(p), "problem": json.dumps(p)})
    model_path = str(ours.model_path)
    ours.close()
    del ours

    def exact_answer(completions, problem, **_):
        return [float(verifier(json.loads(p), text).score) for p, text in zip(problem, completions)]

    tok = AutoTokenizer.from_pretrained(model_path)
    args = GRPOConfig(
        output_dir=str(run_dir / "trl"), per_device_train_batch_size=c["micro"], num_generations=c["G"],
        max_completion_length=c["new_tokens"], temperature=1.0, top_p=1.0, beta=0.0, learning_rate=c["lr"],
        lr_scheduler_type="constant", warmup_steps=0, max_steps=steps + 1, num_iterations=1, loss_type="dapo",
        scale_rewards="group", use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        logging_steps=1, report_to=[], save_strategy="no", shuffle_dataset=False,
        gradient_accumulation_steps=c["B"] * c["G"] // c["micro"],
        dataloader_num_workers=0, seed=0, disable_dropout=True, log_completions=False,
    )  # fmt: skip
    # micro-batches of c["micro"] completions accumulated over one generation batch: one optimizer step per step
    times: list[float] = []
    gen: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    trainer = GRPOTrainer(model=model_path, reward_funcs=exact_answer, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()])  # fmt: skip
    inner = trainer._generate_and_score_completions

    def timed(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        gen.append(time.perf_counter() - t)
        lengths.append(float(out["completion_mask"].sum()))
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    return {"step_s": times[1:], "gen_score_s": gen[1:], "tokens": lengths[1:], "reward": []}


def child(which: str, config: str, model_dir: str, steps: str, out: str) -> None:
    import torch

    steps = int(steps)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    c = CONFIGS[config]
    with tempfile.TemporaryDirectory() as tmp:
        if which == "trl":
            res = run_trl(c, model_dir, steps, Path(tmp))
        else:
            res = run_ours(c, model_dir, steps, c["ours_generator"] if which == "ours" else "hf", Path(tmp))
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(out).write_text(json.dumps(res))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:6], sys.argv[6])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="a,b,c")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per framework and round (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours first in odd rounds)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = {**os.environ, "REASONRL_DATA_DIR": os.environ.get("REASONRL_DATA_DIR", str(REPO.parent / "shared" / "data")),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(tiny_qwen2(Path(tmp) / "tiny-qwen2"))
        for config in args.configs.split(","):
            got: dict[str, list[dict]] = {"ours": [], "trl": []}
            for r in range(args.rounds):
                for which in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
                    # b and c give TRL the same work (its transformers generation): measured once, shown for both
                    twin = f"{'c' if config == 'b' else 'b'}-trl-{r}.json"
                    if which == "trl" and (Path(tmp) / twin).exists():
                        got[which].append(json.loads((Path(tmp) / twin).read_text()))
                        continue
                    out = Path(tmp) / f"{config}-{which}-{r}.json"
                    t = time.time()
                    cmd = [sys.executable, __file__, "--child", which, config, model_dir, str(args.steps), str(out)]
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if res.returncode != 0:
                        raise SystemExit(f"{which} on config {config} failed:\n{res.stderr[-5000:]}")
                    got[which].append(json.loads(out.read_text()))
                    print(f"[vs_trl] config {config} round {r} {which}: {time.time() - t:.0f} s", flush=True)
            report[config] = {k: summarize(v) for k, v in got.items()}
            print_table(config, report[config])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


def summarize(runs: list[dict]) -> dict:
    step = [x for r in runs for x in r["step_s"]]
    gen = [x for r in runs for x in r["gen_score_s"]]
    tokens = [x for r in runs for x in r["tokens"]]
    return {
        "step_s": statistics.median(step),
        "gen_score_s": statistics.median(gen),
        "rest_s": statistics.median(s - g for s, g in zip(step, gen)),
        "gen_tokens_per_s": statistics.median(t / g for t, g in zip(tokens, gen)),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "steps_timed": len(step),
        "rounds": [statistics.median(r["step_s"]) for r in runs],
    }


def print_table(config: str, r: dict) -> None:
    ours, trl = r["ours"], r["trl"]
    print(f"\nconfig {config}: {CONFIGS[config]}")
    print(f"{'':34}{'reasonrl':>12}{'TRL ' + TRL_VERSION:>12}{'ours/TRL':>10}")
    for key, label in (("step_s", "median step, s"), ("gen_score_s", "generation + scoring, s"),
                       ("rest_s", "the rest (training, sync), s"), ("gen_tokens_per_s", "generated tokens/s"),
                       ("peak_rss_gb", "peak RSS, GB")):  # fmt: skip
        print(f"{label:34}{ours[key]:12.3f}{trl[key]:12.3f}{ours[key] / trl[key]:10.2f}")
    print(f"{'per-round medians, s':34}{str([round(x, 3) for x in ours['rounds']]):>12}  {[round(x, 3) for x in trl['rounds']]}")


if __name__ == "__main__":
    main()
