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


def _terms(question: str) -> list[str]:
    return question.split("+")


def test_one_task_node_shapes_training_evaluation_and_demonstrations():
    """task.n_terms, task.digits and task.template reach every consumer of the task: the training stream,
    the held-out set, and the demonstrations of both the cold start and reasonrl-sft."""
    from reasonrl.sft import demonstrations
    from reasonrl.tasks import get_task, problem_source

    from conftest import compose

    shape = ["task.n_terms=4", "task.digits=3", "task.template=r1_think", "task.heldout_size=20"]
    train_cfg = compose("train", [*shape, "cold_start.enabled=true", "cold_start.demos=12"])
    sft_cfg = compose("sft", [*shape, "sft.demos=12"])
    for cfg, node in ((train_cfg, train_cfg.cold_start), (sft_cfg, sft_cfg.sft)):
        task = get_task(cfg.task)
        stream, heldout = problem_source(task, cfg.task, 0, {})
        rows = demonstrations(node, task, 0)
        questions = [next(stream)["question"] for _ in range(12)] + [p["question"] for p in heldout]
        questions += [re.match(r"Q:(.*?)=\?", r["prompt"]).group(1) for r in rows]
        assert len(rows) == 12 and len(heldout) == 20
        for q in questions:
            assert len(_terms(q)) == 4 and all(len(t) == 3 for t in _terms(q)), q
        # the prompt opened the think block, so each completion continues it
        assert all(r["prompt"] == f"Q:{q}=?<think>" for r, q in zip(rows, questions[-12:]))
        assert all(not r["completion"].startswith("<think>") and "</think><answer>" in r["completion"] for r in rows)
        assert not {p["question"] for p in heldout} & set(questions[:12])


def test_demonstrations_keep_their_problems_at_the_default_shape():
    """The task built from the default node gives the module's own demonstrations (the cold start's numbers)."""
    from reasonrl.tasks import get_task

    from conftest import compose

    cfg = compose("train", ["task.heldout_size=32"])
    assert get_task(cfg.task).demonstrations(40, 3, flaw_frac=0.15) == arith.demonstrations(40, 3, flaw_frac=0.15)


def test_an_unknown_arith_template_names_the_key():
    import pytest

    from reasonrl.tasks import get_task

    from conftest import compose

    with pytest.raises(ValueError, match="task.template=chat is not an arith template"):
        get_task(compose("train", ["task.template=chat"]).task)
