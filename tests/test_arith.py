"""The arithmetic world: worked solutions, a disjoint held-out set, the corpus mix, flawed demonstrations."""

from __future__ import annotations

import re

from reasonrl.tasks import arith
from reasonrl.verifiers.format import FormatVerifier
from reasonrl.verifiers.integer import IntegerVerifier


def test_column_steps_by_hand():
    # ones: 7+5+9 = 21 (carry 2); tens: 4+8+2 + 2 = 16 -> 161
    assert arith.column_steps((47, 85, 29)) == (["7+5+9=21", "4+8+2+2=16"], 161)
    # no carry: 1+3+3 = 7, 9+7+3 = 19 -> 197
    assert arith.column_steps((91, 73, 33)) == (["1+3+3=7", "9+7+3=19"], 197)
    assert arith.solution((47, 85, 29), "steps") == "<think>7+5+9=21 4+8+2+2=16</think><answer>161</answer>"
    assert arith.solution((47, 85, 29), "direct") == "<think></think><answer>161</answer>"


def test_every_step_is_true_and_the_answer_follows():
    p = next(arith.ArithStream(3))
    steps, total = arith.column_steps(p["numbers"])
    for s in steps:
        lhs, rhs = s.split("=")
        assert sum(int(t) for t in lhs.split("+")) == int(rhs)
    assert str(total) == p["answer"]


def test_heldout_is_fixed_and_disjoint_from_training():
    h = arith.heldout(500)
    assert h == arith.heldout(500) and len({p["question"] for p in h}) == 500
    held = {p["question"] for p in h}
    train = [next(s) for s in [arith.ArithStream(0)] for _ in range(5000)]
    assert not held & {p["question"] for p in train}
    corpus_q = {re.match(r"Q:(.*)=\?", pr).group(1) for pr, _ in arith.pretrain_corpus(5000, 0)}
    assert not held & corpus_q


def test_training_stream_is_seeded():
    a, b, c = arith.ArithStream(1), arith.ArithStream(1), arith.ArithStream(2)
    xs = [next(a)["question"] for _ in range(20)]
    assert xs == [next(b)["question"] for _ in range(20)]
    assert xs != [next(c)["question"] for _ in range(20)]


def test_pretraining_corpus_is_mostly_direct():
    corpus = arith.pretrain_corpus(20000, 0, steps_frac=0.2, short_frac=0.3)
    long = [c for p, c in corpus if p.count("+") == 2 and len(p) > 10]
    steps = [c for c in long if not c.startswith("<think></think>")]
    assert 0.17 < len(steps) / len(long) < 0.23
    short = len(corpus) - len(long)
    assert 0.2 < short / len(corpus) < 0.26  # 0.3 extra per long row -> 0.3/1.3 of all rows
    fmt, ans = FormatVerifier(), IntegerVerifier()
    for p, c in corpus[:500]:
        q = re.match(r"Q:(.*)=\?", p).group(1)
        assert fmt({}, c).status == "correct"
        assert ans({"answer": str(eval(q))}, c).status == "correct"


def test_demonstrations_are_formatted_and_some_are_flawed():
    demos = arith.demonstrations(400, 0, flaw_frac=0.15)
    v = IntegerVerifier()
    acc = sum(v(d, d["completion"]).status == "correct" for d in demos) / len(demos)
    assert 0.78 < acc < 0.92
    assert all(FormatVerifier()({}, d["completion"]).status == "correct" for d in demos)
    assert arith.demonstrations(400, 0, flaw_frac=0.0)[0]["completion"].count("=") >= 2
