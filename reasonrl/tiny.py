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

Two corpora (``pretrain.corpus``): ``arith``, the arithmetic world's, and
``arith_tools``, the same with ``pretrain.tool_frac`` of the full problems
solved by a tool call (``<python>print(47+85+29)</python><output>161</output>``);
its tokenizer adds the tool tags as single tokens and the characters of
``print()``. ``pretrain.n_terms`` and ``pretrain.digits`` shape the corpus's
problems and the probe's. The ``arith_tools`` probe may not open the think block
with a tool call either (it measures step by step), and it also records how
often a forced tool call writes the right expression and how likely the model
is to call the tool at temperature 1.

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
# pretrain.corpus -> the reasonrl.tasks.arith names of its tokenizer's characters and tags
CORPORA = {"arith": ("CHARSET", "TAGS"), "arith_tools": ("CHARSET+TOOL_CHARS", "TAGS+TOOL_TAGS")}
# pretrain keys added after base models were cached: at these values they stay out of the cache key
_KEYLESS_DEFAULTS = {"tool_frac": 0.0, "n_terms": 3, "digits": 2}


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


def corpus_tokenizer(corpus: str, vocab_size: int | None = None):
    """The tokenizer of a ``pretrain.corpus``: ``arith``'s, or ``arith_tools``'s with the tool tags and characters."""
    from reasonrl.tasks import arith

    if corpus not in CORPORA:
        raise ValueError(f"model.pretrain.corpus {corpus!r} is not supported; use one of {sorted(CORPORA)}")
    chars, tags = ([x for name in names.split("+") for x in getattr(arith, name)] for names in CORPORA[corpus])
    return build_tokenizer(chars, tags, vocab_size)


def base_path(arch: Any, pretrain: Any) -> Path:
    plain = _plain(pretrain)
    for k, default in _KEYLESS_DEFAULTS.items():  # the key a config without these keys always had
        if k in plain and plain[k] == default:
            del plain[k]
    key = config_key({"arch": _plain(arch), "pretrain": plain, "corpus": CORPUS_VERSION})
    return cache_root() / "models" / f"tiny-{pretrain.corpus}-{key}"


def forced_think_accuracy(model, tokenizer, problems: list[dict], max_new_tokens: int = 40) -> float:
    """Greedy accuracy when the model may not close the think block at once."""
    from reasonrl.evals.harness import sample_and_score
    from reasonrl.rollout import HFGenerator
    from reasonrl.tasks import arith

    banned = tuple(tokenizer.get_vocab()[t] for t in ("</think>", "<python>") if t in tokenizer.get_vocab())
    res = sample_and_score(
        HFGenerator(model, tokenizer),
        tokenizer,
        problems,
        render=lambda p: arith.render_prompt(p, "r1_think"),
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        banned_first_tokens=banned,
    )
    return res["accuracy"]


def probe_tokens(n_terms: int, digits: int) -> int:
    """New tokens the probe allows: 40, or more where the longest step-by-step solution needs it."""
    from reasonrl.tasks import arith

    longest = arith.solution((10**digits - 1,) * n_terms, "steps")
    n_tags = longest.count("<")  # each tag is one token, every other character one
    return max(40, len(longest) - sum(len(t) for t in arith.TAGS) + n_tags + 8)


@torch.no_grad()
def tool_probe(model, tokenizer, problems: list[dict], max_new_tokens: int = 40) -> dict[str, float]:
    """Tool skill of an ``arith_tools`` model: ``tool_expression_accuracy``, how often the code it writes
    after a forced ``<think><python>`` prints the answer (greedy, up to ``</python>``), and
    ``tool_call_prob``, the mean probability that its think block opens with a tool call (temperature 1)."""
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tasks import arith

    was_training = model.training
    model.eval()
    vocab = tokenizer.get_vocab()
    stop = vocab["</python>"]
    gen = HFGenerator(model, tokenizer, stop_token_ids=(stop,))
    forced = tokenizer([arith.render_prompt(p) + "<think><python>" for p in problems], add_special_tokens=False)
    outs = gen.generate(forced["input_ids"], 1, Sampling(temperature=0.0, max_new_tokens=max_new_tokens))
    right = 0
    for r in outs:
        code = r.text.split("</python>")[0]
        right += arith.tool_value(code) == int(problems[r.prompt_index]["answer"])
    opened = tokenizer([arith.render_prompt(p) + "<think>" for p in problems], add_special_tokens=False)["input_ids"]
    width = max(len(x) for x in opened)
    ids = torch.full((len(opened), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(opened):
        ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    last = logits[torch.arange(len(opened)), mask.sum(1).to(device) - 1]
    p_tool = torch.softmax(last, -1)[:, vocab["<python>"]]
    model.train(was_training)
    return {"tool_expression_accuracy": right / len(problems), "tool_call_prob": float(p_tool.mean())}


def get_or_build_base(arch: Any, pretrain: Any, progress: bool = True) -> Path:
    """The cached base model folder for these configs, built on first use (once: see :func:`reasonrl.cache.build_once`)."""
    path = base_path(arch, pretrain)
    return build_once(path, lambda tmp: _build(arch, pretrain, tmp, progress), "building the base model")


def _build(arch: Any, pretrain: Any, out: Path, progress: bool) -> None:
    """Build, pretrain and save the base model into the folder ``out`` (checked before it is cached)."""
    from reasonrl.sft import train_sft
    from reasonrl.tasks import arith

    tools = pretrain.corpus == "arith_tools"
    if pretrain.tool_frac and not tools:
        raise ValueError(f"model.pretrain.tool_frac={pretrain.tool_frac} needs model.pretrain.corpus=arith_tools")
    t0 = time.time()
    torch.manual_seed(pretrain.seed)
    tok = corpus_tokenizer(pretrain.corpus, arch.get("vocab_size"))
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
        n_terms=pretrain.n_terms,
        digits=pretrain.digits,
        tool_frac=pretrain.tool_frac,
    )
    probe = arith.heldout(pretrain.eval_problems, pretrain.n_terms, pretrain.digits)
    new_tokens = probe_tokens(pretrain.n_terms, pretrain.digits)

    def eval_fn(m):
        metrics = {"forced_think_accuracy": forced_think_accuracy(m, tok, probe, new_tokens)}
        return {**metrics, **tool_probe(m, tok, probe, new_tokens)} if tools else metrics

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
