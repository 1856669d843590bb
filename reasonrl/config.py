"""Structured-config schemas for the Hydra entry points.

Every primary config starts from one of these schemas, so a misspelled key
anywhere (command line, preset or group file) fails at once with a message
that names it; a key added with Hydra's ``+`` (which opens a schema) is
refused by the console scripts (:mod:`reasonrl.cli`), with the keys it may
have meant. Generator and verifier nodes are free-form here because each
names its own ``_target_``; :mod:`reasonrl.build` checks their keys against
the constructor's signature instead.

``check_train_config`` / ``check_sft_config`` / ``check_eval_config`` hold the
cross-field checks (:class:`ConfigError` names the keys involved), run before
any model loads.

:func:`register` also exposes every verifier installed under the
``reasonrl.verifiers`` entry-point group as a ``verifier/<name>`` option, so
``verifier=[integer,my_plugin]`` finds third-party verifiers with no YAML file;
registers the advantage estimators and policy losses of installed packages
(:mod:`reasonrl.plugins`);
stores each entry point's ``--help`` page; and adds the ``reasonrl.data``
resolver the configs' data paths use (:func:`data_dir`).

The configs live in ``conf/`` beside the package in a source tree, and in
``reasonrl/conf`` inside an installed wheel (:data:`CONF_DIR`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


def _conf_dir() -> Path:
    """The Hydra config folder: ``conf/`` beside the package in a source tree, ``reasonrl/conf`` in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    return here.parent / "conf"


CONF_DIR = _conf_dir()


@dataclass
class ArchConfig:
    type: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 2
    num_kv_heads: Optional[int] = None  # None: as many as num_heads
    head_dim: int = 64
    vocab_size: Optional[int] = None  # None: the tokenizer's size; larger pads the tokenizer with filler tokens
    intermediate_size: int = 256
    max_position_embeddings: int = 96
    tie_embeddings: bool = True


@dataclass
class OptimConfig:
    """AdamW and its schedule: one schema for pretraining, SFT and GRPO (each sets its own defaults)."""

    lr: float = 5e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (after the linear warmup)
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0


def _sft_optim(lr: float, warmup_steps: int):
    return lambda: OptimConfig(lr=lr, betas=[0.9, 0.98], weight_decay=0.01, warmup_steps=warmup_steps, schedule="cosine")


@dataclass
class PretrainConfig:
    corpus: str = "arith"
    seed: int = 0
    batch_size: int = 128
    max_steps: int = 2500  # 0: no pretraining (a randomly initialised model, for speed checks)
    eval_every: int = 100
    eval_problems: int = 200
    target_accuracy: float = 0.8
    steps_frac: float = 0.2
    short_frac: float = 0.3
    # arith_tools corpus only: the share of full problems solved with a tool call (reasonrl.tasks.arith)
    tool_frac: float = 0.0
    # the corpus's and the pretraining probe's problem shape; left at these defaults, these three keys stay out
    # of the cache key (reasonrl.tiny.base_path), so base models cached before they existed keep their folder
    n_terms: int = 3
    digits: int = 2
    optim: OptimConfig = field(default_factory=_sft_optim(2e-3, 50))


@dataclass
class LoraConfig:
    """LoRA adapters on a frozen base (reasonrl.lora, through peft); ``r`` = 0 trains every parameter."""

    r: int = 0  # the adapters' rank; 0: no LoRA
    alpha: Optional[float] = None  # the update is scaled by alpha / r; None: 2 * r
    dropout: float = 0.0  # on the adapter's input, in training passes only
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])  # names, or all-linear (not the output layer)
    modules_to_save: List[str] = field(default_factory=list)  # whole modules trained beside the adapters (e.g. lm_head)
    sync: str = "auto"  # how a vLLM generator gets the policy: adapter (only it moves) | merged | auto (adapter where it can)


@dataclass
class ModelConfig:
    name: str = "tiny_arith"
    path: Optional[str] = None  # a Hugging Face folder
    device: str = "auto"  # auto: cuda when available, else cpu
    gguf: Optional[str] = None  # else a GGUF file ("path" or "package:file"), converted once into the cache
    # else (neither): the tiny base model built from arch + pretrain
    dtype: str = "float32"  # the weights the optimizer updates (master weights): float32
    compute_dtype: str = "auto"  # autocast for forward passes: auto = bfloat16 where the hardware has it, else float32
    ref_dtype: str = "auto"  # the frozen reference model (KL): auto = the compute dtype
    gradient_checkpointing: bool = False  # recompute activations in backward (non-reentrant); never in no-grad passes
    allow_low_precision_weights: bool = False  # train bfloat16/float16 weights with AdamW (small updates vanish)
    fsdp: str = "auto"  # shard with FSDP2: auto = under torchrun with more than one process; on; off (one process only)
    arch: Optional[ArchConfig] = None
    pretrain: Optional[PretrainConfig] = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TaskConfig:
    name: str = "arith"  # arith (the generated world) or any label for a task read from data (eval/<name>/... metrics)
    template: str = "r1"  # arith: r1 | r1_think; data: chat | r1 | text (whether it opens <think> is read from the prompt)
    n_terms: int = 3  # arith only
    digits: int = 2  # arith only
    heldout_size: int = 500
    answer_verifier: str = "integer"  # whose "correct" counts as accuracy
    # problems from data (reasonrl.tasks.sources): a JSONL/JSON/Parquet/CSV file, a saved dataset folder or a hub name
    path: Optional[str] = None  # training problems
    split: str = "train"
    format: Optional[str] = None  # a built-in layout: gsm8k, math500, aime24, amc23, minerva_math, olympiadbench, mbpp, humaneval
    fields: Dict[str, str] = field(default_factory=dict)  # problem key -> column (e.g. question: statement, answer: final)
    row_fn: Optional[str] = None  # "package.module:function": row dict -> problem dict (None skips the row)
    filter: Optional[str] = None  # a condition on the problem's fields, e.g. "601 <= id <= 974"
    limit: Optional[int] = None
    eval_path: Optional[str] = None  # held-out problems; default: heldout_size problems set aside from path
    eval_split: str = "test"
    eval_filter: Optional[str] = None
    instruction: str = "{question}"  # the prompt's text, filled from the problem's fields
    system: Optional[str] = None  # template=chat: a system message
    target: Optional[str] = None  # SFT demonstrations from data: the completion, filled from the fields (e.g. "{solution}")
    template_engine: str = "format"  # format (Python str.format) | jinja
    skip_bad_rows: bool = False  # False: a malformed row stops the run, naming it; True: logged, counted, skipped
    allow_overlap: bool = False  # train on problems that also appear in an evaluation set


@dataclass
class MicroBatchConfig:
    """How a batch is cut into forward/backward passes whose gradients accumulate: the same update in any split.
    One set of knobs, in the RL update (``rollout``) and in SFT (``cold_start``, ``sft``) alike; read with
    :func:`micro_batching`."""

    micro_batch_size: int = 256  # sequences per micro-batch at most
    max_tokens_per_micro_batch: int = 16384  # and padded tokens per micro-batch at most (0: no token budget)
    # where to cut the length-sorted batch: fewest (padded tokens + pass_cost_tokens x passes); null: fewest passes
    pass_cost_tokens: Optional[float] = 128


def micro_batching(node: Any) -> dict[str, Any]:
    """The micro-batch knobs of a config node (``rollout``, ``cold_start``, ``sft``) as keywords, named as
    :func:`reasonrl.sft.train_sft` and :class:`reasonrl.update.UpdateSettings` take them."""
    return {f.name: node[f.name] for f in dataclasses.fields(MicroBatchConfig)}


@dataclass
class RolloutConfig(MicroBatchConfig):
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    # the update runs a group's prompt once per micro-batch and its completions on top of it (llama/qwen2/qwen3
    # families, unsharded; other models take the packed path); false: every sequence runs whole
    share_prompt: bool = True
    # asynchronous rollouts (reasonrl.actor): 0 is the synchronous step; k > 0 lets an actor thread sample up
    # to k policy versions ahead of the learner
    max_staleness: int = 0
    stale: str = "wait"  # wait: the actor waits for the version the bound needs | drop: too-old batches are dropped
    sync_timeout_s: float = 1800.0  # the deadline of every wait between actor and learner (batches, weights, evals)
    actor_threads: int = 0  # CPU: the actor's torch threads (0: half of this process's); the learner keeps the rest
    actor: str = "thread"  # thread: in the trainer's process | process: a child process with its own generator
    # actor=process: "host:port" where the trainer waits for an actor started elsewhere (reasonrl-actor --connect
    # host:port) instead of starting a child; None: a child on 127.0.0.1
    actor_address: Optional[str] = None


@dataclass
class ToolConfig:
    """The python tool (reasonrl.agent.PythonTool, whose defaults these are): a turn ending with a closed
    ``open ... close`` block runs it in the sandbox; ``output`` ({output} filled) comes back."""

    open: str = "```python\n"
    close: str = "```"
    stop_strings: List[str] = field(default_factory=lambda: ["```\n"])  # what ends the model's turn
    output: str = "```output\n{output}\n```\n"
    timeout_s: float = 2.0  # the sandbox's CPU limit per call
    memory_mb: int = 256
    max_output_chars: int = 400  # stdout (or the error) is cut to this many characters
    stateful: bool = True  # later calls of a rollout see what its earlier successful calls defined
    isolation: str = "bwrap"  # bwrap | none (no isolation at all: never for untrusted code)


@dataclass
class EnvConfig:
    """What a rollout is: one turn (single_turn), or turns with a tool between them (reasonrl.agent)."""

    name: str = "single_turn"  # single_turn | python
    max_turns: int = 4  # model turns per rollout (finish reason "turns")
    max_tool_calls: int = 3  # tool calls per rollout (finish reason "tool_calls")
    max_observation_tokens: int = 64  # per call; a longer tool output is cut to this many tokens
    max_total_tokens: Optional[int] = None  # model + observation tokens of a completion ("context"); None: the model's
    tool_workers: int = 4  # tool calls running at once, beside generation
    tool: ToolConfig = field(default_factory=ToolConfig)  # env.name=python


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    advantage: str = "grpo"  # an estimator in reasonrl.grpo.ADVANTAGE_ESTIMATORS: grpo | rloo
    policy_loss: str = "ppo_clip"  # a loss in reasonrl.grpo.POLICY_LOSSES
    adv_scale: str = "group"  # group | batch | none
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: Optional[float] = None  # c > 1 bounds the loss of negative-advantage tokens
    updates_per_batch: int = 1  # mu: optimizer steps on each sampled batch
    kl_coef: float = 0.0  # > 0 loads a frozen reference copy of the initial policy
    kl_estimator: str = "k3"  # k1 | k2 | k3
    entropy_coef: float = 0.0  # entropy bonus
    dynamic_sampling: bool = False  # drop groups with equal rewards and draw more prompts
    max_redraws: int = 3  # cap on extra draws per step
    mask_truncated: bool = False  # leave completions that hit max_new_tokens out of the loss
    overlong_buffer: int = 0  # > 0: soft overlong penalty over this many tokens before the limit
    overlong_coef: float = 1.0
    # truncated importance sampling between trainer and sampler probabilities:
    # "auto" turns it on for generators whose logprobs are not exact (vLLM)
    tis: str = "auto"
    tis_cap: float = 2.0
    mask_statuses: List[str] = field(default_factory=lambda: ["timeout", "error"])  # as verifiers.base.MASK_STATUSES
    # free-form knobs for plugin estimators and losses, which read them from the alg they are given (alg.options["k"]);
    # set with +algorithm.options.<key>=<value> (reasonrl.plugins)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyConfig:
    # killable scoring processes: -1 = auto, the machine's cores minus 2 (left to generation and the
    # trainer), at least 2; 0 scores in the trainer's process (no timeouts)
    workers: int = -1
    timeout_s: float = 10.0  # per (completion, verifier) check
    overlap: bool = True  # with workers: score each group while the rest of the step is still generating
    # a step where more than this fraction of one verifier's verdicts are error/timeout stops the run, naming the
    # verifier and its first exception (the samples would all be masked: loss 0, nothing learned); 1.0: never
    max_failed_frac: float = 0.5


@dataclass
class EvalConfig:
    every: int = 10
    sampled: bool = True  # also report accuracy when sampling at ``temperature``
    temperature: float = 1.0
    # real benchmarks evaluated at the same steps: name -> local JSONL (see reasonrl.evals.loaders),
    # the first ``benchmark_limit`` problems, greedy, prompts in ``benchmark_template``
    benchmarks: Dict[str, str] = field(default_factory=dict)
    benchmark_filters: Dict[str, str] = field(default_factory=dict)  # name -> a condition, e.g. mbpp: "11 <= id <= 510"
    benchmark_limit: int = 64
    benchmark_template: str = "chat"  # chat (instruct models) | r1 | text
    max_new_tokens: int = 48  # reasonrl-train: rollout.max_new_tokens unless set (TrainConfig.eval)


@dataclass
class SFTConfig(MicroBatchConfig):
    """Supervised fine-tuning on demonstrations: what it trains on and how, shared by reasonrl-sft
    (:class:`FinetuneConfig`) and the cold start of reasonrl-train (:class:`ColdStartConfig`)."""

    data_file: Optional[str] = None  # JSONL rows with prompt/completion; None: the task's demonstrations
    demos: int = 256
    flaw_frac: float = 0.15
    batch_size: int = 32
    micro_batch_size: int = 0  # 0: the whole batch in one pass unless max_tokens_per_micro_batch cuts it
    optim: OptimConfig = field(default_factory=_sft_optim(1e-3, 10))


@dataclass
class FinetuneConfig(SFTConfig):
    """reasonrl-sft's ``sft`` node; the run's length is its ``max_steps``."""

    eval_every: int = 50  # held-out evaluation every N steps (and after the last)


@dataclass
class ColdStartConfig(SFTConfig):
    """reasonrl-train's ``cold_start`` node: SFT before RL. The held-out numbers before it are measured (the
    summary's before_sft), none during it."""

    enabled: bool = False  # run this SFT stage before RL
    steps: int = 150


@dataclass
class LoggingConfig:
    samples_per_step: int = 4
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    progress: bool = True
    plot: bool = True


@dataclass
class CheckpointConfig:
    # training checkpoints (model, optimizer, schedule, RNGs, stream position, log offsets; reasonrl.checkpoint)
    every: int = 50  # every N steps (and after the last step); 0: by time only, or none
    every_minutes: float = 0.0  # also when this much wall time passed since the last one; 0: off
    keep: int = 2  # the newest N complete ones are kept (0: all)
    final: bool = True  # the final policy as a Hugging Face folder, checkpoints/final


@dataclass
class FinalCheckpointConfig:
    final: bool = True  # reasonrl-sft: the final model as a Hugging Face folder, checkpoints/final


@dataclass
class TrainConfig:
    experiment_name: str = "default"
    seed: int = 0
    max_steps: int = 100
    run_dir: Optional[str] = None  # default: Hydra's output directory
    resume: Optional[str] = None  # auto: the latest complete checkpoint in the run directory (none: fresh); or a path
    overwrite: bool = False  # true: remove the run already in run_dir (its files only) and start afresh; not with resume
    # modules imported before the config is checked, so their @advantage_estimator / @policy_loss register (reasonrl.plugins)
    plugins: List[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    generator: Dict[str, Any] = field(default_factory=dict)
    env: EnvConfig = field(default_factory=EnvConfig)
    verifier: Dict[str, Any] = field(default_factory=dict)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # evaluation writes as long a completion as training does, unless a preset says otherwise
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens="${rollout.max_new_tokens}"))
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class SFTRunConfig:
    experiment_name: str = "sft"
    seed: int = 0
    max_steps: int = 150
    run_dir: Optional[str] = None
    overwrite: bool = False  # true: remove the run already in run_dir (its files only) and start afresh; not with resume
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: FinalCheckpointConfig = field(default_factory=FinalCheckpointConfig)


@dataclass
class EvalRunConfig:
    experiment_name: str = "eval"
    seed: int = 0
    run_dir: Optional[str] = None
    overwrite: bool = False  # true: remove the run already in run_dir (its files only) and start afresh; not with resume
    check: bool = False  # score the benchmarks' reference solutions instead of a model
    model: ModelConfig = field(default_factory=ModelConfig)
    generator: Dict[str, Any] = field(default_factory=dict)
    env: EnvConfig = field(default_factory=EnvConfig)
    benchmarks: List[str] = field(default_factory=lambda: ["gsm8k", "math500"])
    data: Dict[str, str] = field(default_factory=dict)  # benchmark -> local JSONL path or hub name
    limit: Optional[int] = None  # first N problems of each benchmark
    n: int = 1  # samples per problem
    ks: List[int] = field(default_factory=lambda: [1, 4, 8])
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    template: str = "chat"  # chat (instruct models) | r1 (base models) | text; math asks for \\boxed{}, code for a code block
    extract: List[str] = field(default_factory=lambda: ["answer_tag", "boxed"])
    verify_workers: int = -1  # scoring processes: -1 = auto (cores minus 2, at least 2); 0: in this process
    verify_timeout_s: float = 10.0  # deadline of one math check in a scoring process
    # a code check's deadline at least; longer where its test cases need it (the code verifier's deadline_s)
    code_verify_timeout_s: float = 60.0


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the keys and what to set instead."""


def _world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _sampling_problems(prefix: str, temperature: float, top_p: float, max_new_tokens: int) -> list[str]:
    out = []
    if temperature < 0:
        out.append(f"{prefix}temperature must be >= 0 (0: greedy), not {temperature}")
    if not 0 < top_p <= 1:
        out.append(f"{prefix}top_p must be in (0, 1], not {top_p}")
    if max_new_tokens < 1:
        out.append(f"{prefix}max_new_tokens must be at least 1, not {max_new_tokens}")
    return out


def _eval_node_problems(ev) -> list[str]:
    out = []
    if ev.max_new_tokens < 1:
        out.append(f"eval.max_new_tokens must be at least 1, not {ev.max_new_tokens}")
    if ev.temperature < 0:
        out.append(f"eval.temperature must be >= 0, not {ev.temperature}")
    return out


def _micro_batch_problems(name: str, node, least_seqs: int) -> list[str]:
    """The micro-batch knobs of one node (:class:`MicroBatchConfig`); ``least_seqs``: 0 where 0 means the whole
    batch (SFT), 1 where a cap is needed (the RL update)."""
    out = []
    if node.micro_batch_size < least_seqs:
        whole = " (0: the whole batch)" if least_seqs == 0 else ""
        out.append(f"{name}.micro_batch_size must be at least {least_seqs}{whole}, not {node.micro_batch_size}")
    if node.max_tokens_per_micro_batch < 0:
        out.append(f"{name}.max_tokens_per_micro_batch must be >= 0 (0: no token budget), not {node.max_tokens_per_micro_batch}")
    if node.pass_cost_tokens is not None and node.pass_cost_tokens < 0:
        out.append(f"{name}.pass_cost_tokens must be >= 0 (or null: fewest passes), not {node.pass_cost_tokens}")
    return out


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))


ENV_NAMES = ("single_turn", "python")  # reasonrl.agent.ENVIRONMENTS (tests/test_agent.py keeps them equal)


def _env_problems(env) -> list[str]:
    """The env node's values, checked before a model loads."""
    problems = []
    if env.name not in ENV_NAMES:
        problems.append(f"env.name={env.name!r} is not an environment; use one of {', '.join(ENV_NAMES)}")
    for key in ("max_turns", "max_tool_calls", "max_observation_tokens", "tool_workers"):
        if env[key] < 1:
            problems.append(f"env.{key} must be at least 1, not {env[key]}")
    if env.max_total_tokens is not None and env.max_total_tokens < 1:
        problems.append(f"env.max_total_tokens must be at least 1 (or null: the model's context), not {env.max_total_tokens}")
    tool = env.tool
    if tool.isolation not in ("bwrap", "none"):
        problems.append(f"env.tool.isolation must be bwrap or none, not {tool.isolation!r}")
    if tool.timeout_s <= 0 or tool.memory_mb < 1 or tool.max_output_chars < 1:
        problems.append("env.tool.timeout_s, memory_mb and max_output_chars must be positive, not "
                        f"{tool.timeout_s}, {tool.memory_mb}, {tool.max_output_chars}")  # fmt: skip
    if env.name == "python":
        if not tool.stop_strings or not tool.open or not tool.close:
            problems.append("env.tool.open, close and stop_strings must be set: they mark and end a tool call")
        if "{output}" not in tool.output:
            problems.append(f"env.tool.output must hold {{output}} (where the tool's output goes), not {tool.output!r}")
    return problems


def check_train_config(cfg) -> None:
    """Cross-field checks for reasonrl-train, in one place: each names the keys involved."""
    alg, ro = cfg.algorithm, cfg.rollout
    problems = []
    if alg.tis not in ("auto", "on", "off"):
        problems.append(f"algorithm.tis must be auto, on or off, not {alg.tis!r}")
    if alg.updates_per_batch < 1:
        problems.append(f"algorithm.updates_per_batch must be at least 1, not {alg.updates_per_batch}")
    if alg.dual_clip is not None and alg.dual_clip <= 1:
        problems.append(f"algorithm.dual_clip must be above 1 (or null), not {alg.dual_clip}")
    if alg.overlong_buffer < 0:
        problems.append(f"algorithm.overlong_buffer must be >= 0 (0: no overlong penalty), not {alg.overlong_buffer}")
    if alg.overlong_buffer > ro.max_new_tokens:
        problems.append(f"algorithm.overlong_buffer={alg.overlong_buffer} exceeds rollout.max_new_tokens={ro.max_new_tokens}")
    if alg.dynamic_sampling and ro.samples_per_prompt < 2:
        problems.append("algorithm.dynamic_sampling needs rollout.samples_per_prompt >= 2 (a group of one has no variance)")
    for key in ("prompts_per_step", "samples_per_prompt", "max_new_tokens"):
        if ro[key] < 1:
            problems.append(f"rollout.{key} must be at least 1, not {ro[key]}")
    problems += [p for p in _sampling_problems("rollout.", ro.temperature, ro.top_p, 1) if "max_new_tokens" not in p]
    if ro.temperature == 0 and ro.samples_per_prompt > 1:
        problems.append(
            f"rollout.temperature=0 (greedy) with rollout.samples_per_prompt={ro.samples_per_prompt}: every completion "
            "of a group would be the same, so every group advantage is 0 and GRPO learns nothing; sample at a "
            "temperature above 0 (e.g. rollout.temperature=1.0)"
        )
    world = _world_size()
    if ro.prompts_per_step >= 1 and ro.prompts_per_step % world:
        up = -(-ro.prompts_per_step // world) * world
        problems.append(
            f"{ro.prompts_per_step} prompts per step (rollout.prompts_per_step) do not divide among {world} processes "
            f"(torchrun's WORLD_SIZE): each samples whole groups; use a multiple of {world}, e.g. rollout.prompts_per_step={up}"
        )
    problems += _eval_node_problems(cfg.eval) + _env_problems(cfg.env) + _async_problems(cfg) + lora_problems(cfg.model)
    if not 0 <= cfg.verify.max_failed_frac <= 1:
        problems.append(f"verify.max_failed_frac must be in [0, 1] (1: never stop), not {cfg.verify.max_failed_frac}")
    problems += _micro_batch_problems("rollout", cfg.rollout, least_seqs=1)
    problems += _micro_batch_problems("cold_start", cfg.cold_start, least_seqs=0)
    _raise(problems)


def lora_problems(model) -> list[str]:
    """model.lora (reasonrl.lora)."""
    lora, problems = model.get("lora"), []
    if lora is None:
        return problems
    if lora.r < 0:
        problems.append(f"model.lora.r must be >= 0 (0: no LoRA, every parameter trains), not {lora.r}")
    if lora.r <= 0:
        return problems
    if lora.alpha is not None and lora.alpha <= 0:
        problems.append(f"model.lora.alpha must be above 0 (or null: 2 * r), not {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        problems.append(f"model.lora.dropout must be in [0, 1), not {lora.dropout}")
    if not list(lora.target_modules):
        problems.append("model.lora.target_modules is empty: name the modules to adapt (e.g. [q_proj,v_proj]) or [all-linear]")
    if lora.sync not in ("auto", "adapter", "merged"):
        problems.append(f"model.lora.sync must be auto, adapter or merged, not {lora.sync!r}")
    if lora.sync == "adapter" and list(lora.modules_to_save):
        problems.append(
            f"model.lora.sync=adapter with model.lora.modules_to_save={list(lora.modules_to_save)}: a vLLM engine loads "
            "LoRA matrices only, not whole trained modules; use model.lora.sync=merged (or auto)"
        )
    return problems


def _async_problems(cfg) -> list[str]:
    """rollout.max_staleness and its knobs (reasonrl.actor)."""
    ro, problems = cfg.rollout, []
    if ro.max_staleness < 0:
        problems.append(f"rollout.max_staleness must be >= 0 (0: synchronous), not {ro.max_staleness}")
    if ro.stale not in ("wait", "drop"):
        problems.append(f"rollout.stale must be wait or drop, not {ro.stale!r}")
    if ro.sync_timeout_s <= 0:
        problems.append(f"rollout.sync_timeout_s must be above 0 seconds, not {ro.sync_timeout_s}")
    if ro.actor not in ("thread", "process"):
        problems.append(f"rollout.actor must be thread or process, not {ro.actor!r}")
    if ro.actor_address is not None:
        host, _, port = str(ro.actor_address).rpartition(":")
        if ro.actor != "process":
            problems.append("rollout.actor_address is where an actor process connects: set rollout.actor=process too")
        if not host or not port.isdigit():
            problems.append(f"rollout.actor_address must be host:port (e.g. 10.0.0.5:29600), not {ro.actor_address!r}")
    if ro.actor_threads < 0:
        problems.append(f"rollout.actor_threads must be >= 0 (0: half of the process's threads), not {ro.actor_threads}")
    return problems


def check_sft_config(cfg) -> None:
    """Cross-field checks for reasonrl-sft."""
    problems = _eval_node_problems(cfg.eval)
    if cfg.max_steps < 1:
        problems.append(f"max_steps must be at least 1, not {cfg.max_steps}")
    if cfg.sft.batch_size < 1:
        problems.append(f"sft.batch_size must be at least 1, not {cfg.sft.batch_size}")
    problems += _micro_batch_problems("sft", cfg.sft, least_seqs=0) + lora_problems(cfg.model)
    _raise(problems)


def check_eval_config(cfg) -> None:
    """Cross-field checks for reasonrl-eval."""
    problems = _sampling_problems("", cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    if cfg.model.lora.r != 0:
        problems.append(
            f"model.lora.r={cfg.model.lora.r}: reasonrl-eval scores a model folder, not fresh adapters; export a LoRA "
            "run (reasonrl-export CHECKPOINT OUT writes the merged model) and set model.path=OUT"
        )
    if cfg.n < 1:
        problems.append(f"n must be at least 1, not {cfg.n}")
    if cfg.n > 1 and cfg.temperature == 0:
        problems.append(
            f"n={cfg.n} samples per problem at temperature=0 (greedy) would all be the same; set temperature above 0 "
            "(e.g. temperature=0.7) or n=1"
        )
    if any(k < 1 for k in cfg.ks):
        problems.append(f"ks={list(cfg.ks)}: every k must be at least 1 (a k above n is left out of the report)")
    import difflib

    for name in (b for b in cfg.benchmarks if b not in cfg.data):
        close = difflib.get_close_matches(str(name), list(cfg.data), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(cfg.data)
        problems.append(f"benchmark {name!r} has no data.{name} entry; {hint}known: {known} (or add data.{name}=PATH)")
    _raise(problems + _env_problems(cfg.env))


CHECKS = {"train": check_train_config, "sft": check_sft_config, "eval": check_eval_config}


def unknown_keys(cfg, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the keys its schema node does have) for every key of ``cfg`` that its structured schema
    lacks: keys added with Hydra's ``+`` (which opens the schema) are otherwise silently ignored.
    Free-form nodes (dicts: generator, verifier, task.fields, ...) are not checked here."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    out: list[tuple[str, list[str]]] = []
    if not isinstance(cfg, DictConfig):
        return out
    schema = OmegaConf.get_type(cfg)
    known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            out.append((path, known))
            continue
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        out += unknown_keys(cfg._get_node(key), path + ".")
    return out


_registered = False


def _constructor_defaults(ep) -> dict[str, Any]:
    """A plugin's constructor options with their defaults, so `verifier.<name>.<option>=...` needs no '+'."""
    import inspect
    import logging

    try:
        params = inspect.signature(ep.load()).parameters.values()
    except Exception as e:  # a broken plugin must not stop every run; using it will fail with its own error
        logging.getLogger(__name__).warning("verifier plugin %s (%s) cannot be loaded: %s", ep.name, ep.value, e)
        return {}
    simple = (str, int, float, bool, type(None), list, tuple)
    return {
        p.name: (list(p.default) if isinstance(p.default, tuple) else p.default)
        for p in params
        if p.default is not inspect.Parameter.empty and isinstance(p.default, simple)
    }


SCHEMAS = {"train": TrainConfig, "sft": SFTRunConfig, "eval": EvalRunConfig}


def data_dir() -> str:
    """Where the configs' data paths start: ``$REASONRL_DATA_DIR``, else the ``shared/data`` folder beside a
    source checkout (``<checkout>/../shared/data``), else ``../shared/data`` from the working directory."""
    env = os.environ.get("REASONRL_DATA_DIR")
    if env:
        return env
    beside = CONF_DIR.parent.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else str(Path("../shared/data").resolve())


def register() -> None:
    """Put the schemas, the entry-point verifiers and the --help pages into Hydra's ConfigStore, and the
    ``reasonrl.data`` (``${reasonrl.data:gsm8k/test.jsonl}``) and ``reasonrl.show`` resolvers into
    OmegaConf (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from reasonrl.cli import help_node, show
    from reasonrl.plugins import load_entry_points
    from reasonrl.verifiers.base import entry_points

    load_entry_points()  # plugin estimators and losses, registered before any config names them

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="sft_schema", node=SFTRunConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    for name in SCHEMAS:
        cs.store(group="hydra/help", name=f"reasonrl_{name}", node=help_node(name, CONF_DIR))
    if not OmegaConf.has_resolver("reasonrl.data"):
        OmegaConf.register_new_resolver("reasonrl.data", lambda sub="": os.path.join(data_dir(), str(sub)))
    if not OmegaConf.has_resolver("reasonrl.show"):
        OmegaConf.register_new_resolver("reasonrl.show", show)
    have_yaml = {p.stem for p in (CONF_DIR / "verifier").glob("*.yaml")}
    for name, ep in entry_points().items():
        node = {"_target_": ep.value.replace(":", "."), "weight": 1.0, **_constructor_defaults(ep)}
        # the constructor is the one place a verifier's defaults are written: a conf/verifier/<name>.yaml starts
        # from this node (its defaults list: /verifier_defaults@<name>: <name>) and says only what differs
        cs.store(group="verifier_defaults", name=name, node=node)
        if name not in have_yaml:
            cs.store(group="verifier", name=name, node={name: node})
    _registered = True


def run_entry_point(main, config_name: str) -> None:
    """What each console script does: register the schemas, check the command line, the config and the data
    (before any model loads), set up logging and threads, and run ``main`` under Hydra (:mod:`reasonrl.cli`)."""
    from reasonrl.cli import run

    register()
    run(main, config_name, schema=SCHEMAS[config_name], conf_dir=CONF_DIR, check=CHECKS[config_name])
