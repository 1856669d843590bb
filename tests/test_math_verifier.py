"""The math verifier: labelled equivalences, real data golds, hedging, extraction, fuzzing."""

from __future__ import annotations

import collections
import json
import logging
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonrl.verifiers import STATUSES, GoldAnswerError
from reasonrl.verifiers.format import FormatVerifier
from reasonrl.verifiers.math import MathVerifier, _gold_strings

from conftest import SHARED_DATA, needs_data

sys.path.insert(0, str(Path(__file__).parent / "data"))
from math_pairs import BAD_GOLDS, GOOD_GOLDS, PAIRS, score, score_golds  # noqa: E402
from math_pairs_heldout import BAD_GOLDS as HELD_OUT_BAD_GOLDS  # noqa: E402
from math_pairs_heldout import GOOD_GOLDS as HELD_OUT_GOOD_GOLDS  # noqa: E402
from math_pairs_heldout import HELDOUT  # noqa: E402

DATA_FILES = [  # file, field holding the gold, gold format
    ("gsm8k/train.jsonl", "answer", "gsm8k"),
    ("gsm8k/test.jsonl", "answer", "gsm8k"),
    ("math500/test.jsonl", "answer", "boxed"),
    ("aime24/test.jsonl", "answer", "plain"),
    ("amc23/test.jsonl", "answer", "plain"),
    ("minerva_math/test.jsonl", "solution", "boxed"),
    ("olympiadbench/test.jsonl", "final_answer", "auto"),
]


def test_labelled_pairs_precision_and_recall_per_category():
    counts, wrong = score(PAIRS)
    assert len(PAIRS) >= 300
    report = {c: (k["tp"] / max(1, k["tp"] + k["fp"]), k["tp"] / max(1, k["tp"] + k["fn"])) for c, k in counts.items()}
    total = sum(counts.values(), collections.Counter())
    precision = total["tp"] / (total["tp"] + total["fp"])
    recall = total["tp"] / (total["tp"] + total["fn"])
    assert precision >= 0.99 and recall >= 0.95, (precision, recall, wrong)
    for cat, (p, r) in report.items():
        assert p >= 0.99 and r >= 0.95, (cat, p, r, [w for w in wrong if w[0] == cat])


def test_held_out_pairs_precision_and_recall():
    """Pairs written without seeing the rules, in fifteen families: the rules generalise beyond their examples."""
    counts, wrong = score(HELDOUT)
    assert len(HELDOUT) >= 200 and len(counts) >= 14
    total = sum(counts.values(), collections.Counter())
    precision, recall = total["tp"] / (total["tp"] + total["fp"]), total["tp"] / (total["tp"] + total["fn"])
    assert precision >= 0.98 and recall >= 0.95, (precision, recall, wrong)
    for family, k in counts.items():
        assert k["fp"] == 0 and k["tp"] / max(1, k["tp"] + k["fn"]) >= 0.8, (family, k, wrong)


@pytest.mark.parametrize("bad,good", [(BAD_GOLDS, GOOD_GOLDS), (HELD_OUT_BAD_GOLDS, HELD_OUT_GOOD_GOLDS)])
def test_unreadable_golds_are_data_errors_and_readable_ones_are_not(bad, good):
    """A gold that math-verify reads only as its own string (\\frac{1}{, x=, 1/0) could match nothing but itself:
    check_gold refuses it naming the gold; tricky golds that do read (m_{\\max}=..., 4.5e33, E_{1},E_{2}) pass."""
    counts, wrong = score_golds(bad, good)
    assert wrong == [] and counts["tn"] == len(bad) and counts["tp"] == len(good)
    with pytest.raises(GoldAnswerError, match=r"frac\{1\}\{"):
        MathVerifier().check_gold({"answer": "\\frac{1}{"})


@needs_data
def test_minerva_golds_are_rounded_to_their_written_figures():
    """Minerva's golds are rounded (4.5e33 from 4.52e33): its rows say so, and only they get that tolerance."""
    from reasonrl.tasks.sources import load_problems

    rows = load_problems(str(SHARED_DATA / "minerva_math/test.jsonl"), format="minerva_math")
    row = next(r for r in rows if "\\boxed{4.5e33}" in r["answer"])
    assert row["gold_precision"] == "significant"
    v = MathVerifier()
    assert v(row, "\\boxed{4.52\\times 10^{33}}").status == "correct"
    assert v(row, "\\boxed{4.5 \\cdot 10^{33}}").status == "correct"
    assert v(row, "\\boxed{4.7\\times 10^{33}}").status == "wrong"
    assert v(row, "\\boxed{4.5\\times 10^{32}}").status == "wrong"
    exact = {**row, "gold_precision": "exact"}
    assert v(exact, "\\boxed{4.52\\times 10^{33}}").status == "wrong"
    assert v(exact, "\\boxed{4.5\\times 10^{33}}").status == "correct"
    assert "gold_precision" not in load_problems(str(SHARED_DATA / "math500/test.jsonl"), format="math500")[0]
    with pytest.raises(ValueError, match="gold_precision"):
        MathVerifier(gold_precision="loose")


@pytest.mark.parametrize(
    "completion,status",
    [
        ("<answer>" * 20000 + "<answer>5</answer>", "correct"),
        ("\\boxed{" * 20000 + "\\boxed{5}", "correct"),
        ("<think>" * 20000 + "\\boxed{5}", "correct"),
        ("\\boxed{5}" + " wait, is 4 or" * 5000, "wrong"),
        ("\\boxed{5}" * 5000 + "\\boxed{6}", "wrong"),
    ],
)
def test_extraction_reads_hostile_completions_in_one_pass(completion, status):
    """Thousands of unclosed tags or boxes: extraction is linear (one pass), so these finish in milliseconds
    (a regex per opening tag took quadratic time); the verdicts are still the right ones."""
    assert MathVerifier()({"answer": "5"}, completion).status == status


@needs_data
@pytest.mark.parametrize("path,field,fmt", DATA_FILES)
def test_every_real_gold_parses_and_matches_itself(path, field, fmt):
    v = MathVerifier(answer_field=field, gold_format=fmt)
    rows = [json.loads(x) for x in (SHARED_DATA / path).read_text().splitlines()]
    errors = []
    for i, row in enumerate(rows):
        try:
            gold = _gold_strings(row[field], fmt)
            v.check_gold(row)
        except GoldAnswerError as e:
            errors.append(f"{path} row {i}: {e}")
            continue
        if i % 7 == 0:  # the reference answer itself, boxed, is correct
            assert v(row, "\\boxed{" + ", ".join(gold) + "}").status == "correct", (path, i, gold)
    assert errors == []


def test_gold_formats():
    assert _gold_strings("Natalia sold 48/2 = 24 clips.\n#### 1,072", "auto") == ["1072"]
    assert _gold_strings("so $\\boxed{\\frac{1}{2}}$.The answer is: \\frac{1}{2}", "auto") == ["\\frac{1}{2}"]
    assert _gold_strings(27.0, "auto") == ["27"] and _gold_strings(2.5, "auto") == ["2.5"]
    assert _gold_strings(["$\\frac{1}{3},-2,5$"], "auto") == ["\\frac{1}{3},-2,5"]
    assert _gold_strings("['3', '4']", "auto") == ["3", "4"]
    for bad in ("", None, "no final answer", float("nan")):
        with pytest.raises(GoldAnswerError):
            MathVerifier(gold_format="gsm8k" if bad == "no final answer" else "auto").check_gold({"answer": bad})


@pytest.mark.parametrize(
    "completion,status,info",
    [
        ("<think>...</think><answer>\\frac{1}{2}</answer>", "correct", {}),
        ("We get \\boxed{0.5}.", "correct", {}),
        ("\\boxed{\\frac12} hmm, or maybe \\boxed{\\frac13}", "wrong", {"hedge": 1}),
        ("<answer>1/2 or 1/3</answer>", "wrong", {"hedge": 1}),
        # hedges where the right answer is last, first, or inside one answer: all score 0 with the hedge flag
        ("\\boxed{\\frac13} ... then \\boxed{\\frac12}", "wrong", {"hedge": 1}),
        # a later answer that takes an earlier one back replaces it: only the last is judged, so writing two
        # answers gains nothing (a retraction cue between them: wait, actually, on second thought, a mistake)
        ("\\boxed{\\frac13} ... on second thought \\boxed{\\frac12}", "correct", {}),
        ("\\boxed{\\frac12} ... wait, I made a mistake: \\boxed{\\frac13}", "wrong", {}),
        ("<think>try \\boxed{\\frac13}</think><answer>\\frac12</answer>", "correct", {}),  # scratch work
        ("<answer>\\frac12</answer> \\boxed{\\frac13}", "wrong", {"hedge": 1}),  # tag and box disagree
        ("\\boxed{\\frac13}. Wait, I dropped a factor: the answer is 1/2.", "correct", {"retracted": 1}),
        ("\\boxed{\\frac12}. Wait, I dropped a factor: the answer is 1/3.", "wrong", {"retracted": 1}),
        ("\\boxed{\\frac12}. Wait, let me verify: 1/2 = 0.5. Yes.", "correct", {}),
        ("\\boxed{\\frac12} ... or perhaps \\boxed{\\frac13}", "wrong", {"hedge": 1}),
        ("<answer>1/3 or 1/2</answer>", "wrong", {"hedge": 1}),
        ("<answer>\\frac{1}{2} \\text{ or } \\frac{1}{3}</answer>", "wrong", {"hedge": 1}),
        ("<answer>0.25</answer> <answer>1/2</answer>", "wrong", {"hedge": 1}),
        ("\\boxed{\\frac12} so indeed \\boxed{0.5}", "correct", {}),  # the same value twice is no hedge
        ("no final answer here", "no_answer", {}),
        ("\\boxed{" + "1" * 3000 + "}", "format_error", {"too_long": 1}),
    ],
)
def test_extraction_and_hedging(completion, status, info):
    v = MathVerifier()({"answer": "\\frac{1}{2}"}, completion)
    assert (v.status, v.info) == (status, info)


def test_other_extractors_by_config():
    p = {"answer": "72"}
    assert MathVerifier(extract=["answer_is"])(p, "Thus, the answer is 72.").status == "correct"
    assert MathVerifier(extract=["gsm8k"])(p, "so 72 in all\n#### 72").status == "correct"
    assert MathVerifier()(p, "the answer is 72").status == "no_answer"  # not in the default chain
    assert MathVerifier(extract=["boxed", "last_number"])(p, "3 bags of 24 make 72 apples.").status == "correct"
    assert MathVerifier(extract=["boxed", "last_number"])(p, "so \\boxed{71}, not 72").status == "wrong"  # boxed first
    with pytest.raises(ValueError, match="sniff"):
        MathVerifier(extract=["sniff"])


def test_numeric_tolerance_is_configurable():
    p = {"answer": "3.14159"}
    assert MathVerifier()(p, "\\boxed{3.1416}").status == "wrong"
    assert MathVerifier(rel_tol=1e-4)(p, "\\boxed{3.1416}").status == "correct"


def test_multi_part_olympiad_answers_need_every_part():
    v = MathVerifier(answer_field="final_answer")
    row = {"final_answer": ["3", "4"]}
    assert v(row, "\\boxed{4, 3}").status == "correct"
    assert v(row, "\\boxed{3}").status == "wrong"
    assert v(row, "\\boxed{3, 5}").status == "wrong"


def test_format_partial_credit():
    f = FormatVerifier(partial_credit=True)
    assert f({}, "<think>a</think><answer>1</answer>").score == 1.0
    assert f({}, "<think>a</think> 1").score == 0.5  # two tags present once
    assert f({}, "<answer>1</answer><think>a</think>").score == 0.75  # all four, wrong order: capped
    assert FormatVerifier()({}, "<think>a</think> 1").score == 0.0


def test_math_latex_thin_space_and_left_right_are_cleaned():
    # cleaning removes the thin space "\ " ("1\ 000" is 1000) and "\left" / "\right" (a choice letter in
    # \left( \right) matches)
    from reasonrl.verifiers.math import MathVerifier

    v = MathVerifier()
    assert v({"answer": "1000"}, "\\boxed{1\\ 000}").status == "correct"
    assert v({"answer": "(A)"}, "\\boxed{\\left(A\\right)}").status == "correct"


def test_math_verify_logging_is_silenced_without_touching_the_root_logger(monkeypatch):
    # math_verify's own loggers are set to ERROR, not the ROOT logger (that would silence every INFO/WARNING of
    # the trainer and leave math_verify's loggers as they were)
    from reasonrl.verifiers import math as vmath

    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.setattr(vmath, "_CONFIG", [])  # the settings are built once per process: rebuild them here
    vmath._extraction_config()
    assert root.level == logging.WARNING
    assert logging.getLogger("math_verify.grader").level == logging.ERROR


def test_math_space_grouped_thousands_and_too_complex_scores_zero():
    # the numeric path drops spaces ("1 000" is 1000), and a too-complex answer is "wrong" with score 0.0
    # (not 1.0: full reward)
    from reasonrl.verifiers.math import MathVerifier

    v = MathVerifier()
    assert v({"answer": "1000"}, "\\boxed{1 000}").status == "correct"
    tower = v({"answer": "2"}, "\\boxed{2^{100000}}")
    assert (tower.status, tower.score, tower.info.get("too_complex")) == ("wrong", 0.0, 1)


def test_math_boxed_gold_without_box_uses_the_answer_is_line_and_multi_part_verdicts_summarize():
    # a "boxed" gold that has only "The answer is:" is read from that line (no TypeError), and multi-part
    # verdicts carry info {} (not None, which scoring.summarize cannot read)
    from reasonrl.verifiers.math import MathVerifier, _gold_strings
    from reasonrl.verifiers.scoring import Scored, summarize

    assert _gold_strings("We get 7 in all. The answer is: 7", "boxed") == ["7"]
    v = MathVerifier(answer_field="final_answer")
    row = {"final_answer": ["3", "4"]}
    good, bad = v(row, "\\boxed{4, 3}"), v(row, "\\boxed{3, 5}")
    assert (good.status, good.info) == ("correct", {}) and (bad.status, bad.info) == ("wrong", {})
    m = summarize(Scored([1.0, 0.0], [{"math": good}, {"math": bad}], [False, False]), ["math"])
    assert m["verify/correct_frac"] == 0.5


_POOL = []


def _pool():
    """One scoring pool for all fuzz examples: the per-call timeout is what the fuzz test holds the verifier to."""
    from reasonrl.verifiers.pool import ScoringPool

    if not _POOL:
        _POOL.append(ScoringPool({"math": MathVerifier()}, workers=2, timeout_s=FUZZ_TIMEOUT_S))
    return _POOL[0]


FUZZ_TIMEOUT_S = 5.0


HOSTILE = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            [
                "\\boxed{",
                "}",
                "{",
                "\\frac",
                "^",
                "10",
                "9",
                "\\sqrt",
                "(",
                ")",
                "\\left(",
                "\\right)",
                "<answer>",
                "</answer>",
                "x",
                "=",
                ",",
                "\\\\",
                "\\begin{pmatrix}",
                "\\end{pmatrix}",
                "&",
                "\\infty",
                "i",
                "\\pi",
                "e",
                "!",
                "\\cdot",
                "-",
                "+",
                "\\text{",
                "%",
                "$",
                "\\overline{",
                "\\dot{",
                "\\pm",
                " or ",
                " and ",
                "\\big(",
                "e5",
                "_8",
                "0.",
                "...",
                "<think>",
                "</think>",
                " wait, the total is 3",
                "(C) ",
                "\\varnothing",
            ]
        ),
        max_size=80,
    ).map("".join),
    st.integers(1, 60).map(lambda d: "\\boxed{" + "{" * d + "1" + "}" * d + "}"),
    st.integers(2, 8).map(lambda d: "\\boxed{" + "^".join(["10"] * d) + "}"),
    st.integers(2, 6).map(lambda d: "\\boxed{" + "10^{" * d + "99" + "}" * d + "}"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE, st.sampled_from(["72", "\\frac{1}{2}", "(1,2)", "x^2+1", "\\text{Evelyn}"]))
def test_fuzz_never_raises_and_stays_within_the_timeout(text, gold):
    completions = [text, f"<answer>{text}</answer>", f"\\boxed{{{text}"]
    t = time.perf_counter()
    rows = _pool().run([{"answer": gold}] * 3, completions)
    for row in rows:
        v = row["math"]
        assert v.status in STATUSES and v.status not in ("timeout", "error"), (text, v)
        assert 0.0 <= v.score <= 1.0
    assert time.perf_counter() - t < 3 * FUZZ_TIMEOUT_S
    # and in this process too: the verifier itself never raises
    for c in completions:
        assert MathVerifier()({"answer": gold}, c).status in STATUSES
