"""Sharding the policy across processes with FSDP2, and getting whole tensors back out of it.

:func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` to every
decoder layer and then to the root module, with a mixed-precision policy
(parameters all-gathered in the compute dtype, gradients reduced in float32,
float32 master weights kept sharded). Gradients are *summed* over ranks, not
averaged: the loss is already normalised by the whole batch's token and
sequence counts (:mod:`reasonrl.update`), so the update is the same at any
number of processes. The frozen KL reference is sharded the same way. In a
world of one nothing is sharded unless asked (``model.fsdp=on``, which needs
a process group: ``torchrun --nproc-per-node 1``) and every helper here is the
identity. A sharded model takes the same update as a whole one, the
shared-prompt pass (``rollout.share_prompt``) included.

:func:`full_weights` keeps a sharded model gathered while the transformers
generator samples from it: one all-gather per generate call, after which each
rank runs as many forward passes as its own completions need (no collective
per token). :func:`full_tensors` yields the state dict one whole tensor at a
time, never the whole unsharded model at once (weight sync into vLLM);
:func:`full_state_dict` collects those tensors on the main process's CPU for
a Hugging Face folder (``checkpoints/final``). Training checkpoints save the
shards themselves (:mod:`reasonrl.checkpoint`).

It does not decide what runs on which rank (:mod:`reasonrl.runtime`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from reasonrl.runtime import Runtime


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (the classes it declares unsplittable)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TypeError(f"{type(model).__name__} declares no decoder layer classes (_no_split_modules) to shard by")
    return layers


def shard_model(model: torch.nn.Module, runtime: Runtime, param_dtype: torch.dtype, mode: str = "auto") -> torch.nn.Module:
    """``model`` sharded over the ranks (in place; returned): ``fully_shard`` per decoder layer, then the root.
    ``mode``: auto (shard when there is more than one process), on, off."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"model.fsdp must be auto, on or off, not {mode!r}")
    if mode == "off" or (mode == "auto" and not runtime.distributed):
        if runtime.distributed:
            raise ValueError("model.fsdp=off with more than one process: every rank would hold and update its own copy")
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():  # model.fsdp=on in a world of one: a process group of one
        raise RuntimeError("model.fsdp=on needs a process group: launch with torchrun (--nproc-per-node 1 is fine)")
    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    trainable = any(p.requires_grad for p in model.parameters())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if trainable:
        for m in model.modules():
            if isinstance(m, FSDPModule):  # a sum: the loss carries the global normalisation already
                m.set_gradient_divide_factor(1.0)
                if hasattr(m, "set_force_sum_reduction_for_comms"):  # gloo has no pre-multiplied sum (older torch:
                    m.set_force_sum_reduction_for_comms(True)  # a factor of 1 is a plain sum there anyway)
    return model


@contextlib.contextmanager
def full_weights(model: torch.nn.Module):
    """Within: the model's parameters stay gathered across forward passes (a no-op for an unsharded model).
    Every rank must enter it the same number of times (the gather is a collective)."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    shards = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in shards:
        m.set_reshard_after_forward(False, recurse=False)
    model.unshard()
    for m in shards:
        if m is not model:
            m.unshard()
    try:
        yield
    finally:
        for m in shards:
            m.reshard()
            # the root's parameters stay gathered between forward and backward; the layers' are freed
            m.set_reshard_after_forward(m is not model, recurse=False)


def full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) for each state-dict entry, gathered one at a time on every rank."""
    from torch.distributed.tensor import DTensor

    for name, t in model.state_dict().items():
        yield name, (t.full_tensor() if isinstance(t, DTensor) else t)


def full_state_dict(model: torch.nn.Module, on_main: bool = True) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU (on the main process when ``on_main``; others get {})."""
    out = {}
    for name, t in full_tensors(model):
        if on_main:
            out[name] = t.detach().cpu()
    return out
