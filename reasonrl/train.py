"""GRPO training: the trainer object and the ``reasonrl-train`` entry point.

Run::

    reasonrl-train                                  # the schema's defaults (what experiment=r1_zero_arith also runs)
    reasonrl-train experiment=sft_cold_start_arith  # SFT on demonstrations, then RL
    reasonrl-train max_steps=20 seed=1 hydra.run.dir=runs/try1

:class:`GRPOTrainer` holds a run's whole state on one object with a
lifecycle: ``setup`` (policy, task, verifiers, generator, optimizer; the
optional SFT cold start), ``step`` (one GRPO step, top to bottom in one
method), ``evaluate``, ``save``, ``state_dict``/``load_state_dict`` and
``close``; ``fit`` runs the loop. One step: sample B groups of G completions
and score them (:mod:`reasonrl.collect`), update the policy
(:mod:`reasonrl.update`), sync the weights into the generator, return one
metrics row. Algorithm variants are chosen by name (:mod:`reasonrl.grpo`).

Under ``torchrun`` the same code runs on every rank (:mod:`reasonrl.runtime`):
the policy (and the KL reference) are sharded with FSDP2
(:mod:`reasonrl.sharding`), each rank samples and scores its share of the
step's groups, the update normalises by global counts, metrics are computed
from every rank's rollouts, evaluation is split across the ranks, and only
the main process writes the run directory. Checkpoints are sharded
(``torch.distributed.checkpoint``) and load at any number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from reasonrl import checkpoint as ckpt
from reasonrl import lora
from reasonrl.actor import AsyncRollouts
from reasonrl.agent import build_agent, turn_row
from reasonrl.build import build_generator, build_verifiers, target_of
from reasonrl.collect import GroupPlan, collect_groups
from reasonrl.config import check_train_config
from reasonrl.evals.harness import eval_pool_verifiers, load_benchmark_subsets, training_eval
from reasonrl.metrics import RunLogger, rollout_metrics
from reasonrl.models import load_policy
from reasonrl.policy import (
    check_master_weights,
    compute_dtype,
    enable_gradient_checkpointing,
    make_optimizer,
    native_bf16,
    save_checkpoint,
    torch_dtype,
)
from reasonrl.rollout import HFGenerator, RolloutBatch
from reasonrl.runs import Interrupted, Run, RunError, RunRefused, announce, one_line_errors, open_run, write_summary
from reasonrl.runtime import Runtime, init_runtime
from reasonrl.sharding import full_state_dict, full_tensors, is_sharded, shard_model
from reasonrl.tasks import check_overlap, get_task, problem_source
from reasonrl.update import UpdateSettings, UpdateStats, update_policy
from reasonrl.verifiers.scoring import Scored, check_failures, summarize

log = logging.getLogger("reasonrl.train")

STEP_SEED_STRIDE = 1_000_003  # step t of a run with seed s samples with seed s * stride + t


class GRPOTrainer:
    """One GRPO run: its state, and the lifecycle setup -> (step, evaluate, save)* -> close."""

    def __init__(self, cfg, runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or init_runtime(cfg.model.get("device", "auto"))
        self.steps_done = 0  # optimizer steps taken (the policy version)
        self.evals: dict[int, dict[str, float]] = {}
        self.before_sft: dict[str, Any] | None = None
        self.pool = self.logger = self.last_batch = self.run = self.found = self._bar = None
        self.rollouts: AsyncRollouts | None = None  # the actor and its queue (rollout.max_staleness > 0)
        self.next_batch = 1  # the index of the next batch to sample (its seed), async runs
        self.dropped = 0  # batches dropped as too stale over the run (rollout.stale=drop)
        self._threads_before = 0  # torch threads before the learner gave the actor its share (CPU, async)
        self.resumed_from: Path | None = None
        self.last_checkpoint_time = time.time()

    # ------------------------------------------------------------------ setup
    def setup(self) -> "GRPOTrainer":
        cfg, alg = self.cfg, self.cfg.algorithm
        check_train_config(cfg)
        rt = self.runtime
        rt.share(cfg.rollout.prompts_per_step, "prompts per step (rollout.prompts_per_step)")  # checked up front
        if cfg.cold_start.enabled and rt.distributed:
            raise ValueError(
                "cold_start under torchrun is not supported: run reasonrl-sft first and start RL from its output "
                "(model.path=<its checkpoints/final>)"
            )
        self.t_start = time.time()
        self.run = self._claim_run_dir()  # nothing is written before the directory is known to be free for this run
        self.run_dir = self.run.path
        self.checkpoint_root = self.run_dir / "checkpoints"
        resume = self._resume_state()  # a changed config is refused here, before config.yaml is written
        self.run.start(cfg, fresh=resume is None)
        random.seed(cfg.seed + rt.rank)
        torch.manual_seed(cfg.seed + rt.rank)
        check_master_weights(cfg.model)
        self.model, self.tokenizer, self.model_path = load_policy(
            cfg.model, progress=cfg.logging.progress, device=self.runtime.device, seed=cfg.seed
        )
        self.lora_base = str(self.model_path)  # what a LoRA adapter applies to (after a cold start: its result)
        if lora.is_lora(self.model):
            trained, total = lora.trainable_count(self.model)
            rt.print(f"[reasonrl] LoRA: r={cfg.model.lora.r}, alpha={lora.alpha_of(cfg.model.lora):g}, "
                     f"{len(lora.scalings(self.model))} adapted modules; {trained:,} of {total:,} parameters train "
                     f"({100 * trained / total:.2f}%)")  # fmt: skip
        self.compute_dtype = compute_dtype(cfg.model.compute_dtype, self.runtime.device)
        why = f"auto: {'native' if native_bf16(rt.device) else 'no native'} bfloat16 on {rt.device}"
        rt.print(
            f"[reasonrl] compute dtype: {str(self.compute_dtype).removeprefix('torch.')} (model.compute_dtype="
            f"{cfg.model.compute_dtype if cfg.model.compute_dtype != 'auto' else why}); weights {cfg.model.dtype}"
        )
        if cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        remote = cfg.rollout.max_staleness > 0 and cfg.rollout.actor == "process"
        self._setup_checks(pool=not remote)  # an actor process scores in its own pool
        if hasattr(self.stream, "rows"):  # problems from data: none of them may be an evaluation problem
            evaluations = {"held-out set": self.heldout, **{k: v[0] for k, v in self.benchmarks.items()}}
            check_overlap(self.stream.rows, evaluations, cfg.task.allow_overlap)
        from omegaconf import OmegaConf

        if rt.is_main:  # the one writer of the run directory
            self.logger = RunLogger(
                self.run_dir,
                tensorboard=cfg.logging.tensorboard,
                wandb_project=cfg.logging.wandb_project,
                config=OmegaConf.to_container(cfg, resolve=True),
                resume=None if resume is None else resume["log"],
            )
        if cfg.cold_start.enabled and resume is None:  # a resumed run's weights are past the cold start already
            self._cold_start()
        if cfg.cold_start.enabled:  # a LoRA adapter now applies to the cold start's result (resumed runs too)
            self.lora_base = str(self.run_dir / "checkpoints" / "sft")
        # the frozen initial policy, only when a KL penalty asks for it; a LoRA policy's is its own base (adapters off)
        self.ref_model = None
        if alg.kl_coef > 0 and lora.is_lora(self.model):
            self.ref_model = self.model
        elif alg.kl_coef > 0:
            ref_dtype = self.compute_dtype if cfg.model.ref_dtype == "auto" else torch_dtype(cfg.model.ref_dtype)
            self.ref_model = copy.deepcopy(self.model).to(ref_dtype).eval().requires_grad_(False)
            shard_model(self.ref_model, rt, self.compute_dtype, cfg.model.fsdp)
        asynchronous = cfg.rollout.max_staleness > 0
        colocated = getattr(target_of(cfg.generator, "generator"), "samples_from_policy", False)
        gen_model = self.model
        if asynchronous and colocated and not remote:
            gen_model = copy.deepcopy(self.model).eval().requires_grad_(False)  # the actor's own copy, whole
        shard_model(self.model, rt, self.compute_dtype, cfg.model.fsdp)  # before the optimizer sees the parameters
        # an actor thread's collectives run on their own process group, never interleaved with the learner's
        self.actor_rt = rt.own_group(cfg.rollout.sync_timeout_s) if asynchronous and not remote else rt
        self.generator = None  # the generator steps 1-4 sample with (None: it lives in the actor process)
        if not remote:
            engine = build_generator(cfg.generator, gen_model, self.tokenizer, self.model_path, self.compute_dtype,
                                     lora=self._lora_sync())  # fmt: skip
            self.generator = build_agent(cfg.env, engine, self.tokenizer, self.model, self.actor_rt)  # turns with a tool
        if self._lora_sync() is not None:
            rt.print(f"[reasonrl] LoRA into the generator: {self._lora_sync_reason()}")
        # who evaluates: the learner with a generator on the policy itself where one exists (synchronous: the
        # generator; asynchronous: a colocated one, so the actor never waits for it), else the actor between batches
        self.eval_generator = None if asynchronous else self.generator
        if asynchronous and colocated:
            own = build_generator(cfg.generator, self.model, self.tokenizer, self.model_path, self.compute_dtype,
                                  lora=self._lora_sync())  # fmt: skip
            self.eval_generator = build_agent(cfg.env, own, self.tokenizer, self.model, rt)
        # asynchronous: the sampler is never the trained module itself, so auto corrects the gap
        exact = getattr(self.generator, "exact_logprobs", False) and not asynchronous
        use_tis = alg.tis == "on" or (alg.tis == "auto" and not exact)
        self.plan = GroupPlan.from_config(cfg)
        self.update_settings = UpdateSettings.from_config(cfg, self.tokenizer.pad_token_id, use_tis, self.compute_dtype)
        self.opt, self.sched = make_optimizer(self.model, cfg.optim, total_steps=cfg.max_steps * alg.updates_per_batch)
        if resume is not None:
            self.load_state_dict(resume)
            self.runtime.print(f"[reasonrl] resumed from {self.resumed_from} (step {self.steps_done})")
        if asynchronous:
            self._start_actor_side()
        return self

    def _start_actor_side(self) -> None:
        """The actor (not yet running: its thread starts at the first step) with the current weights published
        as this version; on a CPU its torch threads and the learner's split the process's share."""
        ro, rt = self.cfg.rollout, self.runtime
        if rt.distributed and ro.actor == "process":
            raise ValueError("rollout.actor=process under torchrun is not built yet: use rollout.actor=thread")
        if rt.distributed and not getattr(target_of(self.cfg.generator, "generator"), "samples_from_policy", False):
            raise ValueError("rollout.max_staleness > 0 under torchrun needs generator=hf: a vLLM engine launched "
                             "with torchrun holds collectives on the learner's process group")  # fmt: skip
        threads, split = 0, ""
        if rt.device.type == "cpu":
            have = self._threads_before = torch.get_num_threads()
            threads = ro.actor_threads or max(1, have // 2)
            torch.set_num_threads(max(1, have - threads))
            if torch.get_num_threads() == max(1, have - threads):
                split = f"; torch threads: actor {threads}, learner {torch.get_num_threads()}"
            else:  # vLLM's CPU worker replaces torch.set_num_threads with a warning (it binds its own threads)
                threads, self._threads_before = 0, 0
                split = f"; torch threads cannot be split here (set_num_threads is disabled): both sides run {have}"
        rt.print(f"[reasonrl] asynchronous rollouts: the actor ({ro.actor}) samples up to {ro.max_staleness} "
                 f"version(s) ahead (stale={ro.stale}){split}")  # fmt: skip
        if ro.actor == "process":
            from omegaconf import OmegaConf

            from reasonrl.remote import RemoteRollouts

            start = {"stream": self.stream.state_dict(), "index": self.next_batch, "threads": threads}
            cfg = OmegaConf.to_container(self.cfg, resolve=True)
            self.rollouts = RemoteRollouts(actor_process_main, cfg, start, ro.sync_timeout_s, ro.actor_address)
            if self.rollouts.proc is not None:
                rt.print(f"[reasonrl] actor process: pid {self.rollouts.proc.pid}")
            self.rollouts.publish(self.steps_done, self._weights(first=True))
            return
        self.rollouts = AsyncRollouts(
            self._collect,
            lambda version, tensors: self.generator.load_weights(tensors.items()),
            self.stream,
            max_staleness=ro.max_staleness,
            stale=ro.stale,
            timeout_s=ro.sync_timeout_s,
            threads=threads,
            first_index=self.next_batch,
            loaded_version=self.steps_done,
            agree=self.actor_rt.all,
        )
        self.rollouts.publish(self.steps_done, self._weights(first=True))

    def _weights(self, first: bool = False) -> dict[str, torch.Tensor]:
        """The policy's whole tensors, copied (what a version publishes; every rank gathers its shards). A LoRA
        policy publishes its adapter only, after a first version that carries the base too, or (model.lora.sync
        resolved to merged, for an engine) the merged model."""
        named = full_tensors(self.model)
        if lora.is_lora(self.model):
            sync = self._lora_sync()["sync"]
            if sync == "merged":
                named = lora.merged_tensors(named, lora.scalings(self.model))
            elif not first:
                named = lora.adapter_tensors(named)
        return {name: t.detach().clone() for name, t in named}

    def _lora_sync_reason(self) -> str:
        """The LoRA sync chosen, and why, in words (the run log says it once)."""
        lcfg = self.cfg.model.lora
        if getattr(target_of(self.cfg.generator, "generator"), "samples_from_policy", False):
            if self.cfg.rollout.max_staleness == 0:
                return "none needed (the generator samples from the policy module, adapters included)"
            return "adapter (the actor's copy of the policy loads each version's adapter)"
        if self._lora_sync()["sync"] == "adapter":
            return "adapter (only the adapter's tensors move each step; the engine loads them as a LoRA adapter)"
        why = "model.lora.sync=merged" if lcfg.sync == "merged" else (
            f"model.lora.modules_to_save={list(lcfg.modules_to_save)}: the engine's LoRA path loads LoRA matrices only"
        )  # fmt: skip
        return f"merged (base + B A x alpha / r streamed into the engine's plain model each step; {why})"

    def _lora_sync(self) -> dict[str, Any] | None:
        """What a generator needs to know of a LoRA policy (None: not one): its settings, the resolved sync
        (adapter or merged, see reasonrl.lora.resolve_sync) and the adapter's peft config."""
        if not lora.is_lora(self.model):
            return None
        engine = not getattr(target_of(self.cfg.generator, "generator"), "samples_from_policy", False)
        sync = lora.resolve_sync(self.cfg.model.lora, engine)
        return {"sync": sync, "config": self.model.reasonrl_lora, "base": self.lora_base}

    def _collect(self, index: int, version: int, runtime: Runtime | None = None) -> RolloutBatch:
        """Steps 1-4 for the index-th batch: B problems, G completions each, scored, stamped with ``version``."""
        return collect_groups(
            self.generator,
            self.tokenizer,
            self.stream,
            self.render,
            self.verifiers,
            self.pool,
            self.plan,
            seed=self.cfg.seed * STEP_SEED_STRIDE + index,
            policy_version=version,
            runtime=runtime or self.actor_rt,
        )

    def _setup_checks(self, pool: bool = True) -> None:
        """The task, the verifiers, the problem stream and held-out set, the benchmark subsets, and (``pool``) the
        killable scoring workers."""
        cfg, rt = self.cfg, self.runtime
        self.task = get_task(cfg.task)
        self.verifiers = build_verifiers(cfg.verifier)
        if cfg.task.answer_verifier not in self.verifiers:
            raise ValueError(
                f"task.answer_verifier={cfg.task.answer_verifier!r} is not among the configured verifiers "
                f"{sorted(self.verifiers)}"
            )
        self.answer_verifier = self.verifiers[cfg.task.answer_verifier][0]
        with local_main_first(rt):  # it fills the data caches (datasets' Arrow files, hub downloads) once per machine
            self.stream, self.heldout = problem_source(self.task, cfg.task, cfg.seed, self.verifiers)
            self.benchmarks = load_benchmark_subsets(cfg, self.tokenizer)
        from reasonrl.verifiers.pool import ScoringPool, resolve_workers

        workers = resolve_workers(cfg.verify.workers, local_ranks=rt.local_world_size)
        if workers > 0 and pool:  # training and evaluation checks in killable workers, each under a deadline
            held = {**{k: v for k, (v, _) in self.verifiers.items()}, **eval_pool_verifiers(self.benchmarks)}
            self.pool = ScoringPool(held, workers, cfg.verify.timeout_s)

    def setup_actor(self) -> "GRPOTrainer":
        """The sampling side only, for an actor process (:mod:`reasonrl.remote`): the policy (whose weights the
        trainer's first publish replaces), the problems, the checks and the generator; no run directory,
        optimizer or logger."""
        cfg, rt = self.cfg, self.runtime
        self.model, self.tokenizer, self.model_path = load_policy(cfg.model, progress=False, device=rt.device)
        self.model.eval().requires_grad_(False)
        self.lora_base = str(self.model_path)
        self.compute_dtype = compute_dtype(cfg.model.compute_dtype, rt.device)
        self._setup_checks()
        engine = build_generator(cfg.generator, self.model, self.tokenizer, self.model_path, self.compute_dtype,
                                 lora=self._lora_sync())  # fmt: skip
        self.generator = build_agent(cfg.env, engine, self.tokenizer, self.model, rt)
        self.actor_rt, self.plan = rt, GroupPlan.from_config(cfg)
        return self

    def _claim_run_dir(self) -> Run:
        """The run directory, claimed by the main process; refused (a run is there that this command may not
        continue or replace) on every rank alike, before anything is written."""
        rt = self.runtime
        outcome = None
        if rt.is_main:
            try:
                outcome = (*open_run(self.cfg, "reasonrl-train", resume=self.cfg.resume), None)
            except RunRefused as e:
                outcome = (None, None, str(e))
        run, self.found, refused = rt.broadcast(outcome)
        if refused is not None:
            raise RunRefused(refused)
        return run if rt.is_main else dataclasses.replace(run, is_main=False, created=False)

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint ``resume`` names, read and checked against this run's config (None: a fresh start).
        What the run directory held must be the run resumed: a different run is refused, naming the keys."""
        from omegaconf import OmegaConf

        new = _identity(OmegaConf.to_container(self.cfg, resolve=True))
        path = ckpt.resolve(self.cfg.resume, self.checkpoint_root)
        if path is None:
            if self.cfg.resume:
                self._restart_without_checkpoint(new)
            return None
        inside = path.resolve().is_relative_to(self.checkpoint_root.resolve())
        if self.found.is_run and not inside:
            raise RunRefused(
                f"resume={self.cfg.resume}: the run directory {self.run_dir} holds another run "
                f"({', '.join(self.found.work)}); nothing was written. Resume into another run_dir, or add "
                "overwrite=true to replace that run"
            )
        saved = _identity(OmegaConf.to_container(OmegaConf.load(path / "config.yaml")))
        changes = ckpt.config_changes(saved, new, schema_defaults())
        if changes:
            raise RunRefused(
                f"resume from {path}: the config differs from the checkpoint's in keys a resumed run may not change "
                f"(allowed: {', '.join(ckpt.RESUME_MAY_CHANGE)}); nothing was written:\n  " + "\n  ".join(changes)
            )
        self.resumed_from = path
        return {**ckpt.read_trainer_state(path), "path": path}

    def _restart_without_checkpoint(self, new: dict) -> None:
        """resume=auto and no complete checkpoint: a fresh start, over what the same run left before its first
        checkpoint (it is re-run, so its rows would otherwise appear twice); a different or finished run is refused."""
        found, where = self.found, self.run_dir
        if not found.is_run:
            self.runtime.print(f"[reasonrl] resume={self.cfg.resume}: no checkpoint in {self.checkpoint_root}; starting fresh")
            return
        if found.finished:
            raise RunRefused(
                f"resume={self.cfg.resume}: {where} holds a finished run ({', '.join(found.work)}) with no training "
                "checkpoint to continue from; nothing was written. overwrite=true replaces it, or choose another run_dir="
            )
        changes = ckpt.config_changes(_identity(found.config or {}), new, schema_defaults())
        if changes:
            raise RunRefused(
                f"resume={self.cfg.resume}: {where} holds a different run (no checkpoint yet) whose config differs in "
                "keys a resumed run may not change; nothing was written:\n  " + "\n  ".join(changes)
            )
        if self.runtime.is_main:
            from reasonrl.runs import remove_run_files

            remove_run_files(where, [f for f in found.files if f in ("metrics.jsonl", "samples.jsonl", "tb", "checkpoints")])
        self.runtime.print(
            f"[reasonrl] resume={self.cfg.resume}: no complete checkpoint in {self.checkpoint_root}; the run starts "
            f"again from step 0 (its earlier rows, {', '.join(found.work)}, are replaced)"
        )

    def _cold_start(self) -> None:
        """SFT on demonstrations before RL; the held-out numbers before it go into the summary."""
        from reasonrl.sft import fine_tune_on_demonstrations

        cfg = self.cfg

        def evaluate_before(demonstration_accuracy: float | None) -> None:  # the held-out numbers SFT starts from
            gen = HFGenerator(self.model, self.tokenizer)
            self.before_sft = training_eval(gen, self.tokenizer, self.heldout, self.render, self.answer_verifier, cfg,
                                            cfg.seed, pool=self.pool)  # fmt: skip
            self.before_sft["demonstration_accuracy"] = demonstration_accuracy
            self.runtime.print(
                "[reasonrl] before SFT: "
                + ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in self.before_sft.items() if v is not None)
            )

        fine_tune_on_demonstrations(
            self.model,
            self.tokenizer,
            cfg.cold_start,
            self.task,
            cfg.task.template,
            self.stream,
            self.answer_verifier,
            steps=cfg.cold_start.steps,
            seed=cfg.seed,
            compute_dtype=self.compute_dtype,
            progress=cfg.logging.progress,
            before=evaluate_before,
            desc="cold-start sft",
        )
        self.save(self.run_dir / "checkpoints" / "sft")
        if lora.is_lora(self.model):  # the SFT adapter becomes the base (and the KL reference); RL trains a fresh one
            lora.merge_into_base(self.model, seed=self.cfg.seed + 1)

    def render(self, problem) -> str:
        return self.task.render_prompt(problem, self.cfg.task.template, self.tokenizer)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, Any]:
        """One GRPO step: sample and score B groups, update the policy, sync the generator; the metrics row."""
        t0 = time.perf_counter()
        # 1-4. B problems, G completions each, scored (dynamic sampling redraws signal-free groups): sampled now,
        # or taken from the actor's queue
        batch, extra = self._sample() if self.rollouts is None else self._take()
        # 5-8. advantages, pack, forward/backward over micro-batches, optimizer step(s)
        t = time.perf_counter()
        update = update_policy(
            self.model,
            self.opt,
            self.sched,
            batch.rollouts,
            batch.rewards,
            batch.masked,
            batch.group_size,
            self.update_settings,
            ref_model=self.ref_model,
            step=self.steps_done + 1,
            policy_version=self.steps_done,
            runtime=self.runtime,
        )
        self.steps_done += 1
        train_s = time.perf_counter() - t
        # the generator samples the next step with the new weights (or the actor its next batch)
        t = time.perf_counter()
        if self.rollouts is None:
            self.generator.sync_weights(self.model)  # wakes a sleeping engine: weights, the new weights, its cache
        else:
            self.rollouts.publish(self.steps_done, self._weights())
        sync_s = time.perf_counter() - t
        # 9. one metrics row, from every rank's rollouts
        self.last_batch = batch = self._whole_batch(batch)
        check_failures([r.verdicts for r in batch.rollouts], self.cfg.verify.max_failed_frac, step=self.steps_done)
        times = {"step_s": time.perf_counter() - t0, "train_s": train_s, "sync_s": sync_s}
        times.update(generate_s=batch.stats.generate_s, verify_s=batch.stats.verify_s)
        return {**self._metrics_row(batch, update, times), **extra}

    def _sample(self) -> tuple[RolloutBatch, dict[str, Any]]:
        """The synchronous step's batch, sampled now by the policy being trained."""
        ckpt.pause_point(self.steps_done + 1, "generate")
        batch = self._collect(self.steps_done + 1, self.steps_done, self.runtime)
        self.generator.sleep()  # GPU engines release memory while the policy trains
        return batch, {}

    def _take(self) -> tuple[RolloutBatch, dict[str, Any]]:
        """The actor's oldest batch the bound allows (stale=drop: older ones dropped, agreed by every rank)."""
        if self.rollouts.thread is None:
            self.rollouts.start()
        got = self.rollouts.take(self.steps_done, agree=self.runtime.all)
        item, rt = got.item, self.runtime
        self.dropped += got.dropped
        self.next_batch = item.index + 1
        return item.batch, {
            "time/wait_s": rt.max(got.wait_s),  # the learner's idle time
            "time/actor_s": rt.max(item.seconds),  # what sampling this batch took the actor
            "async/staleness": rt.max(self.steps_done - item.version),  # versions, the oldest rank's batch
            "async/batch": item.index,
            "async/queued": got.queued,
            "async/dropped": self.dropped,
        }

    def _whole_batch(self, batch):
        """The step's batch as one process would have sampled it: every rank's groups (their sampler logprobs
        left behind), and statistics reduced (times: the slowest rank; counts: summed; fractions: averaged)."""
        rt = self.runtime
        if not rt.distributed:
            return batch
        light = [dataclasses.replace(r, logprobs=[]) for r in batch.rollouts]
        rollouts, problems = rt.gather(light), rt.gather(batch.problems)
        for i, r in enumerate(rollouts):
            r.prompt_index = i // batch.group_size
        stats = batch.stats.reduce(rt)
        return RolloutBatch(problems=problems, rollouts=rollouts, group_size=batch.group_size, stats=stats)

    def _metrics_row(self, batch, update: UpdateStats, times: dict[str, float]) -> dict[str, Any]:
        scored = Scored([r.reward for r in batch.rollouts], [r.verdicts for r in batch.rollouts], batch.masked)
        row: dict[str, Any] = {
            "step": self.steps_done,
            **{f"time/{k}": v for k, v in times.items()},
            **summarize(scored, list(self.verifiers)),
        }
        tools = self.cfg.env.name != "single_turn"
        row.update(rollout_metrics(batch, self.tokenizer, self.cfg.task.answer_verifier, times["generate_s"], tools))
        row.update({f"train/{k}": getattr(update, k) for k in ("loss", "kl", "entropy", "clip_frac", "grad_norm")})
        row.update(
            {
                "train/lr": self.sched.get_last_lr()[0],
                "sampling/logprob_diff_mean": update.logprob_diff_mean,
                "sampling/logprob_diff_max": update.logprob_diff_max,
                "group/zero_std_frac": batch.stats.zero_std_frac,
                "group/dropped": batch.stats.dropped,
                "group/redraws": batch.stats.redraws,
                "reward/overlong_penalty_mean": batch.stats.overlong_penalty_mean,
                "train/masked_frac": update.masked_frac,
                "verify/workers_replaced": self.pool.replaced if self.pool is not None else 0,
            }
        )
        if self.runtime.device.type == "cuda":
            row["gpu/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if update.tis_weight_mean is not None:  # absent when no token took a weight (off, or every row stale/reused)
            row["sampling/tis_weight_mean"] = update.tis_weight_mean
            row["sampling/tis_capped_frac"] = update.tis_capped_frac
        if update.staleness_max > 0:  # a synchronous step trains on its own samples: staleness 0, not logged
            row["sampling/staleness_mean"] = update.staleness_mean
            row["sampling/staleness_max"] = update.staleness_max
        if update.stale_ratio_mean is not None:  # the off-policy ratio of the stale rollouts' tokens
            row.update({f"sampling/stale_ratio_{k}": getattr(update, f"stale_ratio_{k}") for k in ("mean", "min", "max")})
        return row

    # ------------------------------------------------------------------ evaluation, checkpoints
    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy (greedy and sampled) and lengths, and the configured benchmark subsets, of this
        policy version: by the learner where it has a generator on the policy, else by the actor between two of
        its batches, with this version's weights."""
        if self.rollouts is None:
            out = self.evaluate_here()
        elif self.eval_generator is not None:  # the scoring pool is the actor's: checks in-process (main thread)
            out = self._eval_with(self.eval_generator, self.runtime, None)
        else:
            out = self.rollouts.evaluate(self.evaluate_here, self.steps_done, f"the evaluation at step {self.steps_done}")
        self.evals[self.steps_done] = out
        return out

    def evaluate_here(self) -> dict[str, float]:
        """:meth:`evaluate` with the generator steps 1-4 sample with (an actor's, when called on it)."""
        return self._eval_with(self.generator, self.actor_rt, self.pool)

    def _eval_with(self, generator, runtime: Runtime, pool) -> dict[str, float]:
        args = (self.tokenizer, self.heldout, self.render, self.answer_verifier, self.cfg, self.cfg.seed)
        return training_eval(generator, *args, self.benchmarks, pool=pool, runtime=runtime)

    def save(self, path: Path) -> Path:
        """The policy as a Hugging Face folder (written atomically, by the main process; a sharded policy is
        gathered tensor by tensor)."""
        state = full_state_dict(self.model, self.runtime.is_main) if is_sharded(self.model) else None
        if self.runtime.is_main:
            try:
                save_checkpoint(self.model, self.tokenizer, path, state_dict=state, base_path=self.lora_base)
            except Exception as e:
                self._raise_write_failed(e, f"the model folder {path}", path.parent)
        self.runtime.barrier()
        return path

    def _raise_write_failed(self, e: BaseException, what: str, where: Path) -> None:
        """Raise a failed checkpoint write as the user needs to hear it: a full disk named as such (with the space
        left and the checkpoint a resume continues from), the leftovers of the write removed; anything else as
        it was."""
        import shutil

        from reasonrl.cache import disk_full

        failures = getattr(e, "failures", None) or {}  # DCP's CheckpointException: {rank: (exception, stack)}
        if any(isinstance(f[0], KeyboardInterrupt) for f in failures.values()):
            raise KeyboardInterrupt from None  # Ctrl-C during the write: an interrupt like any other
        try:
            usage = shutil.disk_usage(where if where.exists() else self.run_dir)
        except OSError:
            usage = None
        # torch's zip writer reports a short write as "unexpected pos N vs M", not as ENOSPC
        short_write = any(k in str(e) for k in ("unexpected pos", "PytorchStreamWriter failed", "file write failed"))
        if not (disk_full(e) or (short_write and usage is not None and usage.free < 64 * 2**20)):
            raise e
        left = ckpt.complete_checkpoints(self.checkpoint_root, quiet=True)  # removes the partial write
        space = "" if usage is None else f" ({usage.free / 2**20:.0f} MiB free of {usage.total / 2**20:.0f} MiB there)"
        resume = (
            f"the latest complete checkpoint, {left[-1]}, is intact and resume=auto continues from it"
            if left
            else "there is no complete checkpoint yet (resume=auto starts again from step 0)"
        )
        raise RunError(
            f"step {self.steps_done}: writing {what} failed: the disk holding {where} is full{space}. The partial "
            f"write was removed; metrics.jsonl keeps the rows up to step {self.steps_done}; {resume}. Free space, "
            "then rerun the command with resume=auto"
        ) from None

    def trainer_state(self) -> dict[str, Any]:
        """What the next step depends on besides the tensors of the model and optimizer: step, schedule,
        RNGs, the problem stream's position, evaluations, and where the logs stand."""
        return {
            "steps_done": self.steps_done,
            "scheduler": self.sched.state_dict(),
            **self._stream_position(),
            "evals": dict(self.evals),
            "before_sft": self.before_sft,
            "log": self.logger.position(self.steps_done) if self.logger is not None else None,
            "counters": {
                "workers_replaced": self.runtime.sum(self.pool.replaced if self.pool is not None else 0),
                "dropped": self.dropped,
            },
            "rng": self.runtime.gather([self._rng_state()]),  # one per rank
            "cwd": os.getcwd(),  # relative paths in the config (model.path, ...) are relative to it
        }

    def _stream_position(self) -> dict[str, Any]:
        """Where the next step's problems come from: the stream itself, or (asynchronous) its state before the
        first batch the learner has not taken, and that batch's index: a resumed run samples it again."""
        if self.rollouts is None:
            return {"stream": self.stream.state_dict()}
        at = self.rollouts.position()
        return {"stream": at["stream"], "next_batch": at["index"]}

    @staticmethod
    def _rng_state() -> dict[str, Any]:
        return {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on, in memory (a checkpoint writes the same, see save_state)."""
        extra = {name: m.state_dict() for name, m in self._extra_models().items()}
        return {**self.trainer_state(), "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), **extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, or a checkpoint's (``path`` set: tensors from its folder)."""
        if "path" in state:
            ckpt.load_model_and_optimizer(state["path"], self.model, self.opt, self._extra_models())
        else:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            for name, m in self._extra_models().items():
                m.load_state_dict(state[name])
        self.steps_done = int(state["steps_done"])
        self.sched.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        self.next_batch = int(state.get("next_batch", self.steps_done + 1))
        self.dropped = int(state.get("counters", {}).get("dropped", 0))
        self.evals = {int(k): v for k, v in state["evals"].items()}
        self.before_sft = state.get("before_sft")
        if self.pool is not None:  # verify/workers_replaced counts over the run, not the process
            self.pool.replaced = int(state.get("counters", {}).get("workers_replaced", 0))
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if self.runtime.rank < len(rngs):  # a rank the saving run did not have keeps its fresh seeding
            rng = rngs[self.runtime.rank]
            random.setstate(rng["python"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        if self.generator is not None:  # (an actor process receives them with the first publish)
            self.generator.sync_weights(self.model)  # the engine samples with the restored weights

    def _extra_models(self) -> dict[str, torch.nn.Module]:
        """Frozen models a checkpoint carries: the KL reference (the policy after any cold start), unless it is the
        policy's own base (LoRA), which the policy's state holds."""
        return {"ref_model": self.ref_model} if self.ref_model not in (None, self.model) else {}

    def save_state(self) -> Path:
        """A training checkpoint of this step (atomic; older ones beyond checkpoint.keep removed)."""
        from omegaconf import OmegaConf

        t = time.perf_counter()
        try:
            path = ckpt.save(
                self.checkpoint_root,
                self.steps_done,
                self.model,
                self.opt,
                self.trainer_state(),
                OmegaConf.to_yaml(self.cfg, resolve=True),
                keep=self.cfg.checkpoint.keep,
                is_main=self.runtime.is_main,
                extra_models=self._extra_models(),
                barrier=self.runtime.barrier,
            )
        except (Exception, ckpt_failure()) as e:  # DCP's CheckpointException is a BaseException
            self._raise_write_failed(e, f"checkpoint step_{self.steps_done:06d}", self.checkpoint_root)
        if time.perf_counter() - t > 10:  # a long pause of the progress bar gets a word
            self._say(f"[reasonrl] checkpoint {path} written in {time.perf_counter() - t:.0f} s")
        self.last_checkpoint_time = time.time()
        return path

    def _checkpoint_due(self, step: int) -> bool:
        c = self.cfg.checkpoint
        if c.every > 0 and (step % c.every == 0 or step == self.cfg.max_steps):
            return True
        return c.every_minutes > 0 and (
            time.time() - self.last_checkpoint_time >= 60 * c.every_minutes or step == self.cfg.max_steps
        )

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Evaluate at step 0, run ``max_steps`` steps (evaluating and checkpointing on schedule), finish."""
        from tqdm import tqdm

        cfg, rt = self.cfg, self.runtime
        if 0 not in self.evals:
            self._log({"step": 0, **self.evaluate()})
            rt.print("[reasonrl] step 0: " + ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in self.evals[0].items()))
        self._bar = bar = tqdm(
            total=cfg.max_steps,
            initial=self.steps_done,
            desc="grpo",
            disable=not (cfg.logging.progress and rt.is_main),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        try:
            while self.steps_done < cfg.max_steps:
                first = self.steps_done == 0
                row = self.step()
                step = self.steps_done
                if step == cfg.max_steps or (cfg.eval.every > 0 and step % cfg.eval.every == 0):  # always the last
                    row.update(self.evaluate())
                self._log(row, self._samples(step))
                if first:
                    self._report_logprob_gap(row)
                if self._checkpoint_due(step):
                    self.save_state()
                bar.set_postfix(
                    reward=f"{row['reward/mean']:.2f}",
                    think=f"{row['rollout/think_len_mean']:.1f}",
                    **({"acc": f"{self.evals[step][f'eval/{cfg.task.name}/accuracy']:.2f}"} if step in self.evals else {}),
                )
                bar.update(1)
        finally:  # an interrupt too: the bar's line ends before anything else is said
            bar.close()
            self._bar = None
        return self._finish()

    def _say(self, msg: str) -> None:
        """A line on the main process, above the progress bar."""
        if not self.runtime.is_main:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)

    def _report_logprob_gap(self, row: dict[str, Any]) -> None:
        """After the first step: how far the trainer's logprobs are from the sampler's, with the compute dtype,
        loudly when the gap is beyond what float32 on both sides gives (about 1e-4 at most)."""
        mean, worst = row["sampling/logprob_diff_mean"], row["sampling/logprob_diff_max"]
        dtype = str(self.compute_dtype).removeprefix("torch.")
        line = f"sampler vs trainer logprob gap at the first step: mean {mean:.2g}, max {worst:.2g} (compute dtype {dtype})"
        if worst > 1e-3:
            hint = " model.compute_dtype=float32 makes them agree" if self.compute_dtype != torch.float32 else ""
            self._say(f"[reasonrl] WARNING: {line}: the update's importance ratios see this gap.{hint}")
            log.warning(line)
        else:
            self._say(f"[reasonrl] {line}")

    def _samples(self, step: int) -> list[dict[str, Any]]:
        batch = self.last_batch
        return [
            {
                "step": step,
                "prompt": self.render(batch.problems[r.prompt_index]),
                "completion": r.text,
                "reward": r.reward,
                "finish_reason": r.finish_reason,
                **({"turns": [turn_row(t) for t in r.turns]} if r.turns else {}),
                "verdicts": {
                    k: (None if v is None else {"score": v.score, "status": v.status, "info": v.info})
                    for k, v in r.verdicts.items()
                },
            }
            for r in batch.rollouts[: self.cfg.logging.samples_per_step]
        ]

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        final = self.steps_done
        if final not in self.evals:  # fit evaluates the last step; this is a run resumed past it without one
            self._log({"step": final, **self.evaluate()})
        if self.logger is not None:
            self.logger.close()
        if cfg.checkpoint.final:
            self.save(self.run_dir / "checkpoints" / "final")
        summary = {
            "run_dir": str(self.run_dir),
            "experiment": cfg.experiment_name,
            "seed": cfg.seed,
            "steps": final,
            "base_model": str(self.model_path),
            "wall_s": round(time.time() - self.t_start, 1),
            "start": self.evals[0],
            "end": self.evals[final],
        }
        if self.before_sft is not None:
            summary["before_sft"] = self.before_sft
        if self.runtime.is_main:
            write_summary(self.run_dir, summary)
            if cfg.logging.plot:
                from reasonrl.plots import plot_training

                plot_training(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", cfg.task.name)
        return summary

    def _log(self, row: dict[str, Any], samples: list[dict[str, Any]] | None = None) -> None:
        if self.logger is not None:  # the main process
            self.logger.log(row)
            if samples:
                self.logger.log_samples(samples)

    def where_it_stopped(self) -> str:
        """After an interrupt or an error (main process): where the run stood and what it kept, in one line;
        a directory this run created and wrote nothing worth keeping into is removed."""
        run = self.run
        if run is None:
            return "before the run directory was claimed; nothing was written"
        if self.logger is not None:
            self.logger.close()
        if run.abandon():
            return f"before the first step; the run directory {run.path} held nothing yet and was removed"
        from reasonrl.runs import survey

        kept = survey(run.path).work
        latest = ckpt.complete_checkpoints(self.checkpoint_root, quiet=True)
        step = f"at step {self.steps_done} of {self.cfg.max_steps}"
        again = f"; resume=auto continues from {latest[-1].name}" if latest else ""
        return f"{step}; {run.path} keeps {', '.join(kept) or 'what it held'}{again}"

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.rollouts is not None:  # the actor stops before the generator it drives is torn down
            self.rollouts.close()
            self.rollouts = None
            if self._threads_before:  # the learner's share of the threads goes back to the process
                torch.set_num_threads(self._threads_before)
        close = getattr(getattr(self, "generator", None), "close", None)
        if close is not None:  # an engine's teardown, while the process group it built on still exists
            close()
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def actor_process_main(host: str, port: int, timeout_s: float, child: bool = True) -> None:
    """The actor of ``rollout.actor=process`` (:mod:`reasonrl.remote`), a child of the trainer or started with
    ``reasonrl-actor``: a trainer's sampling side (its own policy copy, problems, checks and generator, from the
    config the trainer sends) serving the trainer over the link."""
    from omegaconf import OmegaConf

    from reasonrl import remote

    pg, cfg, start = remote.connect(host, port, timeout_s, child)
    trainer = GRPOTrainer(OmegaConf.create(cfg))  # sizes torch's threads to the cores; the actor's share follows
    if start["threads"] > 0:
        torch.set_num_threads(start["threads"])
    remote.serve(trainer.setup_actor(), pg, start, timeout_s)


@contextlib.contextmanager
def local_main_first(rt: Runtime):
    """The block runs on the first process of each machine, then on the others (every rank calls it): what the first
    one prepares on the way (caches) the others find ready. Identity in a world of one."""
    if rt.local_rank > 0:
        rt.barrier()
    yield
    if rt.local_rank == 0:
        rt.barrier()


def schema_defaults() -> dict:
    """The training schema's defaults as a plain dict (what a knob newer than a checkpoint is compared with)."""
    from omegaconf import OmegaConf

    from reasonrl.config import TrainConfig

    return OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=True)


def _identity(config: dict) -> dict:
    """A run's config without what says how this command treats the run directory (overwrite): not part of which run
    it is."""
    return {k: v for k, v in config.items() if k != "overwrite"}


def ckpt_failure() -> type[BaseException]:
    """The exception torch.distributed.checkpoint wraps a failed write in (a BaseException, not an Exception)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def main(cfg) -> dict[str, Any]:
    trainer = GRPOTrainer(cfg)
    try:
        summary = trainer.setup().fit()
    except KeyboardInterrupt:
        trainer.close()
        raise Interrupted(trainer.where_it_stopped()) from None
    except BaseException:
        trainer.close()
        trainer.where_it_stopped()  # removes a run directory that holds nothing yet
        raise
    finally:
        trainer.close()
    trainer.runtime.print(result_table(summary["start"], summary["end"], summary["steps"], cfg.task.name))
    if trainer.runtime.is_main:
        announce(trainer.run_dir)
    trainer.runtime.close()  # on success only: after an error the process just exits (a peer may be gone)
    return summary


def result_table(start: dict, end: dict, final_step: int, name: str) -> str:
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


def actor_cli() -> None:
    """``reasonrl-actor --connect HOST:PORT``: the rollout actor of a trainer waiting at that address."""
    from reasonrl.remote import parse_connect

    host, port, timeout_s = parse_connect(sys.argv[1:])
    try:
        actor_process_main(host, port, timeout_s, child=False)
    except torch.distributed.DistNetworkError as e:  # no trainer there (yet): one line, not a traceback
        sys.exit(f"reasonrl-actor: error: no trainer answered at {host}:{port} within {timeout_s:g} s ({e})")


def cli() -> None:
    from reasonrl.config import run_entry_point
    from reasonrl.runs import hydra_argv

    sys.argv = hydra_argv(sys.argv, "reasonrl-train")
    run_entry_point(one_line_errors(main, "reasonrl-train"), "train")


if __name__ == "__main__":
    sys.exit(cli())
