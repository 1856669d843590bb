"""The arithmetic world's tool-use variant: tool-call solutions, the corpus that mixes a few in, its tokenizer,
and the base-model cache key that must not move for the default config."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re

import pytest

from reasonrl.tasks import arith

from conftest import compose

# pretrain_corpus(2000, seed) and one other shape, hashed before the tool style existed
OLD_CORPUS = {0: "44fd9f53988a4940", 1: "5030d737225f1ae8", 7: "bfef00619373e0e3"}
OLD_CORPUS_3X3 = "f761f79ecf733816"  # pretrain_corpus(2000, 3, n_terms=3, digits=3, steps_frac=0.3, short_frac=0.2)
# tiny.base_path of the default model config, computed before the new pretrain keys existed
OLD_DEFAULT_BASE = "tiny-arith-f2b9f4a0b8a0"

TOOL_ROW = re.compile(r"<think><python>(print\([0-9+]+\))</python><output>(\d+)</output></think><answer>(\d+)</answer>")


def _hash(rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _run(code: str) -> str:
    """What the sandbox would append: the code's stdout, stripped."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue().strip()


def test_tool_solutions_parse_run_and_are_correct():
    from reasonrl.verifiers.integer import IntegerVerifier

    assert arith.solution((347, 285, 929), "tool") == (
        "<think><python>print(347+285+929)</python><output>1561</output></think><answer>1561</answer>"
    )
    verify = IntegerVerifier()
    stream = arith.ArithStream(0, n_terms=4, digits=3)
    for p in [next(stream) for _ in range(50)] + arith.heldout(20):
        text = arith.solution(p["numbers"], "tool")
        code, output, answer = TOOL_ROW.fullmatch(text).groups()
        assert arith.tool_call(text) == code and _run(code) == output == answer == p["answer"]
        assert arith.tool_value(code) == int(p["answer"])
        assert verify(p, text).status == "correct"
    assert arith.tool_call("<think></think><answer>3</answer>") is None
    assert arith.tool_value("print(1+2)") == 3 and arith.tool_value(" print(12) ") == 12
    assert arith.tool_value("print(1+)") is None and arith.tool_value("print(1*2)") is None
    with pytest.raises(ValueError):
        arith.solution((1, 2), "essay")


def test_tool_frac_zero_leaves_the_corpus_as_it_was():
    for seed, digest in OLD_CORPUS.items():
        assert _hash(arith.pretrain_corpus(2000, seed)) == digest
        assert _hash(arith.pretrain_corpus(2000, seed, tool_frac=0.0)) == digest
    assert _hash(arith.pretrain_corpus(2000, 3, n_terms=3, digits=3, steps_frac=0.3, short_frac=0.2)) == OLD_CORPUS_3X3


def test_tool_rows_take_the_place_of_direct_full_problems():
    old = arith.pretrain_corpus(20000, 0, n_terms=4, digits=3)
    new = arith.pretrain_corpus(20000, 0, n_terms=4, digits=3, tool_frac=0.05)
    assert [p for p, _ in old] == [p for p, _ in new]  # the same draws: the same problems in the same order
    changed = [(o, n) for (_, o), (_, n) in zip(old, new) if o != n]
    assert all(o.startswith("<think></think>") and TOOL_ROW.fullmatch(n) for o, n in changed)  # direct -> tool only
    is_full = re.compile(r"Q:\d{3}(\+\d{3}){3}=\?").fullmatch  # a problem of the split, not a short row
    full = [c for p, c in new if is_full(p)]
    assert 0.04 < len(changed) / len(full) < 0.06
    assert all(is_full(p) for p, c in new if "<python>" in c)  # never a short single-digit row
    assert 0.18 < sum(c[7].isdigit() for c in full) / len(full) < 0.22  # the steps rows are where they were
    with pytest.raises(ValueError):
        arith.pretrain_corpus(10, 0, steps_frac=0.9, tool_frac=0.2)


def test_default_base_model_key_is_unchanged_and_the_new_keys_count_when_set():
    from omegaconf import OmegaConf

    from reasonrl.config import ArchConfig, PretrainConfig
    from reasonrl.tiny import base_path

    cfg = compose("train")
    assert base_path(cfg.model.arch, cfg.model.pretrain).name == OLD_DEFAULT_BASE
    schema = OmegaConf.structured(PretrainConfig())
    assert base_path(OmegaConf.structured(ArchConfig()), schema).name == OLD_DEFAULT_BASE
    seen = {OLD_DEFAULT_BASE}
    for override in ("model.pretrain.n_terms=4", "model.pretrain.digits=3", "model.pretrain.tool_frac=0.05"):
        c = compose("train", [override])
        seen.add(base_path(c.model.arch, c.model.pretrain).name)
    tools = compose("train", ["model=tiny_arith_tools"])
    seen.add(base_path(tools.model.arch, tools.model.pretrain).name)
    assert len(seen) == 5


def test_tools_tokenizer_has_single_token_tags_and_round_trips():
    from reasonrl.tiny import build_tokenizer, corpus_tokenizer

    plain = corpus_tokenizer("arith")
    assert plain.get_vocab() == build_tokenizer(arith.CHARSET, arith.TAGS).get_vocab()  # the default's, unchanged
    tok = corpus_tokenizer("arith_tools")
    for tag in arith.TAGS + arith.TOOL_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
        assert tok.convert_tokens_to_ids(tag) != tok.unk_token_id
    assert [tok.convert_tokens_to_ids(t) for t in arith.TAGS + arith.TOOL_TAGS] == list(range(26, 34))
    prompt = "Q:347+285+929+123=?"
    completion = arith.solution((347, 285, 929, 123), "tool")
    ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == prompt + completion
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == prompt + completion
    code = "print(347+285+929+123)"
    assert len(ids) == len(prompt) + 1 + 1 + len(code) + 1 + 1 + 4 + 1 + 1 + 1 + 4 + 1
    # the observation the agent loop appends tokenizes the same way, tags and digits
    obs = tok("<output>1684</output>", add_special_tokens=False)["input_ids"]
    assert obs == [tok.convert_tokens_to_ids("<output>"), *tok("1684", add_special_tokens=False)["input_ids"]] + [
        tok.convert_tokens_to_ids("</output>")
    ]
    with pytest.raises(ValueError):
        corpus_tokenizer("arith_essays")


def test_tools_model_config_fits_its_split_and_builds(tmp_path, monkeypatch):
    from reasonrl.tiny import base_path, get_or_build_base, probe_tokens

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = compose("train", ["model=tiny_arith_tools", "model.pretrain.max_steps=0"])
    pre = cfg.model.pretrain
    assert pre.corpus == "arith_tools" and pre.tool_frac > 0
    tok_len = len(f"Q:{'+'.join(['999'] * pre.n_terms)}=?")  # one token a character
    worst = max(len(arith.solution((10**pre.digits - 1,) * pre.n_terms, s)) for s in ("steps", "tool"))
    assert tok_len + worst + 1 <= cfg.model.arch.max_position_embeddings  # tags count as several characters here
    assert probe_tokens(3, 2) == 40  # the default probe's budget, unchanged
    path = get_or_build_base(cfg.model.arch, pre, progress=False)
    assert path == base_path(cfg.model.arch, pre)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(path)
    assert all(saved.convert_tokens_to_ids(t) != saved.unk_token_id for t in arith.TOOL_TAGS)
    bad = compose("train", ["model.pretrain.max_steps=1", "model.pretrain.tool_frac=0.05"])
    with pytest.raises(ValueError, match="arith_tools"):
        get_or_build_base(bad.model.arch, bad.model.pretrain, progress=False)
