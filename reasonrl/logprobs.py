"""Per-token log-probabilities and entropies without a (tokens x vocabulary) tensor.

:func:`token_logprobs_and_entropy` takes the final hidden states at the
positions that matter (completion tokens only), the output layer's weight (and
bias), the targets and the sampling temperature, and computes log p(target)
and, when asked, the entropy of each position's next-token distribution, in
blocks of ``token_chunk`` positions by ``vocab_chunk`` vocabulary entries with
an online log-sum-exp: each block's matmul in the dtype the model computed its
hidden states in (bfloat16 under autocast, with float32 accumulation), the
softmax arithmetic in float32. Backward
recomputes each block's logits instead of saving them, so memory is
O(tokens x hidden + block), never O(tokens x V). :func:`completion_logprobs`
runs a Hugging Face causal LM up to its final hidden states and applies it at
the completion positions of a packed batch.

It works for any model whose output layer is a linear map (tied to the input
embedding or not). It does not compute a loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

TOKEN_CHUNK, VOCAB_CHUNK = 1024, 8192


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, want_entropy: bool, token_chunk: int, vocab_chunk: int):
        M, V = hidden.shape[0], weight.shape[0]
        logz = torch.empty(M, device=hidden.device, dtype=torch.float32)
        target_logit = torch.empty(M, device=hidden.device, dtype=torch.float32)
        mean_logit = torch.empty(M, device=hidden.device, dtype=torch.float32) if want_entropy else None
        for t0 in range(0, M, token_chunk):
            h = hidden[t0 : t0 + token_chunk]  # (m, H), in the dtype the model computed in
            tgt = targets[t0 : t0 + token_chunk]
            run_max = torch.full((h.shape[0],), float("-inf"), device=h.device)
            run_sum = torch.zeros(h.shape[0], device=h.device)  # sum exp(z - run_max)
            run_zsum = torch.zeros(h.shape[0], device=h.device) if want_entropy else None  # sum exp(z - run_max) * z
            tl = torch.zeros(h.shape[0], device=h.device)
            for v0 in range(0, V, vocab_chunk):
                z = _block_logits(h, weight, bias, v0, vocab_chunk, temperature)  # (m, v)
                new_max = torch.maximum(run_max, z.max(dim=1).values)
                scale = torch.exp(run_max - new_max)
                e = torch.exp(z - new_max[:, None])
                run_sum = run_sum * scale + e.sum(dim=1)
                if want_entropy:
                    run_zsum = run_zsum * scale + (e * z).sum(dim=1)
                run_max = new_max
                inside = (tgt >= v0) & (tgt < v0 + z.shape[1])
                if inside.any():
                    idx = (tgt - v0).clamp(0, z.shape[1] - 1)
                    tl = torch.where(inside, z.gather(1, idx[:, None]).squeeze(1), tl)
            logz[t0 : t0 + token_chunk] = run_max + torch.log(run_sum)
            target_logit[t0 : t0 + token_chunk] = tl
            if want_entropy:
                mean_logit[t0 : t0 + token_chunk] = run_zsum / run_sum  # E_p[z]
        logp = target_logit - logz
        entropy = (logz - mean_logit) if want_entropy else torch.zeros_like(logz)
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets, logz,
                              mean_logit if want_entropy else torch.empty(0))  # fmt: skip
        ctx.has_bias, ctx.want_entropy = bias is not None, want_entropy
        ctx.set_materialize_grads(False)  # an output no loss uses (the entropy, often) has no gradient to compute
        ctx.temperature, ctx.token_chunk, ctx.vocab_chunk = temperature, token_chunk, vocab_chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, logz, mean_logit = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        T, V = ctx.temperature, weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(V, device=weight.device, dtype=torch.float32) if need_b else None
        use_entropy = ctx.want_entropy and grad_entropy is not None
        for t0 in range(0, hidden.shape[0], ctx.token_chunk):
            sl = slice(t0, t0 + ctx.token_chunk)
            h, tgt, lz = hidden[sl], targets[sl], logz[sl]
            gl = grad_logp[sl].float() if grad_logp is not None else torch.zeros_like(lz)
            ge = grad_entropy[sl].float() if use_entropy else None
            for v0 in range(0, V, ctx.vocab_chunk):
                z = _block_logits(h, weight, bias, v0, ctx.vocab_chunk, T)  # (m, v)
                p = torch.exp(z - lz[:, None])
                # d logp / dz = onehot(target) - p;  d entropy / dz = -p * (z - E_p[z])
                gz = -p * gl[:, None]
                inside = (tgt >= v0) & (tgt < v0 + z.shape[1])
                rows = inside.nonzero(as_tuple=True)[0]
                gz[rows, tgt[rows] - v0] += gl[rows]
                if use_entropy:
                    gz -= ge[:, None] * p * (z - mean_logit[sl][:, None])
                gz = gz / T
                w = weight[v0 : v0 + z.shape[1]].to(h.dtype)
                g = gz.to(h.dtype)  # the matmuls in the compute dtype (fp32 accumulation), the rest in float32
                if need_h:
                    grad_h[sl] += (g @ w).float()
                if need_w:
                    grad_w[v0 : v0 + z.shape[1]] += (g.t() @ h).float()
                if need_b:
                    grad_b[v0 : v0 + z.shape[1]] += gz.sum(dim=0)
        return (grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None, None, None)  # fmt: skip


def _block_logits(h: Tensor, weight: Tensor, bias: Tensor | None, v0: int, vocab_chunk: int, temperature: float) -> Tensor:
    """(m, v) float32 logits of the vocabulary slice [v0, v0 + vocab_chunk), divided by the temperature."""
    w = weight[v0 : v0 + vocab_chunk].to(h.dtype)
    z = (h @ w.t()).float()  # the matmul in the compute dtype (bfloat16 under autocast), everything after in float32
    if bias is not None:
        z = z + bias[v0 : v0 + vocab_chunk].float()
    return z / temperature if temperature != 1.0 else z


def token_logprobs_and_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float = 1.0,
                               want_entropy: bool = False, token_chunk: int | None = None,
                               vocab_chunk: int | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """hidden (M, H), weight (V, H), bias (V,) or None, targets (M,) -> (M,) log p(target), (M,) entropy (zeros
    unless ``want_entropy``), under softmax((hidden @ weight.T + bias) / temperature), in float32."""
    return _ChunkedLogprobs.apply(
        hidden,
        weight,
        bias,
        targets,
        float(temperature),
        bool(want_entropy),
        token_chunk or TOKEN_CHUNK,
        vocab_chunk or VOCAB_CHUNK,
    )


def output_layer(model) -> tuple[Tensor, Tensor | None]:
    """The weight (V, H) and bias of a causal LM's output layer (a Linear map, tied or not)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"the chunked logprob path needs a linear output layer, not {type(head).__name__}")
    return head.weight, head.bias


def final_hidden_states(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
    """(n, L, H) hidden states after the final norm, before the output layer (the logits are never made)."""
    base = getattr(model, model.base_model_prefix, None) if getattr(model, "base_model_prefix", None) else None
    if base is None:
        raise TypeError(f"{type(model).__name__} exposes no base model (base_model_prefix) for the chunked logprob path")
    from reasonrl.sharding import is_sharded

    if not is_sharded(model):
        out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # Sharded (FSDP2): the root's forward gathers the embedding and output layer and keeps them gathered for
    # backward, so the base model runs inside it; the base's output is caught on the way and only one
    # position per sequence goes through the output layer.
    caught: list[Tensor] = []
    hook = base.register_forward_hook(
        lambda _m, _a, out: caught.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
    )
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return caught[0]


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, temperature: float = 1.0,
                        want_entropy: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(n, L-1) log p(input_ids[:, 1:]) and entropies, computed only where ``completion_mask`` (n, L-1) is set
    (zeros elsewhere); the output layer sees the final hidden states in blocks (no (tokens x V) tensor)."""
    hidden = final_hidden_states(model, input_ids, attention_mask)[:, :-1]  # (n, L-1, H)
    where = completion_mask.bool()
    weight, bias = output_layer(model)
    logp, ent = token_logprobs_and_entropy(hidden[where], weight, bias, input_ids[:, 1:][where], temperature, want_entropy)
    full_logp = torch.zeros(completion_mask.shape, device=logp.device, dtype=torch.float32)
    full_logp = full_logp.masked_scatter(where, logp)
    full_ent = torch.zeros(completion_mask.shape, device=logp.device, dtype=torch.float32)
    if want_entropy:
        full_ent = full_ent.masked_scatter(where, ent)
    return full_logp, full_ent
