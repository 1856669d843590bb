"""GRPO training: sample groups, verify, compute advantages, update, sync, log.

Run::

    reasonrl-train                                  # experiment=r1_zero_arith defaults
    reasonrl-train experiment=sft_cold_start_arith  # SFT on demonstrations, then RL
    reasonrl-train max_steps=20 seed=1 hydra.run.dir=runs/try1

The loop reads top to bottom in :func:`main`; helpers take explicit
arguments. One step: render B prompts, generate G completions each, score them
with the verifiers, group-normalise the rewards, pack the rollouts, run
forward/backward over micro-batches with the clipped surrogate, take an
optimizer step, sync the weights into the generator, log one metrics row; every
``eval.every`` steps evaluate on the held-out set and checkpoint.

Algorithm variants (``algorithm=grpo|dr_grpo|dapo``) are small functions in
:mod:`reasonrl.grpo` chosen by name: loss aggregation, advantage scaling,
clip-higher and dual clip, KL to a frozen reference (loaded only when
``kl_coef`` > 0), entropy bonus, several updates per batch, dynamic sampling,
overlong masking and the soft overlong penalty.

It does not run more than one process or shard the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("reasonrl.train")


def open_run_dir(cfg) -> Path:
    """The run directory (``run_dir`` or Hydra's output dir), created, announced, with config.yaml written."""
    from omegaconf import OmegaConf

    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[reasonrl] run directory: {run_dir}", flush=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def _problems(cfg, task, seed: int, verifiers):
    """(training problem iterator, held-out list) for the task, from files when configured.

    File rows are validated (a malformed row names its file and index) and rows
    whose gold answer a verifier cannot parse are reported once and skipped.
    """
    from reasonrl.data import load_jsonl, validate_rows
    from reasonrl.verifiers.scoring import check_golds

    def load(path):
        rows = validate_rows(load_jsonl(path), task.REQUIRED_FIELDS, path, cfg.task.skip_bad_rows)
        rows = check_golds([task.from_row(r) for r in rows], verifiers, path)
        if not rows:
            raise ValueError(f"{path}: no usable rows")
        return rows

    for key in ("eval_file", "train_file"):
        if not cfg.task[key] and not hasattr(task, "heldout"):
            raise ValueError(f"task {cfg.task.name!r} reads its problems from files: set task.{key}")
    if cfg.task.eval_file:
        heldout = load(cfg.task.eval_file)[: cfg.task.heldout_size]
    else:
        heldout = check_golds(task.heldout(cfg.task.heldout_size, cfg.task.n_terms, cfg.task.digits), verifiers, "held-out set")
    if not cfg.task.train_file:
        return task.train_stream(seed, cfg.task.n_terms, cfg.task.digits, cfg.task.heldout_size), heldout
    rows = load(cfg.task.train_file)
    rng = random.Random(seed)

    def cycle():
        while True:
            order = list(rows)
            rng.shuffle(order)
            yield from order

    return cycle(), heldout


def sample_groups(generator, tokenizer, stream, render, verifiers, pool, *, B: int, G: int, sampling, seed: int,
                  mask_statuses, dynamic: bool, max_redraws: int, overlong_buffer: int, overlong_coef: float):
    """Draw B prompts, generate G completions each, score them; return B groups.

    With ``dynamic`` (DAPO's dynamic sampling), groups whose G rewards are all equal
    are dropped and new prompts drawn, at most ``max_redraws`` extra draws; if the
    cap is hit the batch is filled with the dropped groups. With ``overlong_buffer``
    > 0, the soft overlong penalty (times ``overlong_coef``) is added to rewards.
    Returns (problems, rollouts, scored, rewards (N,), stats).
    """
    import dataclasses

    import torch

    from reasonrl import grpo
    from reasonrl.verifiers.scoring import Scored, score

    kept: list[tuple] = []  # (problem, rollouts, verdict rows, masked, rewards) per group
    spare: list[tuple] = []
    stats = {"generate_s": 0.0, "verify_s": 0.0, "dropped": 0, "redraws": 0, "zero_std_frac": 0.0, "overlong_penalty_mean": 0.0}
    for draw in range(max_redraws + 1 if dynamic else 1):
        problems = [next(stream) for _ in range(B)]
        prompt_ids = [tokenizer(render(p), add_special_tokens=False)["input_ids"] for p in problems]
        t = time.perf_counter()
        rollouts = generator.generate(prompt_ids, G, dataclasses.replace(sampling, seed=seed + 7919 * draw))
        stats["generate_s"] += time.perf_counter() - t
        t = time.perf_counter()
        scored = score([problems[r.prompt_index] for r in rollouts], [r.text for r in rollouts], verifiers, mask_statuses, pool)
        stats["verify_s"] += time.perf_counter() - t
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)  # (B*G,)
        if overlong_buffer > 0:
            lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
            penalty = overlong_coef * grpo.overlong_penalty(lengths, sampling.max_new_tokens, overlong_buffer)
            rewards = rewards + penalty
            if draw == 0:
                stats["overlong_penalty_mean"] = float(penalty.mean())
        has_signal = grpo.keep_groups(rewards, G)  # (B,)
        if draw == 0:
            stats["zero_std_frac"] = float((~has_signal).float().mean())
        for b in range(B):
            sl = slice(b * G, (b + 1) * G)
            group = (problems[b], rollouts[sl], scored.verdicts[sl], scored.masked[sl], rewards[sl])
            (kept if has_signal[b] or not dynamic else spare).append(group)
        if len(kept) >= B:
            break
        stats["redraws"] += 1
    stats["redraws"] = min(stats["redraws"], max_redraws) if dynamic else 0
    stats["dropped"] = len(spare)
    kept = (kept + spare)[:B]  # cap reached: fill with signal-free groups (they get zero advantage)
    problems = [g[0] for g in kept]
    rollouts = []
    for i, g in enumerate(kept):
        rollouts.extend(dataclasses.replace(r, prompt_index=i) for r in g[1])
    verdicts = [v for g in kept for v in g[2]]
    masked = [m for g in kept for m in g[3]]
    rewards = torch.cat([g[4] for g in kept])
    return problems, rollouts, Scored(rewards.tolist(), verdicts, masked), rewards, stats


def update_policy(model, opt, sched, rollouts, rewards, masked, *, group_size: int, alg, pad_id: int, ref_model, use_tis: bool,
                  temperature: float, micro_batch_size: int, max_len: int, grad_clip: float, step: int) -> dict[str, float]:
    """Steps 5-8 of a GRPO step on one sampled batch, in place on ``model`` and ``opt``.

    rollouts: N = B*G rollouts, prompt-major; rewards: (N,); masked: N flags (timeout/error verdicts),
    which leave the loss, the token and sequence counts, and their group's baseline. Returns the
    step's training statistics (means over completion tokens; loss, entropy, KL and logprob gaps from
    the first update, the sampled batch under the policy that sampled it; clip fraction over all updates).
    """
    import torch

    from reasonrl import grpo
    from reasonrl.data import pack

    device = next(model.parameters()).device
    keep_flags = [not (m or (alg.mask_truncated and r.finish_reason == "length")) for m, r in zip(masked, rollouts)]
    valid = torch.tensor([not m for m in masked])
    adv = grpo.group_advantages(rewards, group_size, alg.adv_scale, valid=valid).to(device)  # (N,)
    batch = pack(rollouts, pad_id).to(device)
    keep = torch.tensor(keep_flags, dtype=torch.float32, device=device).unsqueeze(1)  # (N, 1)
    loss_mask = batch.completion_mask * keep  # (N, L-1)
    total_tokens, total_seqs = int(loss_mask.sum().item()), int(keep.sum().item())

    model.train()
    sums = dict.fromkeys(("loss", "entropy", "clip", "kl", "ref_kl", "diff", "tis", "tis_capped"), 0.0)
    diff_max = 0.0
    mb = micro_batch_size
    for update in range(alg.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        for s in range(0, len(rollouts), mb):
            sl = slice(s, s + mb)
            m = batch.completion_mask[sl]
            logits = model(input_ids=batch.input_ids[sl], attention_mask=batch.attention_mask[sl]).logits[:, :-1]
            logits = logits / temperature  # (n, L-1, V)
            logp = grpo.token_logprobs(logits, batch.input_ids[sl, 1:])  # (n, L-1)
            # one update: the policy that sampled is this one; several: the stored sampling-time logprobs
            old_logp = logp.detach() if alg.updates_per_batch == 1 else batch.sampler_logprobs[sl]
            per_tok, clipped = grpo.clipped_surrogate(logp, old_logp, adv[sl], alg.clip_eps_low, alg.clip_eps_high,
                                                      alg.dual_clip)
            if use_tis and alg.updates_per_batch == 1:
                w = grpo.truncated_is_weights(old_logp, batch.sampler_logprobs[sl], alg.tis_cap)  # (n, L-1)
                per_tok = per_tok * w
                sums["tis"] += float((w * m).sum())
                sums["tis_capped"] += float(((w >= alg.tis_cap) * m).sum())
            if ref_model is not None:
                with torch.no_grad():
                    ref_logits = ref_model(input_ids=batch.input_ids[sl], attention_mask=batch.attention_mask[sl]).logits
                    ref_logp = grpo.token_logprobs(ref_logits[:, :-1] / temperature, batch.input_ids[sl, 1:])
                ref_kl = grpo.kl_estimate(logp, ref_logp, alg.kl_estimator)  # (n, L-1)
                per_tok = per_tok + alg.kl_coef * ref_kl
                if update == 0:
                    sums["ref_kl"] += float((ref_kl.detach() * m).sum())
            ent = grpo.entropy_from_logits(logits) if alg.entropy_coef > 0 else None
            if ent is not None:
                per_tok = per_tok - alg.entropy_coef * ent
            loss = grpo.aggregate(alg.loss_agg, per_tok, loss_mask[sl], total_tokens=total_tokens,
                                  total_seqs=total_seqs, max_len=max_len)
            loss.backward()
            sums["clip"] += float((clipped.float() * m).sum())
            if update == 0:  # statistics of the sampled batch under the policy that sampled it
                with torch.no_grad():
                    ent = grpo.entropy_from_logits(logits) if ent is None else ent.detach()
                    diff = (logp.detach() - batch.sampler_logprobs[sl]).abs() * m
                    sums["loss"] += loss.item()
                    sums["entropy"] += float((ent * m).sum())
                    sums["kl"] += float((grpo.kl_estimate(batch.sampler_logprobs[sl], logp.detach(), "k3") * m).sum())
                    sums["diff"] += float(diff.sum())
                    diff_max = max(diff_max, float(diff.max()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        if not math.isfinite(sums["loss"]) or not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite loss {sums['loss']} or grad norm {grad_norm} at step {step}")
        opt.step()
        sched.step()
    n_comp = max(float(batch.completion_mask.sum()), 1.0)
    return {
        "loss": sums["loss"],
        "kl": (sums["ref_kl"] if ref_model is not None else sums["kl"]) / n_comp,
        "entropy": sums["entropy"] / n_comp,
        "clip_frac": sums["clip"] / (n_comp * alg.updates_per_batch),
        "grad_norm": grad_norm,
        "logprob_diff_mean": sums["diff"] / n_comp,
        "logprob_diff_max": diff_max,
        "tis_weight_mean": sums["tis"] / n_comp,
        "tis_capped_frac": sums["tis_capped"] / n_comp,
        "masked_frac": 1.0 - total_seqs / len(rollouts),
        "completion_tokens": float(batch.completion_mask.sum()),
    }


def main(cfg) -> dict[str, Any]:
    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from reasonrl import grpo
    from reasonrl.build import build_generator, build_verifiers
    from reasonrl.data import pack
    from reasonrl.evals.harness import evaluate_heldout, load_eval_benchmarks
    from reasonrl.metrics import RunLogger, cot_lengths, mean
    from reasonrl.policy import load_policy, make_optimizer, save_checkpoint
    from reasonrl.rollout import Sampling
    from reasonrl.tasks import get_task
    from reasonrl.verifiers.scoring import summarize

    t_start = time.time()
    run_dir = open_run_dir(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    # ---- policy, task, verifiers, generator
    model, tokenizer, model_path = load_policy(cfg.model, progress=cfg.logging.progress)
    task = get_task(cfg.task.name)
    render = lambda p: task.render_prompt(p, cfg.task.template, tokenizer)  # noqa: E731
    verifiers = build_verifiers(cfg.verifier)
    if cfg.task.answer_verifier not in verifiers:
        raise ValueError(f"task.answer_verifier={cfg.task.answer_verifier!r} is not among the configured verifiers {sorted(verifiers)}")
    answer_verifier = verifiers[cfg.task.answer_verifier][0]
    pool = None
    if cfg.verify.workers > 0:
        from reasonrl.verifiers.pool import ScoringPool

        pool = ScoringPool({k: v for k, (v, _) in verifiers.items()}, cfg.verify.workers, cfg.verify.timeout_s)
    stream, heldout = _problems(cfg, task, cfg.seed, verifiers)
    logger = RunLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
                       config=OmegaConf.to_container(cfg, resolve=True))

    B, G, alg = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.algorithm

    # ---- optional cold start: SFT on demonstrations, then RL from there
    before_sft = None
    if cfg.cold_start.enabled:
        from reasonrl.rollout import HFGenerator
        from reasonrl.sft import demonstration_accuracy, demonstration_pairs, train_sft

        before_sft = evaluate_heldout(HFGenerator(model, tokenizer), tokenizer, heldout, render, answer_verifier, cfg, cfg.seed)
        before_sft["demonstration_accuracy"] = demonstration_accuracy(cfg.cold_start, task, cfg.seed)
        print("[reasonrl] before SFT: " + ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in before_sft.items() if v is not None), flush=True)
        pairs = demonstration_pairs(cfg.cold_start, task, cfg.seed)
        train_sft(model, tokenizer, pairs, steps=cfg.cold_start.steps, batch_size=cfg.cold_start.batch_size,
                  lr=cfg.cold_start.lr, warmup_steps=cfg.cold_start.warmup_steps, min_lr_ratio=cfg.cold_start.min_lr_ratio,
                  weight_decay=cfg.cold_start.weight_decay, betas=tuple(cfg.cold_start.betas),
                  grad_clip=cfg.cold_start.grad_clip, seed=cfg.seed, desc="cold-start sft", progress=cfg.logging.progress)
        save_checkpoint(model, tokenizer, run_dir / "checkpoints" / "sft")

    generator = build_generator(cfg.generator, model, tokenizer, model_path)
    if alg.tis not in ("auto", "on", "off"):
        raise ValueError(f"algorithm.tis must be auto, on or off, not {alg.tis!r}")
    use_tis = alg.tis == "on" or (alg.tis == "auto" and not getattr(generator, "exact_logprobs", False))
    opt, sched = make_optimizer(model, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
                                warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.max_steps * alg.updates_per_batch,
                                schedule=cfg.optim.schedule, min_lr_ratio=cfg.optim.min_lr_ratio)
    temperature = cfg.rollout.temperature
    sampling_temp = temperature if temperature > 0 else 1.0
    device = next(model.parameters()).device
    ref_model = None  # the frozen initial policy, only when a KL penalty asks for it
    if alg.kl_coef > 0:
        import copy

        ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    # ---- step 0 evaluation
    evals: dict[int, dict[str, float]] = {}
    benchmarks = load_eval_benchmarks(cfg, tokenizer)
    evals[0] = evaluate_heldout(generator, tokenizer, heldout, render, answer_verifier, cfg, cfg.seed, benchmarks)
    logger.log({"step": 0, **evals[0]})
    print("[reasonrl] step 0: " + ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in evals[0].items()), flush=True)

    bar = tqdm(total=cfg.max_steps, desc="grpo", disable=not cfg.logging.progress, dynamic_ncols=True, mininterval=1.0)
    for step in range(1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        # 1-4. sample B problems, generate G completions each, verify; dynamic sampling redraws
        # prompts whose G rewards are all equal (no signal) until B groups carry one, up to a cap
        problems, rollouts, scored, rewards, draw = sample_groups(
            generator, tokenizer, stream, render, verifiers, pool, B=B, G=G,
            sampling=Sampling(temperature=temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens),
            seed=cfg.seed * 1_000_003 + step, mask_statuses=alg.mask_statuses, dynamic=alg.dynamic_sampling,
            max_redraws=alg.max_redraws, overlong_buffer=alg.overlong_buffer, overlong_coef=alg.overlong_coef,
        )
        generator.sleep()  # GPU engines release memory while the policy trains
        generate_s, verify_s = draw["generate_s"], draw["verify_s"]

        # 5-8. group advantages, pack, forward/backward over micro-batches, optimizer step(s)
        t = time.perf_counter()
        upd = update_policy(model, opt, sched, rollouts, rewards, scored.masked, group_size=G, alg=alg, pad_id=tokenizer.pad_token_id,
                            ref_model=ref_model, use_tis=use_tis, temperature=sampling_temp,
                            micro_batch_size=cfg.rollout.micro_batch_size, max_len=cfg.rollout.max_new_tokens,
                            grad_clip=cfg.optim.grad_clip, step=step)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        generator.wake_up()
        generator.sync_weights(model)
        sync_s = time.perf_counter() - t

        # 9. one metrics row
        lens = [len(r.completion_ids) for r in rollouts]
        think, answer = cot_lengths([r.text for r in rollouts], tokenizer, cfg.task.think_in_prompt)
        ans = cfg.task.answer_verifier
        correct = [v[ans] is not None and v[ans].status == "correct" for v in scored.verdicts]
        row: dict[str, Any] = {
            "step": step,
            "time/step_s": time.perf_counter() - t0,
            "time/generate_s": generate_s,
            "time/verify_s": verify_s,
            "time/train_s": train_s,
            "time/sync_s": sync_s,
            **summarize(scored, list(verifiers)),
            "rollout/len_mean": mean(lens),
            "rollout/len_max": max(lens),
            "rollout/clipped_frac": mean(r.finish_reason == "length" for r in rollouts),
            "rollout/tokens_per_s": sum(lens) / max(generate_s, 1e-9),
            "rollout/think_len_mean": mean(think),
            "rollout/answer_len_mean": mean(answer),
            "rollout/len_correct_mean": mean(n for n, c in zip(lens, correct) if c),
            "rollout/len_wrong_mean": mean(n for n, c in zip(lens, correct) if not c),
            "train/loss": upd["loss"],
            "train/kl": upd["kl"],
            "train/entropy": upd["entropy"],
            "train/clip_frac": upd["clip_frac"],
            "train/grad_norm": upd["grad_norm"],
            "train/lr": sched.get_last_lr()[0],
            "sampling/logprob_diff_mean": upd["logprob_diff_mean"],
            "sampling/logprob_diff_max": upd["logprob_diff_max"],
            "group/zero_std_frac": draw["zero_std_frac"],
            "group/dropped": draw["dropped"],
            "group/redraws": draw["redraws"],
            "reward/overlong_penalty_mean": draw["overlong_penalty_mean"],
            "train/masked_frac": upd["masked_frac"],
            "verify/workers_replaced": pool.replaced if pool is not None else 0,
        }
        if device.type == "cuda":
            row["gpu/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if use_tis:
            row["sampling/tis_weight_mean"] = upd["tis_weight_mean"]
            row["sampling/tis_capped_frac"] = upd["tis_capped_frac"]
        if cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == cfg.max_steps):
            evals[step] = evaluate_heldout(generator, tokenizer, heldout, render, answer_verifier, cfg, cfg.seed, benchmarks)
            row.update(evals[step])
        logger.log(row)
        logger.log_samples([
            {"step": step, "prompt": render(problems[r.prompt_index]), "completion": r.text, "reward": scored.rewards[i],
             "finish_reason": r.finish_reason,
             "verdicts": {k: (None if v is None else {"score": v.score, "status": v.status, "info": v.info})
                          for k, v in scored.verdicts[i].items()}}
            for i, r in enumerate(rollouts[: cfg.logging.samples_per_step])
        ])
        if cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
            save_checkpoint(model, tokenizer, run_dir / "checkpoints" / f"step_{step:06d}")
        bar.set_postfix(reward=f"{row['reward/mean']:.2f}", think=f"{row['rollout/think_len_mean']:.1f}",
                        **({"acc": f"{evals[step][f'eval/{cfg.task.name}/accuracy']:.2f}"} if step in evals else {}))
        bar.update(1)
    bar.close()
    logger.close()
    if pool is not None:
        pool.close()

    # ---- final checkpoint, summary, plot, table
    final_step = cfg.max_steps
    if cfg.max_steps not in evals:
        evals[final_step] = evaluate_heldout(generator, tokenizer, heldout, render, answer_verifier, cfg, cfg.seed,
                                             benchmarks)
    if cfg.checkpoint.final:
        save_checkpoint(model, tokenizer, run_dir / "checkpoints" / "final")
    summary = {
        "run_dir": str(run_dir),
        "experiment": cfg.experiment_name,
        "seed": cfg.seed,
        "steps": cfg.max_steps,
        "base_model": str(model_path),
        "wall_s": round(time.time() - t_start, 1),
        "start": evals[0],
        "end": evals[final_step],
    }
    if before_sft is not None:
        summary["before_sft"] = before_sft
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.logging.plot:
        from reasonrl.plots import plot_training

        plot_training(run_dir / "metrics.jsonl", run_dir / "curves.png", cfg.task.name)
    print(_table(evals[0], evals[final_step], final_step, cfg.task.name), flush=True)
    print(f"[reasonrl] run directory: {run_dir}", flush=True)
    return summary


def _table(start: dict, end: dict, final_step: int, name: str) -> str:
    rows = [
        ("held-out accuracy (greedy)", f"eval/{name}/accuracy", "{:.1%}"),
        ("held-out accuracy (sampled)", f"eval/{name}/accuracy_sampled", "{:.1%}"),
        ("think length, tokens (greedy)", f"eval/{name}/think_len_mean", "{:.1f}"),
        ("think length, tokens (sampled)", f"eval/{name}/think_len_mean_sampled", "{:.1f}"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':{w}}  {'step 0':>10}  {f'step {final_step}':>10}"]
    for label, key, fmt in rows:
        if key in start:
            lines.append(f"{label:{w}}  {fmt.format(start[key]):>10}  {fmt.format(end[key]):>10}")
    return "\n".join(lines)


def cli() -> None:
    from reasonrl.config import run_entry_point

    run_entry_point(main, "train")


if __name__ == "__main__":
    sys.exit(cli())
