"""The toy-world verifiers keep the Verdict contract and never raise on model output."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonrl.verifiers import STATUSES, GoldAnswerError, Verdict, entry_points, load, safe_call
from reasonrl.verifiers.extract import extract_answer, last_boxed
from reasonrl.verifiers.format import FormatVerifier
from reasonrl.verifiers.integer import IntegerVerifier
from reasonrl.verifiers.scoring import check_golds, score, summarize

P = {"question": "47+85+29", "answer": "161"}


@pytest.mark.parametrize(
    "completion,status,score",
    [
        ("<think>7+5+9=21 4+8+2+2=16</think><answer>161</answer>", "correct", 1.0),
        ("<think></think><answer>160</answer>", "wrong", 0.0),
        ("<think></think><answer> 161 </answer>", "correct", 1.0),
        ("<answer>1</answer> then <answer>161</answer>", "correct", 1.0),  # the last block counts
        ("the answer is \\boxed{161}", "correct", 1.0),
        ("<think>161</think>", "no_answer", 0.0),
        ("<answer></answer>", "no_answer", 0.0),
        ("<answer>161 or 160</answer>", "format_error", 0.0),
        ("<answer>16a</answer>", "format_error", 0.0),
        ("<answer>" + "9" * 5000 + "</answer>", "format_error", 0.0),
    ],
)
def test_integer_verifier(completion, status, score):
    v = IntegerVerifier()(P, completion)
    assert (v.status, v.score) == (status, score)


def test_integer_verifier_gold_error_and_not_applicable():
    with pytest.raises(GoldAnswerError, match="'abc'"):
        IntegerVerifier().check_gold({"answer": "abc"})
    assert IntegerVerifier()({"question": "x"}, "<answer>1</answer>") is None


@pytest.mark.parametrize(
    "completion,ok",
    [
        ("<think>a</think><answer>1</answer>", True),
        ("  <think></think>\n<answer>1</answer>\n", True),
        ("<think>a</think><answer>1</answer> trailing", False),
        ("<answer>1</answer><think>a</think>", False),
        ("<think>a</think><think>b</think><answer>1</answer>", False),
        ("<think>a<answer>1</answer>", False),
        ("<answer>1</answer>", False),
    ],
)
def test_format_verifier_strict(completion, ok):
    v = FormatVerifier()(P, completion)
    assert v.status == ("correct" if ok else "format_error") and v.score == float(ok)


def test_format_verifier_with_think_opened_by_prompt():
    f = FormatVerifier(think_in_prompt=True)
    assert f(P, "7+5=12</think><answer>12</answer>").status == "correct"
    assert f(P, "<think>7+5=12</think><answer>12</answer>").status == "format_error"


def test_extraction():
    assert last_boxed("\\boxed{a} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_answer("nothing here") is None
    # a block belongs to the last opening tag before its closing one; an unclosed one ends the search
    assert extract_answer("<answer>12 <answer>5</answer>") == "5"
    assert extract_answer("<answer>3</answer> then <answer>4") == "3"
    assert last_boxed("\\boxed{\\boxed{7}") == "7" and last_boxed("{ \\boxed{x^{2}} }") == "x^{2}"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(list("0123456789+-,{}\\ <>/") + ["<answer>", "</answer>", "<think>", "</think>", "\\boxed{"]),
        max_size=120,
    ).map("".join)
)
def test_verifiers_never_raise_on_model_output(text):
    for v in (IntegerVerifier(), FormatVerifier()):
        verdict = v(P, text)
        assert verdict.status in STATUSES and 0.0 <= verdict.score <= 1.0


def test_verdict_contract_is_enforced():
    with pytest.raises(ValueError, match="status"):
        Verdict(1.0, "great", {})
    with pytest.raises(ValueError, match="outside"):
        Verdict(1.5, "correct", {})


def test_a_raising_verifier_costs_an_error_verdict_and_is_masked():
    class Broken:
        name = "broken"

        def __call__(self, problem, completion):
            raise RuntimeError("boom")

    assert safe_call(Broken(), P, "x").status == "error"
    scored = score(
        [P, P], ["<answer>161</answer>", "<answer>1</answer>"], {"integer": (IntegerVerifier(), 1.0), "broken": (Broken(), 0.5)}
    )
    assert scored.rewards == [1.0, 0.0]
    assert scored.masked == [True, True]  # error verdicts leave the loss; they are not "wrong"
    m = summarize(scored, ["integer", "broken"])
    assert m["verify/error_frac"] == 0.5 and m["verify/correct_frac"] == 0.25 and m["reward/integer/mean"] == 0.5


def test_weighted_rewards_and_status_fractions():
    vs = {"integer": (IntegerVerifier(), 1.0), "format": (FormatVerifier(), 0.1)}
    scored = score(
        [P] * 3, ["<think></think><answer>161</answer>", "<answer>161</answer>", "<think></think><answer>7</answer>"], vs
    )
    assert scored.rewards == pytest.approx([1.1, 1.0, 0.1])
    assert scored.masked == [False, False, False]
    m = summarize(scored, list(vs))
    assert m["reward/mean"] == pytest.approx(2.2 / 3)
    assert sum(m[f"verify/{s}_frac"] for s in STATUSES) == pytest.approx(1.0)


def test_unparseable_gold_is_reported_once_with_its_row_and_skipped(caplog):
    rows = [{"answer": "3"}, {"answer": "three"}, {"answer": "5"}]
    with caplog.at_level(logging.ERROR):
        kept = check_golds(rows, {"integer": (IntegerVerifier(), 1.0)}, "demo.jsonl")
    assert kept == [rows[0], rows[2]]
    assert "demo.jsonl row 1" in caplog.text and "'three'" in caplog.text


def test_builtins_are_registered_as_entry_points():
    eps = entry_points()
    assert {"integer", "format"} <= set(eps)
    assert load("integer").name == "integer"
    with pytest.raises(KeyError, match="nope"):
        load("nope")


def test_a_gold_error_in_scoring_is_an_error_verdict_never_wrong():
    from reasonrl.verifiers.base import GoldAnswerError, Verdict
    from reasonrl.verifiers.scoring import score

    class Picky:
        name = "picky"

        def __call__(self, problem, completion):
            if problem["answer"] == "??":
                raise GoldAnswerError("gold '??' does not parse")
            return Verdict(1.0, "correct", {})

    scored = score([{"answer": "??"}, {"answer": "1"}], ["a", "b"], {"picky": (Picky(), 1.0)})
    bad, good = scored.verdicts[0]["picky"], scored.verdicts[1]["picky"]
    assert (bad.status, bad.score, "gold '??'" in bad.info["gold_error"]) == ("error", 0.0, True)
    assert scored.masked == [True, False] and scored.rewards == [0.0, 1.0] and good.status == "correct"


class _Fixed:
    """A verifier that returns a fixed verdict (or None: not applicable) for every completion."""

    def __init__(self, name, verdict):
        self.name, self.verdict = name, verdict

    def __call__(self, problem, completion):
        return self.verdict


def test_score_refuses_problems_and_completions_of_different_lengths():
    # score zips problems and completions with strict=True: a missing completion would otherwise silently
    # drop a problem and misalign rewards with the batch
    from reasonrl.verifiers.base import Verdict
    from reasonrl.verifiers.scoring import score

    vs = {"v": (_Fixed("v", Verdict(1.0, "correct", {})), 1.0)}
    with pytest.raises(ValueError):
        score([{"answer": "1"}, {"answer": "2"}], ["only one"], vs)


def test_summarize_edge_cases():
    # no rollouts give {} but one rollout is not treated as empty; a verifier with no verdicts is skipped and
    # the next one still summarized; no verdict at all gives status fractions of 0.0 (no division by zero);
    # masked_frac is a fraction of the rollouts
    from reasonrl.verifiers.base import STATUSES, Verdict
    from reasonrl.verifiers.scoring import Scored, summarize

    assert summarize(Scored([], [], []), ["a"]) == {}
    one = summarize(Scored([1.0], [{"a": Verdict(1.0, "correct", {})}], [False]), ["a"])
    assert one["reward/mean"] == 1.0 and one["reward/a/mean"] == 1.0 and one["verify/correct_frac"] == 1.0
    # "na" is not applicable to any rollout (None); "b" still gets its metrics after it
    ok, bad = Verdict(1.0, "correct", {}), Verdict(0.0, "error", {})
    rows = [{"na": None, "b": ok}, {"na": None, "b": bad}]
    m = summarize(Scored([1.0, 0.0], rows, [False, True]), ["na", "b"])
    assert "reward/na/mean" not in m and m["reward/b/mean"] == 0.5
    assert m["verify/correct_frac"] == 0.5 and m["verify/error_frac"] == 0.5
    assert m["verify/masked_frac"] == 0.5  # 1 of 2 rollouts masked
    # no verdict at all: every status fraction is 0, not a division by zero
    none = summarize(Scored([0.0, 0.0], [{"na": None}, {"na": None}], [False, False]), ["na"])
    assert all(none[f"verify/{s}_frac"] == 0.0 for s in STATUSES) and none["verify/masked_frac"] == 0.0


def test_check_golds_reports_reason_row_and_count_and_checks_every_verifier(caplog):
    # a verifier without check_gold is skipped and the next one still checks; the row line names the reason and
    # the row; the summary (exact text) names the source and counts the skipped rows, and is not logged when
    # nothing is skipped
    from reasonrl.verifiers.base import Verdict
    from reasonrl.verifiers.integer import IntegerVerifier
    from reasonrl.verifiers.scoring import check_golds

    no_check = _Fixed("fmt", Verdict(1.0, "correct", {}))  # has no check_gold: skipped, the next one still runs
    vs = {"fmt": (no_check, 0.1), "integer": (IntegerVerifier(), 1.0)}
    rows = [{"answer": "3"}, {"answer": "three"}, {"answer": "5"}]
    with caplog.at_level(logging.ERROR):
        kept = check_golds(rows, vs, "demo.jsonl")
    assert kept == [rows[0], rows[2]]
    row_line, summary = [r.getMessage() for r in caplog.records]
    assert "demo.jsonl row 1" in row_line and "(integer: " in row_line and "{'answer': 'three'}" in row_line
    assert summary == "data errors: 1 of 3 problems in demo.jsonl skipped"
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert check_golds([rows[0]], vs, "clean.jsonl") == [rows[0]]
    assert caplog.records == []  # clean data: no error lines
