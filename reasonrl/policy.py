"""The policy: loading a Hugging Face folder, the optimizer and its schedule, model folders.

:func:`save_checkpoint` writes a Hugging Face folder atomically
(``from_pretrained`` loads it): a run's ``checkpoints/final`` and
``checkpoints/sft``. Training checkpoints, which resume a run
(``checkpoints/step_NNNNNN``: model, optimizer and trainer state), are
:mod:`reasonrl.checkpoint`'s. Which folder a run starts from (a path, a converted GGUF file, or
the tiny base model built on first use) is :func:`reasonrl.models.load_policy`'s
business.

It does not know about rollouts or losses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from reasonrl.cache import atomic_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_hf(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a Hugging Face folder, with a clear error for a missing one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model path {str(p)!r} is not a Hugging Face model folder (no config.json there)")
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=torch_dtype(dtype))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def lr_schedule(warmup_steps: int, total_steps: int, kind: str = "cosine", min_ratio: float = 0.1) -> Callable[[int], float]:
    """Multiplier on the peak lr at optimizer step ``s``: linear warmup, then cosine or constant."""

    def f(s: int) -> float:
        if warmup_steps > 0 and s < warmup_steps:
            return (s + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind != "cosine":
            raise ValueError(f"unknown lr schedule {kind!r}; use 'cosine' or 'constant'")
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (s - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def make_optimizer(model: torch.nn.Module, optim: Any, total_steps: int):
    """AdamW (no decay on biases and norms) and its LambdaLR schedule, from an ``optim`` config node
    (lr, betas, weight_decay, warmup_steps, schedule, min_lr_ratio; see reasonrl.config.OptimConfig)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr,
        betas=tuple(optim.betas),
    )
    schedule = lr_schedule(optim.warmup_steps, total_steps, optim.schedule, optim.min_lr_ratio)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def save_checkpoint(model, tokenizer, path: str | Path, state_dict: dict | None = None, base_path: str | None = None) -> Path:
    """Save a Hugging Face folder atomically (``state_dict``: the tensors to write instead of the model's own,
    e.g. a sharded model's gathered ones). A LoRA policy is written merged (a plain model that loads anywhere),
    with its adapter alone in ``adapter/`` beside it (a peft folder whose base is ``base_path``)."""
    from reasonrl import lora

    path = Path(path)
    with atomic_dir(path) as tmp:
        if lora.is_lora(model):
            state = state_dict if state_dict is not None else model.state_dict()
            merged = dict(lora.merged_tensors(state.items(), lora.scalings(model)))
            model.save_pretrained(tmp, state_dict=merged)
            lora.write_adapter(tmp / "adapter", state.items(), model.reasonrl_lora, base_path)
            tokenizer.save_pretrained(tmp / "adapter")
        else:
            model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return path


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``model.compute_dtype``: auto = bfloat16 where the hardware has it, else float32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch_dtype(name)


def check_master_weights(model_cfg: Any) -> None:
    """Refuse to train low-precision weights with AdamW unless asked for by name. A LoRA policy's base is frozen
    and its adapters stay float32, so its base may be any dtype."""
    from reasonrl import lora

    dtype = model_cfg.get("dtype", "float32")
    if dtype != "float32" and not model_cfg.get("allow_low_precision_weights", False) and not lora.enabled(model_cfg):
        raise ValueError(
            f"model.dtype={dtype} would make the weights AdamW updates (and its moments) {dtype}: "
            "small updates vanish (at lr 1e-6 about 2% of a bfloat16 weight's elements change in a step). Keep "
            "model.dtype=float32 (master weights) and compute in bfloat16 with model.compute_dtype=bfloat16 (auto does "
            "where the hardware has it), or set model.allow_low_precision_weights=true to train them anyway"
        )


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward (non-reentrant; transformers skips it in no-grad passes)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False
