"""Reference math for tests: the full-vocabulary versions of what the trainer computes in chunks.

These hold (tokens x vocabulary) tensors, which the trainer never does
(:mod:`reasonrl.logprobs` computes the same values from the final hidden
states in blocks); tests compare the two.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, T, V) logits, (N, T) targets -> (N, T) log p(target)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """(N, T, V) -> (N, T) entropy of the full next-token distribution, in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``x`` over the entries where ``mask`` is nonzero (0 when there are none)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)
