"""GPU check: the real GRPO trainer's speed and memory on Qwen2.5-shaped models.

Run on a GPU machine (one call, well under 8 minutes)::

    bash benchmarks/gpu_check.sh                    # wrapper: wheels, then this script, output in $OUT

or directly::

    python benchmarks/gpu_check.py --out $OUT       # qwen2.5-0.5b and qwen2.5-1.5b shapes, bf16
    python benchmarks/gpu_check.py --dry-run        # CPU, a tiny shape: proves the script runs (a test does this)

For each shape it builds a randomly initialised Qwen2 model from a config (no
download; the vocabulary keeps its real size, 151,936, so the LM head costs what
it costs), runs ``--steps`` GRPO steps of ``reasonrl.train.main`` on the
arithmetic world with the transformers generator on one GPU (no FSDP), and
reads its metrics.jsonl. Random models never emit EOS, so every completion has
exactly ``--new-tokens`` tokens. Per step it reports: generation tokens/s;
training tokens/s (prompt + completion tokens through forward and backward);
model FLOPs utilisation of the training phase, 6 x params x tokens / train time
over the card's bf16 matmul rate, which the script measures itself; peak GPU
memory; and the split of step time into generate / verify / train / sync. The
first step (warm-up, allocator growth) is reported but left out of the means.
Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` and prints the table
last.

``--fsdp`` runs each shape a second time with the policy sharded by FSDP2 in a
process group of one (NCCL on the GPU, gloo in the dry run): the path a
``torchrun`` launch takes (bfloat16 gathered parameters, float32 reductions and
master weights), with the per-rank memory it needs at one rank, from which the
memory per GPU at 2, 4 and 8 ranks is derived in BENCHMARKS.md.

It does not use vLLM (not installed on the lent machines) or several GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHAPES = {
    # hidden, layers, heads, kv heads, mlp, as in the Qwen2.5 configs (head size 64 / 128)
    "qwen2.5-0.5b": dict(
        hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, intermediate_size=4864, vocab_size=151936
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, intermediate_size=8960, vocab_size=151936
    ),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=1, num_kv_heads=1, head_dim=64, intermediate_size=128, vocab_size=512),
}


def _import_reasonrl():
    """Import reasonrl from this checkout even when it is not pip-installed (the lent GPU machine)."""
    try:
        import reasonrl.verifiers  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))
        import reasonrl

        reasonrl.__path__.append(str(REPO))  # reasonrl.verifiers -> verifiers/, as the package-dir mapping does


def matmul_tflops(device: str, dtype, n: int, reps: int) -> float:
    """Measured dense matmul rate (TFLOP/s) for n x n x n products."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def run_shape(name: str, args, cache: Path, peak_tflops: float, fsdp: bool = False) -> dict:
    from hydra import compose, initialize_config_dir

    from reasonrl.config import CONF_DIR, register
    from reasonrl.train import main

    register()
    shape = SHAPES[name]
    run_dir = Path(tempfile.mkdtemp(prefix=f"gpu_check_{name}_"))
    overrides = [
        "experiment=r1_zero_arith",
        "model.arch.type=qwen2",
        *[f"model.arch.{k}={v}" for k, v in shape.items()],
        f"model.arch.max_position_embeddings={max(4096, args.new_tokens + 64)}",
        "model.pretrain.max_steps=0",
        "model.dtype=float32",  # master weights and AdamW state
        f"model.compute_dtype={args.dtype}",  # the forward passes (autocast)
        f"model.gradient_checkpointing={str(args.checkpointing).lower()}",
        f"max_steps={args.steps}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.micro_batch_size={args.micro_batch}",
        "generator=hf",
        f"generator.batch_size={args.prompts * args.samples}",
        # long-tailed lengths: with S stop ids out of V, a random model stops with probability about S/V per token
        f"generator.stop_token_ids=[{','.join(str(t) for t in range(1000, 1000 + args.stop_ids))}]",
        f"rollout.max_tokens_per_micro_batch={args.max_tokens_mb}",
        "task.heldout_size=8",
        "eval.every=0",
        "eval.sampled=false",
        "eval.max_new_tokens=8",
        "verify.workers=0",
        "checkpoint.final=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        f"logging.progress={str(not args.quiet).lower()}",
        f"run_dir={run_dir}",
        f"model.fsdp={'on' if fsdp else 'off'}",
    ]
    os.environ["XDG_CACHE_HOME"] = str(cache)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    t = time.time()
    main(cfg)
    wall = time.time() - t
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"time/step_s"' in x]

    from reasonrl.tiny import base_path

    params = json.loads((base_path(cfg.model.arch, cfg.model.pretrain) / "build.json").read_text())["params"]
    steps = []
    for r in rows:
        n = args.prompts * args.samples
        prompt_len = 12  # "Q:47+85+29=?": one token per character
        train_tokens = n * (prompt_len + r["rollout/len_mean"]) * cfg.algorithm.updates_per_batch
        train_tps = train_tokens / r["time/train_s"]
        steps.append(
            {
                "step": r["step"],
                "step_s": r["time/step_s"],
                "generate_s": r["time/generate_s"],
                "verify_s": r["time/verify_s"],
                "train_s": r["time/train_s"],
                "sync_s": r["time/sync_s"],
                "gen_tokens_per_s": r["rollout/tokens_per_s"],
                "train_tokens_per_s": train_tps,
                "mfu": 6 * params * train_tps / (peak_tflops * 1e12),
                "peak_mem_gb": r.get("gpu/peak_mem_gb"),
                "completion_len": r["rollout/len_mean"],
                "completion_len_max": r["rollout/len_max"],
                "clipped_frac": r["rollout/clipped_frac"],
            }
        )
    timed = steps[1:] or steps
    mean = {k: statistics.mean(s[k] for s in timed) for k in steps[0] if k != "step" and steps[0][k] is not None}
    mean["peak_mem_gb"] = max((s["peak_mem_gb"] or 0) for s in steps)
    return {
        "shape": name + (" fsdp" if fsdp else ""),
        "params": params,
        "wall_s": wall,
        "steps": steps,
        "mean_after_first": mean,
        "config": {
            k: getattr(args, k)
            for k in ("prompts", "samples", "new_tokens", "micro_batch", "max_tokens_mb", "dtype", "checkpointing", "stop_ids")
        },
    }


def table(results: list[dict], device_name: str, peak: float) -> str:
    lines = [
        f"device: {device_name}; measured bf16 matmul peak {peak:.0f} TFLOP/s"
        if peak >= 1
        else f"device: {device_name}; measured matmul peak {peak * 1000:.1f} GFLOP/s",
        "",
        "| shape | params | config | len mean / max | gen tok/s | train tok/s | MFU (train) | peak mem GiB | step s "
        "| generate | verify | train | sync |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["mean_after_first"]
        split = {k: m[f"{k}_s"] / m["step_s"] for k in ("generate", "verify", "train", "sync")}
        c = r["config"]
        conf = f"{c['prompts']}x{c['samples']}x{c['new_tokens']}" + (" ckpt" if c["checkpointing"] else "")
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.0f}M | {conf} | {m['completion_len']:.0f} / {m['completion_len_max']:.0f} "
            f"| {m['gen_tokens_per_s']:.0f} | {m['train_tokens_per_s']:.0f} | "
            f"{m['mfu']:.1%} | {m['peak_mem_gb']:.1f} | {m['step_s']:.2f} | {split['generate']:.0%} | {split['verify']:.0%} | "
            f"{split['train']:.0%} | {split['sync']:.0%} |"
        )
    return "\n".join(lines)


def main_cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, 2 steps")
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--max-tokens-mb", type=int, default=16384, help="token budget per micro-batch")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (autocast); weights stay float32")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--stop-ids", type=int, default=0, help="extra stop token ids (long-tailed lengths)")
    ap.add_argument(
        "--long",
        action="store_true",
        help="long completions: 4096 new tokens, lengths long-tailed (mean about 1000: 150 of 151,936 ids stop), "
        "8 prompts x 4 samples, gradient checkpointing",
    )
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--fsdp", action="store_true", help="also run each shape sharded by FSDP2 (a process group of one)")
    args = ap.parse_args()
    if args.long:
        args.new_tokens, args.prompts, args.samples, args.stop_ids, args.checkpointing = 4096, 8, 4, 150, True
        args.micro_batch, args.steps = 32, max(2, min(args.steps, 3))
    if args.dry_run:
        args.shapes, args.steps, args.prompts, args.samples, args.new_tokens, args.micro_batch = "tiny", 2, 2, 2, 8, 4
        args.dtype = "float32"
    _import_reasonrl()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("no GPU here: use --dry-run for the CPU check")
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = matmul_tflops(
        device,
        torch.bfloat16 if device == "cuda" else torch.float32,
        8192 if device == "cuda" else 512,
        50 if device == "cuda" else 5,
    )
    print(f"[gpu_check] {device_name}: matmul {peak:.3f} TFLOP/s", flush=True)
    cache = Path(tempfile.mkdtemp(prefix="gpu_check_cache_"))
    results = [run_shape(s, args, cache, peak) for s in args.shapes.split(",")]
    if args.fsdp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0", WORLD_SIZE="1")
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        results += [run_shape(s, args, cache, peak, fsdp=True) for s in args.shapes.split(",")]
        torch.distributed.destroy_process_group()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name, "matmul_peak_tflops": peak, "torch": torch.__version__, "results": results}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = table(results, device_name, peak)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main_cli()
