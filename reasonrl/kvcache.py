"""A key/value cache for ``transformers.generate`` that writes in place instead of concatenating.

transformers' dynamic cache appends each step's keys and values with ``torch.cat``, copying everything cached so
far: quadratic in the length, and about a third of a small model's generation time on this project's CPU
(profiled: 16 prompts x 8 samples x 64 tokens on a 2-layer Qwen2). :func:`preallocated_cache` gives ``generate``
the same dynamic cache with its plain layers replaced by :class:`BufferedLayer`, which holds views of buffers
sized for the prompt plus the new tokens. The samples are the same (the attention sees the same keys and
values); only the copying goes.

It does not change sliding-window or other special layers, and it is not a static cache (attention covers the
positions written so far, not the whole capacity).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class BufferedLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values are views of preallocated (batch, heads, capacity, dim)
    buffers. It grows by doubling when a step would overflow them, and starts over from the current keys when
    something replaced them (a crop keeps the buffer; a batch selection or reordering makes new tensors)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = int(capacity)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self.get_seq_length(), key_states.shape[-2]
        ours = self._k is not None and (n == 0 or self.keys.data_ptr() == self._k.data_ptr())
        if not ours or self._k.shape[:2] != key_states.shape[:2] or n + t > self._k.shape[-2]:
            size = max(self.capacity, n + t) if self._k is None else max(self.capacity, 2 * (n + t))
            k = key_states.new_empty((*key_states.shape[:2], size, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:2], size, value_states.shape[-1]))
            if n:
                k[:, :, :n], v[:, :, :n] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, n : n + t] = key_states
        self._v[:, :, n : n + t] = value_states
        self.keys, self.values = self._k[:, :, : n + t], self._v[:, :, : n + t]
        return self.keys, self.values

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()


def preallocated_cache(model, capacity: int) -> dict:
    """``{"past_key_values": cache}`` for ``model.generate``: the model's dynamic cache with each plain layer a
    :class:`BufferedLayer` of ``capacity`` positions (prompt width + new tokens); {} (generate's own default)
    for a model whose cache cannot be built from its config."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - no layered cache config for this model: transformers decides
        return {}
    if not cache.layers:
        return {}
    cache.layers = [BufferedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return {"past_key_values": cache}
