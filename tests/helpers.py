"""Builders shared by the test files: tiny models, rollout batches, constants and a tensor-size probe.

Fixtures and the config composer live in ``conftest.py``, reference math in ``oracle.py``, the thread world
in ``ranks.py``; test files import from these and never from one another.

Two batches recur:

* the learning batch (``B``, ``G``, ``V``, ``PAD``, ``REWARDS``, :func:`tiny_model`, :func:`one_token_rollouts`):
  B = 3 prompts x G = 4 samples on a 1-layer Llama of vocabulary V = 40, every completion one token of its own,
  so a completion's log-probability is one number an update should move in the direction of its advantage;
* the family batch (``FAMILY_V``, :func:`model_of_family`, :func:`random_length_rollouts`): prompts of different
  lengths with completions of 0-14 tokens, for Llama, Qwen2 and Qwen3 models of vocabulary 300.
"""

from __future__ import annotations

import itertools
import random

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reasonrl.rollout import Rollout

from conftest import compose

# -- the learning batch -------------------------------------------------------------------------------------------
B, G, V = 3, 4, 40
PAD = 0
# Rewards per sample, prompt-major. Within each group of G the signs of the advantages are
# +,+,+,- / -,-,-,+ / +,-,-,-; grouping by B instead of G would give most samples 0.
REWARDS = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0])


def tiny_model(seed: int = 0):
    """A 1-layer Llama of vocabulary V (no bos/eos), the model the learning batch updates."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def one_token_rollouts(completion_of=lambda k: 10 + k, logprobs=None, finish=lambda k: "stop") -> list[Rollout]:
    """B*G rollouts: prompt b is [1, 2+b], sample k completes it with its own token and stops with ``finish(k)``."""
    out = []
    for k in range(B * G):
        b = k // G
        out.append(
            Rollout(
                prompt_index=b,
                prompt_ids=[1, 2 + b],
                completion_ids=[completion_of(k)],
                text="",
                finish_reason=finish(k),
                logprobs=[] if logprobs is None else [float(logprobs[k])],
            )
        )
    return out


@torch.no_grad()
def one_token_logprobs(model, ros) -> torch.Tensor:
    """(N,) log p(completion token | prompt) under ``model``, for rollouts of one completion token each."""
    ids = torch.tensor([r.prompt_ids + r.completion_ids for r in ros])
    logits = model(input_ids=ids).logits[:, -2].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -1:]).squeeze(-1)


def algorithm(preset: str = "grpo", *overrides: str):
    """The ``algorithm`` node of the train config with ``preset`` and ``algorithm.<override>`` applied."""
    return compose("train", [f"algorithm={preset}", *[f"algorithm.{o}" for o in overrides]]).algorithm


def flat_params(model) -> torch.Tensor:
    """Every parameter of ``model``, detached and flattened into one vector."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- the family batch ---------------------------------------------------------------------------------------------
FAMILY_V = 300


def model_of_family(kind: str, **extra):
    """A 2-layer model of family ``kind`` ("llama", "qwen2", "qwen3"), vocabulary FAMILY_V; ``extra`` goes to its config."""
    import transformers as T

    classes = {"llama": (T.LlamaConfig, T.LlamaForCausalLM), "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
               "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM)}  # fmt: skip
    config_cls, model_cls = classes[kind]
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=FAMILY_V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=64, max_position_embeddings=256, pad_token_id=0, **extra)  # fmt: skip
    return model_cls(cfg)


def random_length_rollouts(seed: int = 0, groups: int = 3, g: int = 4) -> list[Rollout]:
    """``groups`` prompts of different lengths x ``g`` completions of 0-14 tokens; one with a partial loss mask."""
    rng = random.Random(seed)
    out = []
    for b in range(groups):
        prompt = [rng.randrange(1, FAMILY_V) for _ in range(3 + 4 * b)]
        for k in range(g):
            n = 0 if (b, k) == (1, 0) else rng.randrange(1, 15)  # an empty completion too
            comp = [rng.randrange(1, FAMILY_V) for _ in range(n)]
            out.append(
                Rollout(
                    prompt_index=b,
                    prompt_ids=prompt,
                    completion_ids=comp,
                    text="",
                    finish_reason="stop",
                    logprobs=[-rng.uniform(0.5, 6.0) for _ in comp],
                    loss_mask=[int(rng.random() > 0.3) for _ in comp] if k == 2 else None,
                )
            )
    return out


# -- token batches of any vocabulary, and what they materialise ---------------------------------------------------
def llama_of_vocab(vocab: int, tie: bool = False, seed: int = 0, layers: int = 2):
    """A Llama of vocabulary ``vocab`` (large ones show a tokens x vocabulary tensor), tied or not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def batch(vocab: int, n: int = 5, length: int = 20, seed: int = 1):
    """(ids, attention mask, completion mask) of ``n`` random sequences: the second half of each is the completion,
    row 1 right-padded by 5."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    att = torch.ones_like(ids)
    att[1, length - 5 :], ids[1, length - 5 :] = 0, 0  # a padded row
    cmask = torch.zeros(n, length - 1)
    cmask[:, length // 2 :] = 1
    cmask[1, length - 6 :] = 0
    return ids, att, cmask


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any op's output has."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


# -- micro-batch plans --------------------------------------------------------------------------------------------
def contiguous_splits(order: list[int]):
    """Every way of cutting ``order`` into contiguous runs (2^(n-1) of them)."""
    for cuts in itertools.product([0, 1], repeat=len(order) - 1):
        plan, cur = [], [order[0]]
        for c, i in zip(cuts, order[1:]):
            if c:
                plan.append(cur)
                cur = []
            cur.append(i)
        plan.append(cur)
        yield plan


# -- the scripted policy --------------------------------------------------------------------------------------------
TOOL_CHARS = list("0123456789+=?Q: ()abcdefghijklmnopqrstuvwxyz.,_\n")
TOOL_TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<python>", "</python>", "<output>", "</output>"]


def tool_tokenizer():
    """A character-level tokenizer with the think/answer and tool tags as single tokens."""
    from reasonrl.tiny import build_tokenizer

    return build_tokenizer(TOOL_CHARS, TOOL_TAGS)


def scripted_model(tokenizer, script: dict[str, str], hidden: int = 128, margin: float = 40.0):
    """A real 1-layer Llama that is a bigram model: its attention and MLP write nothing, so the next token
    depends on the current one alone, and ``script`` (token -> next token, as text) fixes it with a logit
    margin that makes sampling at temperature 1 deterministic in practice. Tokens with no entry go to eos.
    Loads in vLLM too (head size 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    assert vocab <= hidden, f"the bigram trick needs vocab {vocab} <= hidden {hidden}"
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=1024,  # room for a benchmark's R1 prompt
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        emb = torch.zeros(vocab, hidden)
        emb[torch.arange(vocab), torch.arange(vocab)] = hidden**0.5  # RMS-normalised: unchanged
        model.model.embed_tokens.weight.copy_(emb)
        head = torch.zeros(vocab, hidden)
        for a in range(vocab):
            head[tokenizer.eos_token_id, a] = margin / hidden**0.5
        for a, b in script.items():
            head[:, ids(a)] = 0.0
            head[ids(b), ids(a)] = margin / hidden**0.5
        model.lm_head.weight.copy_(head)
    return model


def chain(text: str, tokenizer) -> dict[str, str]:
    """The bigram script that writes ``text`` (its tokens must not repeat, save the last) after its first
    token."""
    toks = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    out: dict[str, str] = {}
    for a, b in zip(toks, toks[1:]):
        assert out.get(a, b) == b, f"token {a!r} repeats with another successor in {text!r}"
        out[a] = b
    return out


TOOL_SCRIPT = "?<think><python>print(1+2)</python>", "</output></think><answer>3</answer>"


def save_tool_policy(path, margin: float = 7.0):
    """A scripted policy that calls the Python tool (``print(1+2)`` between ``<python>`` tags) and then answers,
    saved as a Hugging Face folder for ``model=hf model.path=...``; at this margin about one token in 25 leaves
    the script, so rollouts differ: most call the tool, some call none and some write code that fails."""
    tok = tool_tokenizer()
    script = {k: v for text in TOOL_SCRIPT for k, v in chain(text, tok).items()}
    scripted_model(tok, script, margin=margin).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tool_run(model_dir) -> list[str]:
    """Overrides that train the scripted tool policy on the arithmetic world with the Python tool between tags."""
    return [
        "model=hf",
        f"model.path={model_dir}",
        "env.name=python",
        "env.max_turns=3",
        "env.max_tool_calls=2",
        "env.tool.open='<python>'",
        "env.tool.close='</python>'",
        "env.tool.stop_strings=['</python>']",
        "env.tool.output='<output>{output}</output>'",
        "env.tool.timeout_s=1.0",
    ]
