"""Our per-token GRPO losses against TRL's GRPOTrainer on identical tensors.

Runs only where ``trl`` can be imported (it is not a dependency). TRL's loss is
a method of its trainer; it is called here on a minimal stand-in for the
trainer that hands it our per-token logprobs, so both sides see the same
tensors. Compared: the loss value and its gradient with respect to the
per-token logprobs, for TRL's ``grpo``, ``dr_grpo``, ``dapo`` and ``bnpo``
loss types, with and without the k3 KL term and with clip-higher.

TRL is not a dependency of the project: this test installs it once, without its
dependencies (``pip install --no-deps --target``), into a folder of the virtual
environment (``<venv>/trl-parity-<version>``) and imports it from there, so that
"equal to TRL" is checked on every run of the suite. Its imports need
``datasets`` (a dependency) and ``accelerate`` (from the ``gguf`` extra, which
``make setup`` installs).
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

from reasonrl import grpo

TRL_VERSION = "1.16.0"


def _trl_grpo():
    """TRL's grpo_trainer module, from an install of pinned TRL into the venv on first use."""
    import importlib
    import subprocess
    import sys
    from pathlib import Path

    target = Path(sys.prefix) / f"trl-parity-{TRL_VERSION}"
    if not (target / "trl").is_dir():
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"trl=={TRL_VERSION}"],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.fail(f"could not install trl=={TRL_VERSION} for the parity check: {out.stderr[-1000:]}")
    if str(target) not in sys.path:
        sys.path.append(str(target))  # appended: trl's copy never shadows an installed package
    return importlib.import_module("trl.trainer.grpo_trainer")


trl_grpo = _trl_grpo()

# TRL loss type -> our aggregation
PAIRS = {"grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm", "dapo": "token_mean", "bnpo": "token_mean"}


class _Acc:
    num_processes = 1
    sync_gradients = True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps_low, eps_high, max_len):
    entropies = torch.zeros_like(logp)
    fake = types.SimpleNamespace(
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        accelerator=_Acc(),
        _entropy_bonus_enabled=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropies, None),
    )
    n, t = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


def _our_loss(agg, logp, old, ref, adv, mask, beta, eps_low, eps_high, max_len):
    per_tok, _ = grpo.clipped_surrogate(logp, old, adv, eps_low, eps_high)
    if beta:
        per_tok = per_tok + beta * grpo.kl_estimate(logp, ref, "k3")
    return grpo.aggregate(agg, per_tok, mask, total_tokens=int(mask.sum()), total_seqs=mask.shape[0], max_len=max_len)


@pytest.mark.parametrize("loss_type", sorted(PAIRS))
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_loss_and_gradient_match_trl(loss_type, beta, eps_high):
    g = torch.Generator().manual_seed(0)
    n, t, max_len = 6, 9, 12
    base = -torch.rand(n, t, generator=g) * 2
    old = base + 0.3 * torch.randn(n, t, generator=g)  # ratios well away from 1: clipping is exercised
    ref = base + 0.2 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.tensor([9, 3, 7, 1, 9, 5])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    losses, grads = [], []
    for fn, name in ((_trl_loss, loss_type), (_our_loss, PAIRS[loss_type])):
        logp = base.clone().requires_grad_(True)
        loss = fn(name, logp, old, ref, adv, mask, beta, 0.2, eps_high, max_len)
        loss.backward()
        losses.append(loss.item())
        grads.append(logp.grad * mask)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)
