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
the completion positions of a packed batch. :func:`batch_logprobs` takes
either layout of :mod:`reasonrl.data`: a ``Packed`` batch goes through
:func:`completion_logprobs`; a ``SharedPacked`` one (``rollout.share_prompt``)
runs each distinct prompt once and its completions on top of the prompt's
keys and values, for the model families :func:`prompt_sharing_supported`
accepts (``SHARED_PROMPT_MODEL_TYPES``, full attention only), sharded with
FSDP2 or not.

It works for any model whose output layer is a linear map (tied to the input
embedding or not). It does not compute a loss.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from reasonrl.data import Packed, SharedPacked

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
    from reasonrl.lora import active_module

    head = active_module(model.get_output_embeddings())  # a LoRA policy may train it whole (modules to save)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"the chunked logprob path needs a linear output layer, not {type(head).__name__}")
    return head.weight, head.bias


def final_hidden_states(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None,
                        past_key_values: Cache | None = None) -> Tensor:  # fmt: skip
    """(n, L, H) hidden states after the final norm, before the output layer (the logits are never made);
    ``past_key_values``: keys and values the sequences attend to in front of their own (see below)."""
    base = getattr(model, model.base_model_prefix, None) if getattr(model, "base_model_prefix", None) else None
    if base is None:
        raise TypeError(f"{type(model).__name__} exposes no base model (base_model_prefix) for the chunked logprob path")
    from reasonrl.sharding import is_sharded

    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  past_key_values=past_key_values, use_cache=False)  # fmt: skip
    if not is_sharded(model):
        out = base(**inputs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # Sharded (FSDP2): the root's forward gathers the embedding and output layer and keeps them gathered for
    # backward, so the base model runs inside it; the base's output is caught on the way and only one
    # position per sequence goes through the output layer.
    caught: list[Tensor] = []
    hook = base.register_forward_hook(
        lambda _m, _a, out: caught.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
    )
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        hook.remove()
    return caught[0]


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, temperature: float = 1.0,
                        want_entropy: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(n, L-1) log p(input_ids[:, 1:]) and entropies, computed only where ``completion_mask`` (n, L-1) is set
    (zeros elsewhere); the output layer sees the final hidden states in blocks (no (tokens x V) tensor)."""
    hidden = final_hidden_states(model, input_ids, attention_mask)[:, :-1]  # (n, L-1, H)
    return _logprobs_where(model, hidden, input_ids[:, 1:], completion_mask, temperature, want_entropy)


def _logprobs_where(model, hidden: Tensor, targets: Tensor, mask: Tensor, temperature: float, want_entropy: bool):
    """(n, T) logprobs (and entropies) of ``targets`` (n, T) from ``hidden`` (n, T, H) where ``mask`` is set, else 0."""
    where = mask.bool()
    weight, bias = output_layer(model)
    logp, ent = token_logprobs_and_entropy(hidden[where], weight, bias, targets[where], temperature, want_entropy)
    full_logp = torch.zeros(mask.shape, device=logp.device, dtype=torch.float32)
    full_logp = full_logp.masked_scatter(where, logp)
    full_ent = torch.zeros(mask.shape, device=logp.device, dtype=torch.float32)
    if want_entropy:
        full_ent = full_ent.masked_scatter(where, ent)
    return full_logp, full_ent


# ---------------------------------------------------------------- one forward pass per prompt, not per completion
# A GRPO group's G completions share their prompt. The prompt runs through the model once (with gradients): its
# keys and values are recorded per layer, repeated for the group's rows (index_select, so the gradients of all G
# completions sum back into the one prompt pass), and the completions run on top of them with their true
# positions. The result equals the packed full pass up to float rounding (tests/test_shared_prompt.py).

SHARED_PROMPT_MODEL_TYPES = ("llama", "qwen2", "qwen3")  # full causal attention over a plain KV cache; tested


def prompt_sharing_supported(model) -> bool:
    """Whether :func:`batch_logprobs` may run ``model``'s prompts once per group: a model of a family whose
    attention reads a plain KV cache, with no sliding-window layers (sharded or not)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(model, "base_model_prefix", None) is None:
        return False
    if getattr(cfg, "model_type", None) not in SHARED_PROMPT_MODEL_TYPES:
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False))


class _RecordingLayer(DynamicLayer):
    """Hands the layer's keys and values back unchanged and keeps the last ones (a recomputation under gradient
    checkpointing stores the same again); it reports no past, so the prompt pass is an ordinary causal pass."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return query_length, 0


class _PrefixLayer(DynamicLayer):
    """A prompt's keys and values (one row per completion) in front of the completion's own; never grows, so a
    recomputation under gradient checkpointing sees the same prefix."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.keys.shape[-2] + query_length, 0


@contextlib.contextmanager
def _cache_kept_under_checkpointing(model):
    """Checkpointed decoder layers drop any KV cache they are given unless they declare it safe to keep; these
    caches are (neither grows, so the backward recomputation reads what the forward read)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache  # the class's own value again


def shared_prompt_hidden_states(model, batch: SharedPacked) -> Tensor:
    """(n, C, H) final hidden states: position j is the one that predicts completion token j (the prompt's last
    position for j = 0), from one pass over the distinct prompts and one over the completions on top of them."""
    rows = batch.row_prompt
    with _cache_kept_under_checkpointing(model):
        recorded = Cache(layer_class_to_replicate=_RecordingLayer)
        prompt_hidden = final_hidden_states(model, batch.prompt_ids, batch.prompt_mask, past_key_values=recorded)  # (g, P, H)
        prefix = Cache(
            layers=[_PrefixLayer(k.keys.index_select(0, rows), k.values.index_select(0, rows)) for k in recorded.layers]
        )
        positions = batch.prompt_len[rows][:, None] + torch.arange(batch.completion_ids.shape[1], device=rows.device)
        completion_hidden = final_hidden_states(model, batch.completion_ids, batch.attention_mask, positions, prefix)  # (n, C, H)
    last = prompt_hidden[rows, batch.prompt_len[rows] - 1]  # (n, H): predicts completion token 0
    return torch.cat([last[:, None], completion_hidden[:, :-1]], dim=1)


def batch_logprobs(model, batch: Packed | SharedPacked, temperature: float = 1.0, want_entropy: bool = False):
    """Logprobs and entropies of a packed batch's completion tokens (shapes as its ``completion_mask``)."""
    if isinstance(batch, SharedPacked):
        hidden = shared_prompt_hidden_states(model, batch)
        return _logprobs_where(model, hidden, batch.completion_ids, batch.completion_mask, temperature, want_entropy)
    return completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_mask, temperature, want_entropy)
