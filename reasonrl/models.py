"""Where a run's policy comes from: a Hugging Face folder, a GGUF file, or the tiny base model.

``load_policy(model_cfg, progress, device)`` resolves the ``model`` config
node to a folder (``model.path``; else ``model.gguf``, converted once; else
the tiny base model, built and pretrained on first use; both cached under
``$XDG_CACHE_HOME/reasonrl``) and returns ``(model, tokenizer, folder)``, the
model on ``device`` (default: ``model.device``).

It does not train anything itself: the tiny base model's pretraining lives in
:mod:`reasonrl.tiny`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reasonrl.policy import load_hf


def model_path(model_cfg: Any, progress: bool = True) -> Path:
    """The folder the ``model`` node names, built or converted on first use."""
    if model_cfg.path:
        return Path(str(model_cfg.path)).expanduser()
    if model_cfg.gguf:
        from reasonrl.gguf import get_or_convert

        return get_or_convert(model_cfg.gguf)
    from reasonrl.tiny import get_or_build_base

    return get_or_build_base(model_cfg.arch, model_cfg.pretrain, progress=progress)


def load_policy(model_cfg: Any, progress: bool = True, device: torch.device | str | None = None, seed: int = 0):
    """(model, tokenizer, source folder) for a ``model`` config node, on ``device`` (default: model.device); with
    ``model.lora.r`` > 0 the model carries LoRA adapters (initialised from ``seed``) and only they train."""
    from reasonrl import lora

    path = model_path(model_cfg, progress)
    model, tok = load_hf(path, model_cfg.dtype)
    if lora.enabled(model_cfg):
        lora.add_adapters(model, model_cfg.lora, seed)
    if device is None:
        from reasonrl.runtime import pick_device

        device = pick_device(model_cfg.get("device", "auto"))
    return model.to(device), tok, path
