"""The tiny base model: a character-level tokenizer, a small Llama, pretrained and cached.

``get_or_build_base(arch, pretrain)`` returns a Hugging Face folder under
``$XDG_CACHE_HOME/reasonrl/models/`` keyed by a hash of both configs (and the
corpus version): the first call builds the tokenizer and model from the config,
pretrains it on the arithmetic world's corpus with the project's SFT trainer,
checks that the saved folder holds every weight, and moves it into place
(:func:`reasonrl.cache.build_once`: one build per machine, also under
``torchrun``; a second run waits and says for whom); later calls return at once.

Pretraining stops at ``pretrain.max_steps`` or earlier, once the step-by-step
skill is there: greedy held-out accuracy with the think block forced open
reaches ``pretrain.target_accuracy`` (checked every ``eval_every`` steps).
``pretrain.max_steps=0`` skips pretraining: a randomly initialised model,
built in seconds, for speed checks and tests of the plumbing.

The attention head size is 64 so that vLLM's CPU kernels accept the model.
It does not download anything.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from reasonrl.cache import build_once, cache_root, check_model_folder, config_key, save_model_folder

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def build_tokenizer(charset: list[str], tags: list[str], vocab_size: int | None = None):
    """A character-level fast tokenizer whose tags are single (non-special) tokens.

    ``vocab_size`` larger than the natural size pads the vocabulary with filler
    tokens (``<f123>``) so that a model with a realistic embedding size can decode
    whatever it samples.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK] + list(charset))}
    for i in range(len(vocab) + len(tags), vocab_size or 0):
        vocab[f"<f{i}>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, EOS, UNK)])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    if vocab_size and tk.get_vocab_size() != vocab_size:
        raise ValueError(f"tokenizer has {tk.get_vocab_size()} tokens, asked for {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, eos_token=EOS, unk_token=UNK, clean_up_tokenization_spaces=False
    )


def build_model(arch: Any, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM from the ``model.arch`` config."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch.type not in kinds:
        raise ValueError(f"model.arch.type {arch.type!r} is not supported; use one of {sorted(kinds)}")
    config_cls, model_cls = kinds[arch.type]
    cfg = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads or arch.num_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return model_cls(cfg)


def _plain(node: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def base_path(arch: Any, pretrain: Any) -> Path:
    key = config_key({"arch": _plain(arch), "pretrain": _plain(pretrain), "corpus": CORPUS_VERSION})
    return cache_root() / "models" / f"tiny-{pretrain.corpus}-{key}"


def forced_think_accuracy(model, tokenizer, problems: list[dict], max_new_tokens: int = 40) -> float:
    """Greedy accuracy when the model may not close the think block at once."""
    from reasonrl.evals.harness import sample_and_score
    from reasonrl.rollout import HFGenerator
    from reasonrl.tasks import arith

    res = sample_and_score(
        HFGenerator(model, tokenizer),
        tokenizer,
        problems,
        render=lambda p: arith.render_prompt(p, "r1_think"),
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        banned_first_tokens=(tokenizer.convert_tokens_to_ids("</think>"),),
    )
    return res["accuracy"]


def get_or_build_base(arch: Any, pretrain: Any, progress: bool = True) -> Path:
    """The cached base model folder for these configs, built on first use (once: see :func:`reasonrl.cache.build_once`)."""
    path = base_path(arch, pretrain)
    return build_once(path, lambda tmp: _build(arch, pretrain, tmp, progress), "building the base model")


def _build(arch: Any, pretrain: Any, out: Path, progress: bool) -> None:
    """Build, pretrain and save the base model into the folder ``out`` (checked before it is cached)."""
    from reasonrl.sft import train_sft
    from reasonrl.tasks import arith

    if pretrain.corpus != "arith":
        raise ValueError(f"model.pretrain.corpus {pretrain.corpus!r} is not supported; use 'arith'")
    t0 = time.time()
    torch.manual_seed(pretrain.seed)
    tok = build_tokenizer(arith.CHARSET, arith.TAGS, arch.get("vocab_size"))
    model = build_model(arch, tok, pretrain.seed)
    n_params = sum(p.numel() for p in model.parameters())
    if pretrain.max_steps == 0:  # a random model, for speed checks: nothing to learn
        _save(model, tok, out, {"params": n_params, "steps": 0, "arch": _plain(arch)})
        return
    pairs = arith.pretrain_corpus(
        pretrain.max_steps * pretrain.batch_size,
        pretrain.seed,
        steps_frac=pretrain.steps_frac,
        short_frac=pretrain.short_frac,
    )
    probe = arith.heldout(pretrain.eval_problems)

    def eval_fn(m):
        return {"forced_think_accuracy": forced_think_accuracy(m, tok, probe)}

    def stop_fn(metrics):
        return metrics.get("forced_think_accuracy", 0.0) >= pretrain.target_accuracy

    hist = train_sft(
        model,
        tok,
        pairs,
        steps=pretrain.max_steps,
        batch_size=pretrain.batch_size,
        optim=pretrain.optim,
        seed=pretrain.seed,
        eval_fn=eval_fn,
        eval_every=pretrain.eval_every,
        stop_fn=stop_fn,
        desc="pretrain base",
        progress=progress,
    )
    info = {
        "params": n_params,
        "steps": hist["steps"],
        "seconds": round(time.time() - t0, 1),
        "final": hist["evals"][-1] if hist["evals"] else {},
        "evals": hist["evals"],
        "arch": _plain(arch),
        "pretrain": _plain(pretrain),
    }
    _save(model, tok, out, info)
    print(
        f"[reasonrl] base model built in {info['seconds']} s ({n_params:,} params, {hist['steps']} steps): {info['final']}",
        flush=True,
    )


def _save(model, tok, out: Path, info: dict) -> None:
    save_model_folder(model, tok, out)
    (out / "build.json").write_text(json.dumps(info, indent=2))
    check_model_folder(out, model)
