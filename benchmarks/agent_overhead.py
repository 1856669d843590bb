"""What the agent loop costs a single-turn run: the generator called directly against the same generator behind
``AgentGenerator`` with the single-turn environment (what every run now samples through), alternating in one
process on the same prompts and seeds, so machine load hits both alike.

    .venv/bin/python benchmarks/agent_overhead.py --rounds 10

A step's sampling (32 prompts x 8 samples, 48 new tokens at temperature 1) on the arithmetic world's model
(random weights: the cost per token is the same); prints each side's median and their ratio, and checks that
both sides sampled the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from reasonrl.agent import AgentGenerator, SingleTurn
    from reasonrl.config import ArchConfig
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tasks import arith
    from reasonrl.tiny import build_model, build_tokenizer

    torch.set_num_threads(2)
    tok = build_tokenizer(arith.CHARSET, arith.TAGS)
    model = build_model(OmegaConf.structured(ArchConfig()), tok, seed=0).eval()  # untrained: same cost per token
    prompts = [tok(arith.render_prompt(p), add_special_tokens=False)["input_ids"] for p in arith.heldout(args.prompts)]
    direct = HFGenerator(model, tok)
    through = AgentGenerator(direct, SingleTurn(), tok)
    times: dict[str, list[float]] = {"direct": [], "agent": []}
    for r in range(args.rounds):
        order = [("direct", direct), ("agent", through)] if r % 2 == 0 else [("agent", through), ("direct", direct)]
        outs = {}
        for name, gen in order:
            t = time.perf_counter()
            outs[name] = gen.generate(prompts, args.samples, Sampling(temperature=1.0, max_new_tokens=48, seed=r))
            times[name].append(time.perf_counter() - t)
        assert [x.completion_ids for x in outs["direct"]] == [x.completion_ids for x in outs["agent"]]
        print(f"round {r}: direct {times['direct'][-1]:.3f} s, agent {times['agent'][-1]:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / d for a, d in zip(times["agent"], times["direct"])]
    print(f"\n{args.prompts} prompts x {args.samples} samples x 48 tokens, {args.rounds} rounds (same samples both sides)")
    print(f"median direct {med['direct']:.3f} s, through the agent loop {med['agent']:.3f} s")
    print(f"agent/direct: ratio of medians {med['agent'] / med['direct']:.3f}, median of per-round ratios "
          f"{statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
