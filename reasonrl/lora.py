"""LoRA policies (``model.lora.*``): low-rank adapters trained on a frozen base model, through ``peft``.

:func:`add_adapters` injects the adapters into the Hugging Face model itself
(the module the rest of the trainer already knows: ``q_proj`` becomes a LoRA
layer holding ``base_layer`` and ``lora_A``/``lora_B``), freezes everything
else and returns the same model, so packing, chunked logprobs, prompt sharing,
gradient checkpointing, FSDP2 and checkpoints see an ordinary model whose only
trainable parameters are the adapters. The optimizer is built over trainable
parameters, so only the adapters get AdamW state.

The KL reference of a LoRA policy is its base: the same module with the
adapters switched off (:func:`adapters_disabled`), no second copy of the
weights.

How a generator gets the policy (``model.lora.sync``, see :func:`resolve_sync`):

- ``adapter``: only the adapter moves each step (:func:`adapter_tensors`); a
  vLLM engine loads it as a LoRA adapter (:func:`write_adapter`, the peft
  folder layout), the base once (:func:`base_tensors`);
- ``merged``: base + B A x alpha / r per layer (:func:`merged_tensors`), the
  policy as a plain model, loaded like a full-parameter policy.

The same two layouts are what ``reasonrl-export`` writes: an adapter folder
(peft, vLLM) and a merged Hugging Face folder.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

ADAPTER = "default"  # peft's adapter name; one adapter per policy
_LORA_PARTS = (".lora_A.", ".lora_B.")
_SAVED = ".modules_to_save."  # peft's trainable copy of a whole module (model.lora.modules_to_save)
_ORIGINAL = ".original_module."  # ... and the frozen original beside it


def enabled(model_cfg: Any) -> bool:
    """Whether a ``model`` config node asks for a LoRA policy (``model.lora.r`` > 0)."""
    lora = model_cfg.get("lora") if hasattr(model_cfg, "get") else getattr(model_cfg, "lora", None)
    return bool(lora is not None and int(lora.get("r", 0) or 0) > 0)


def alpha_of(lora_cfg: Any) -> float:
    return float(lora_cfg.alpha) if lora_cfg.get("alpha") is not None else 2.0 * float(lora_cfg.r)


def peft_config(lora_cfg: Any):
    """peft's ``LoraConfig`` for a ``model.lora`` node."""
    from peft import LoraConfig

    targets = list(lora_cfg.target_modules)
    return LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=alpha_of(lora_cfg),
        lora_dropout=float(lora_cfg.dropout),
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=list(lora_cfg.modules_to_save) or None,
        bias="none",
    )


def add_adapters(model: torch.nn.Module, lora_cfg: Any, seed: int = 0) -> torch.nn.Module:
    """Inject LoRA adapters into ``model`` in place (B = 0, so the policy starts as the base; A drawn from
    ``seed``, the same on every rank and in every process) and freeze the rest; returns ``model``. The adapters
    stay float32 on a low-precision base (the weights AdamW updates)."""
    from peft import get_peft_model

    config = peft_config(lora_cfg)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wrapped = get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise ValueError(f"model.lora: {e}") from None
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model.get_output_embeddings(), BaseTunerLayer):
        raise ValueError(
            "model.lora.target_modules adapts the output layer, which the chunked logprob path reads as one matrix: "
            "leave it out (all-linear does), or train it whole with model.lora.modules_to_save=[lm_head]"
        )
    inner = wrapped.base_model.model
    assert inner is model, "peft wrapped a copy of the policy"
    model.reasonrl_lora = wrapped.peft_config[ADAPTER]  # the resolved config (module names), for adapter folders
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return getattr(model, "reasonrl_lora", None) is not None


def is_adapter_name(name: str) -> bool:
    """A state-dict name the adapter owns (LoRA matrices, or a module-to-save's trainable copy)."""
    return any(p in name for p in _LORA_PARTS) or _SAVED in name


def trainable_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    ps = list(model.parameters())
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


def _layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def scalings(model: torch.nn.Module) -> dict[str, float]:
    """Each LoRA layer's alpha / r, by module name."""
    return {name: float(m.scaling[ADAPTER]) for name, m in _layers(model)}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model: every adapter switched off (modules to save use their frozen original) until exit."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    tuned = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]
    for m in tuned:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in tuned:
            m.enable_adapters(True)


def active_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module that computes in place of ``module``: a module to save's trained copy (its original while the
    adapters are off); any other module itself."""
    from peft.utils.other import ModulesToSaveWrapper

    if not isinstance(module, ModulesToSaveWrapper):
        return module
    if module.disable_adapters or not module.active_adapters:
        return module.original_module
    return module.modules_to_save[module.active_adapters[0]]


# ------------------------------------------------------------------ tensors, by layout
def adapter_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The adapter's (name, tensor) pairs, named as in the policy's state dict."""
    return ((n, t) for n, t in named if is_adapter_name(n))


def base_name(name: str) -> str:
    """A LoRA policy's state-dict name as the plain model names it (``q_proj.base_layer.weight`` ->
    ``q_proj.weight``, ``lm_head.modules_to_save.default.weight`` -> ``lm_head.weight``)."""
    name = name.replace(".base_layer.", ".")
    if _SAVED in name:
        head, tail = name.split(_SAVED, 1)
        name = head + "." + tail.split(".", 1)[1]
    return name


def base_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The frozen base model's tensors under the plain model's names (adapters left out)."""
    for n, t in named:
        if not is_adapter_name(n):
            yield base_name(n.replace(_ORIGINAL, ".")), t


def merged_tensors(named: Iterable[tuple[str, torch.Tensor]], scaling: dict[str, float]) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy as a plain model: each LoRA layer's weight W + (B @ A) x scaling (computed in float32, returned
    in W's dtype), a module to save's trained copy in place of the original, every other tensor as it is; under
    the plain model's names. ``named`` is a state-dict stream (whole tensors) in module order; a base weight waits
    only until its own layer's A and B have passed."""
    pending: dict[str, dict[str, torch.Tensor]] = {}  # LoRA module -> {"W", "A", "B"} seen so far
    for n, t in named:
        if _ORIGINAL in n:
            continue  # the trained copy (modules_to_save) takes its place
        module = next((n.split(p, 1)[0] for p in (".base_layer.weight", *_LORA_PARTS) if p in n), None)
        if module is None or module not in scaling:
            yield base_name(n), t
            continue
        key = "W" if n.endswith(".base_layer.weight") else ("A" if ".lora_A." in n else "B")
        got = pending.setdefault(module, {})
        got[key] = t
        if len(got) == 3:
            del pending[module]
            w = got["W"]
            delta = (got["B"].float() @ got["A"].float()) * scaling[module]
            yield f"{module}.weight", (w.float() + delta).to(w.dtype)
    if pending:
        raise ValueError(f"LoRA layers without their base weight or both matrices: {sorted(pending)}")


def peft_key(name: str) -> str:
    """A policy's adapter tensor name as a peft adapter file names it."""
    return "base_model.model." + (base_name(name) if _SAVED in name else name.replace(f".{ADAPTER}.", "."))


def write_adapter(folder: str | Path, named: Iterable[tuple[str, torch.Tensor]], config, base_path: str | None = None) -> Path:
    """A peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) from the adapter's
    tensors: what ``PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` load."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {peft_key(n): t.detach().to("cpu").contiguous() for n, t in adapter_tensors(named)}
    if not tensors:
        raise ValueError("no adapter tensors to write (is this a LoRA policy?)")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    data.update(base_model_name_or_path=base_path, inference_mode=True)
    data = {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}
    (folder / "adapter_config.json").write_text(json.dumps(data, indent=2, default=str))
    return folder


def resolve_sync(lora_cfg: Any, generator_is_engine: bool) -> str:
    """What a generator receives each step from a LoRA policy: ``adapter`` or ``merged``. A generator that
    samples from a copy of the policy module (transformers) always takes the adapter; an engine (vLLM) takes
    it as a LoRA adapter unless modules to save (whole trained modules, which its LoRA path does not load) or
    ``model.lora.sync=merged`` say otherwise."""
    sync = str(lora_cfg.get("sync", "auto"))
    if not generator_is_engine:
        return "adapter"
    if sync == "auto":
        return "merged" if list(lora_cfg.get("modules_to_save") or []) else "adapter"
    return sync


def merge_into_base(model: torch.nn.Module, seed: int = 0) -> None:
    """Fold the adapter into the base (W += B A x scaling; a module to save's copy becomes its original) and
    start a fresh adapter (B = 0, A from ``seed``): the policy is unchanged, and its base is now this policy
    (a cold start's result becomes the RL run's KL reference)."""
    from peft.utils.other import ModulesToSaveWrapper

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, m in _layers(model):
            w = m.get_base_layer().weight
            w.copy_((w.float() + m.get_delta_weight(ADAPTER).float()).to(w.dtype))
            m.reset_lora_parameters(ADAPTER, init_lora_weights=True)
        for m in model.modules():
            if isinstance(m, ModulesToSaveWrapper):
                m.original_module.load_state_dict(m.modules_to_save[ADAPTER].state_dict())
