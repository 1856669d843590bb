"""Training on data: file formats, field mapping, row functions, filters, overlap, bad input, and
short GRPO runs with code, math and SFT-then-RL on data files (the tiny model; 2 steps each)."""

from __future__ import annotations

import json
import sys

import pytest

from reasonrl.data import DataError
from reasonrl.tasks.sources import compile_filter, load_problems, read_rows

from conftest import SHARED_DATA, TINY, compose, needs_data

ROWS = [
    {"statement": f"{a}+{b}", "final": str(a + b), "level": a % 3, "worked": f"<think></think><answer>{a + b}</answer>"}
    for a, b in [(12, 34), (50, 7), (33, 33), (9, 91), (70, 12), (41, 8)]
]
QUIET = ["logging.tensorboard=false", "logging.plot=false", "logging.progress=false", "checkpoint.final=false"]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_every_file_format_gives_the_same_problems(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    files = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS),
        "json": tmp_path / "d.json",
        "parquet": tmp_path / "d.parquet",
        "csv": tmp_path / "d.csv",
        "saved": tmp_path / "saved",
    }
    ds.to_json(str(files["json"]), lines=False)
    ds.to_parquet(str(files["parquet"]))
    ds.to_csv(str(files["csv"]), index=False)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(files["saved"]))
    fields = {"question": "statement", "answer": "final"}
    got = {k: load_problems(str(p), fields=fields) for k, p in files.items()}
    want = got["jsonl"]
    assert [p["question"] for p in want] == [r["statement"] for r in ROWS] and want[0]["answer"] == "46"
    for kind, problems in got.items():
        # every column survives (CSV reads numbers back as numbers, the same here)
        assert [(p["question"], str(p["answer"]), p["level"], p["worked"]) for p in problems] == [
            (p["question"], str(p["answer"]), p["level"], p["worked"]) for p in want
        ], kind


def test_field_mapping_filter_limit_and_row_function(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    problems = load_problems(
        path, fields={"question": "statement", "answer": "final"}, filter="level == 0 and len(statement) == 5"
    )
    assert [p["question"] for p in problems] == [r["statement"] for r in ROWS if r["level"] == 0 and len(r["statement"]) == 5]
    assert problems and all(p["answer"] == p["final"] for p in problems)  # mapped keys beside every column
    assert len(load_problems(path, limit=2)) == 2
    (tmp_path / "myrows.py").write_text(
        "def make(row):\n"
        "    if row['level'] == 1:\n        return None  # skipped\n"
        "    a, b = row['statement'].split('+')\n"
        "    return {'question': f'{b}+{a}', 'answer': row['final'], 'kind': 'swapped'}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        swapped = load_problems(path, row_fn="myrows:make")
    finally:
        sys.path.remove(str(tmp_path))
    assert [p["question"] for p in swapped] == [
        f"{r['statement'].split('+')[1]}+{r['statement'].split('+')[0]}" for r in ROWS if r["level"] != 1
    ]
    assert all(p["kind"] == "swapped" for p in swapped)


# The ChatML template that Qwen2 and SmolLM2 instruct models ship (their default system turns left out).
CHATML = (
    r"{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_the_chat_template_gets_the_filled_instruction_as_the_user_turn():
    from reasonrl.tasks.dataset import render
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(list("0123456789+"), [])
    tok.chat_template = CHATML
    text = render({"question": "12+34"}, "chat", tok, instruction="What is {question}?", system="Answer briefly.")
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 12+34?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_gsm8k_row_keeps_its_worked_solution_as_the_reference(tmp_path):
    """``reasonrl-eval`` checks the verifiers against ``reference``: for gsm8k, the whole worked solution."""
    solution = "She has 2 + 1000 = <<2+1000=1002>>1002 apples.\n#### 1,002"
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Ann has 2 apples and buys 1,000. How many?", "answer": solution}])
    assert load_problems(str(path), format="gsm8k") == [
        {
            "question": "Ann has 2 apples and buys 1,000. How many?",
            "answer": "1002",
            "id": 0,
            "solution": solution,
            "solution_boxed": "She has 2 + 1000 = <<2+1000=1002>>1002 apples.\nThe final answer is \\boxed{1002}.",
            "reference": solution,
        }
    ]


def test_a_benchmark_row_keeps_its_own_id_and_one_without_gets_its_index(tmp_path):
    rows = [{"id": 17, "question": "2+25?", "answer": 27.0}, {"question": "2+3?", "answer": 5.0}]
    problems = load_problems(str(write_jsonl(tmp_path / "amc23.jsonl", rows)), format="amc23")
    assert [p["id"] for p in problems] == [17, 1]


def test_filters_evaluate_only_what_they_allow():
    keep = compile_filter("601 <= id <= 974 and not (difficulty in ['hard', 'x'])")
    assert keep({"id": 700, "difficulty": "easy"}) and not keep({"id": 10, "difficulty": "easy"})
    assert not keep({"id": 700, "difficulty": "hard"})
    for bad in ("__import__('os').system('true')", "id.__class__", "open('x')", "lambda: 1", "[x for x in y]"):
        with pytest.raises(ValueError, match="not allowed|only len"):
            compile_filter(bad)


def test_bad_input_names_the_file_and_the_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:2] + [{"statement": "1+1"}])
    with pytest.raises(DataError, match=r"d\.jsonl: row 2 has no field 'final'"):
        load_problems(str(path), fields={"question": "statement", "answer": "final"})
    assert len(load_problems(str(path), fields={"question": "statement", "answer": "final"}, skip_bad=True)) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file holds no rows"):
        read_rows(str(empty))
    sheet = tmp_path / "d.xlsx"
    sheet.write_text("x")
    with pytest.raises(DataError, match=r"d\.xlsx: unknown data format '\.xlsx'"):
        read_rows(str(sheet))
    with pytest.raises(FileNotFoundError, match="not a file or folder"):
        read_rows(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="no usable rows"):
        load_problems(str(path), fields={"question": "statement"}, filter="statement == 'nothing'", skip_bad=True)


def test_a_template_naming_a_missing_field_says_which(tmp_path):
    from reasonrl.tasks import get_task

    cfg = compose(
        "train",
        [
            "task.name=mine",
            f"task.path={write_jsonl(tmp_path / 'd.jsonl', ROWS)}",
            "task.template=text",
            "task.instruction='Q:{statment}=?'",
        ],
    )
    with pytest.raises(ValueError, match="uses the field 'statment'.*statement"):
        get_task(cfg.task).render_prompt(ROWS[0], "text")


def test_overlap_between_training_data_and_evaluation_is_refused(tmp_path):
    from reasonrl.tasks import check_overlap

    train = [{"question": "12+34"}, {"question": " 50+7\n"}]
    heldout = [{"question": "50+7"}, {"question": "1+1"}]
    with pytest.raises(ValueError, match="1 of 2 problems of held-out set.*task.allow_overlap=true"):
        check_overlap(train, {"held-out set": heldout}, allow=False)
    assert check_overlap(train, {"held-out set": heldout, "other": [{"question": "2+2"}]}, allow=True) == {
        "held-out set": 1,
        "other": 0,
    }


MANY = [
    {"statement": f"{a}+{a + 7}", "final": str(2 * a + 7), "worked": f"<think></think><answer>{2 * a + 7}</answer>"}
    for a in range(10, 34)
]


def _data_run(tmp_path, overrides, rows=MANY):
    from reasonrl.train import main

    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = compose(
        "train",
        [
            *TINY,
            *QUIET,
            "task.name=mine",
            f"task.path={path}",
            "task.template=text",
            "task.instruction='Q:{question}=?'",
            "+task.fields.question=statement",  # new keys of a mapping take Hydra's "+"
            "+task.fields.answer=final",
            "task.heldout_size=4",
            "max_steps=2",
            "eval.every=2",
            f"run_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    summary = main(cfg)
    rows_out = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, rows_out


def test_overlapping_eval_file_stops_the_run(tmp_path):
    evalf = write_jsonl(tmp_path / "eval.jsonl", MANY[:2])
    with pytest.raises(ValueError, match="shares problems with evaluation sets"):
        _data_run(tmp_path, [f"task.eval_path={evalf}"])


def test_math_reward_grpo_on_a_data_file(tmp_path):
    summary, rows = _data_run(tmp_path, ["verifier=[math]", "task.answer_verifier=math"])
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/mine/accuracy" in rows[-1]
    assert "reward/math/mean" in rows[1] and rows[1]["verify/correct_frac"] + rows[1]["verify/wrong_frac"] + rows[1][
        "verify/no_answer_frac"
    ] + rows[1]["verify/format_error_frac"] == pytest.approx(1.0)


def test_sft_cold_start_then_grpo_on_a_data_file(tmp_path):
    summary, rows = _data_run(
        tmp_path,
        [
            "cold_start.enabled=true",
            "task.target='{worked}'",
            "cold_start.steps=3",
            "cold_start.demos=8",
            "cold_start.batch_size=4",
        ],
    )
    assert summary["before_sft"]["demonstration_accuracy"] == 1.0  # the targets are the right answers
    assert (tmp_path / "run" / "checkpoints" / "sft" / "config.json").is_file()
    assert len(rows) == 3


MBPP_ROWS = [
    {
        "task_id": 700 + i,
        "text": f"Write a function to add {i} to a number.",
        "code": f"def add_{i}(x):\n    return x + {i}",
        "test_list": [f"assert add_{i}(1) == {1 + i}", f"assert add_{i}(5) == {5 + i}"],
        "test_setup_code": "",
    }
    for i in range(12)
]


def test_code_reward_grpo_runs_the_programs_in_the_sandbox(tmp_path):
    from reasonrl.train import main

    path = write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    cfg = compose(
        "train",
        [
            *TINY,
            *QUIET,
            "task.name=code",
            f"task.path={path}",
            "task.format=mbpp",
            "task.template=text",
            "task.instruction='Q:{id}+1=?'",
            "task.heldout_size=4",
            "verifier=[code]",
            "task.answer_verifier=code",
            "max_steps=2",
            "eval.every=0",
            "logging.samples_per_step=16",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/code/mean" in rows[1] and rows[1]["verify/error_frac"] == 0.0  # no infrastructure failure
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    statuses = {s["verdicts"]["code"]["status"] for s in samples}
    ran = [s for s in samples if "total" in s["verdicts"]["code"]["info"]]  # graded from the sandbox's records
    assert statuses <= {"correct", "wrong", "no_answer", "format_error"} and ran, statuses
    assert all(s["verdicts"]["code"]["info"]["total"] == 2 for s in ran)


@needs_data
def test_the_mbpp_training_split_and_the_benchmark_loader_agree():
    from reasonrl.evals.loaders import load_benchmark

    path = str(SHARED_DATA / "mbpp" / "mbpp.jsonl")
    train = load_problems(path, format="mbpp", filter="601 <= id <= 974")
    assert len(train) == 374 and {p["id"] for p in train} == set(range(601, 975))
    test = load_benchmark("mbpp", path, filter="11 <= id <= 510")
    assert len(test) == 500 and train[0].keys() >= {"prompt", "test", "entry_point", "question", "reference"}


@needs_data
def test_reasonrl_sft_on_gsm8k_reads_its_worked_solutions(tmp_path):
    from reasonrl.finetune import main

    cfg = compose(
        "sft",
        [
            "task=gsm8k",
            "task.template=text",
            "task.heldout_size=4",
            "model.pretrain.max_steps=0",
            "max_steps=2",
            "sft.demos=8",
            "sft.batch_size=4",
            "sft.eval_every=2",
            "eval.max_new_tokens=8",
            "eval.sampled=false",
            f"run_dir={tmp_path}",
            "logging.progress=false",
            "logging.tensorboard=false",
        ],
    )
    summary = main(cfg)
    assert summary["demonstrations"] == 8 and summary["demonstration_accuracy"] == 1.0


def _sources(tmp_path, overrides, seed=0, rows=MANY):
    """(training stream, held-out problems) as a run with these overrides gets them, without a model."""
    from reasonrl.build import build_verifiers
    from reasonrl.tasks import get_task, problem_source

    path = tmp_path / "train.jsonl"
    if not path.exists():
        write_jsonl(path, rows)
    cfg = compose(
        "train",
        ["task.name=mine", f"task.path={path}", "task.template=text", "task.instruction='Q:{question}=?'",
         "+task.fields.question=statement", "+task.fields.answer=final", "task.heldout_size=4", *overrides],
    )  # fmt: skip
    return problem_source(get_task(cfg.task), cfg.task, seed, build_verifiers(cfg.verifier))


def test_the_held_out_rows_are_the_same_whatever_the_run_seed(tmp_path):
    """Rows set aside as held-out come from a fixed split seed: runs with different seeds are compared on the
    same problems (and never train on them)."""
    firsts = []
    for seed in (0, 1, 7):
        stream, heldout = _sources(tmp_path, [], seed=seed)
        firsts.append([p["question"] for p in heldout])
        trained = {next(stream)["question"] for _ in range(len(MANY) - 4)}
        assert trained.isdisjoint(firsts[-1]) and len(trained) == len(MANY) - 4
    assert firsts[0] == firsts[1] == firsts[2] and len(firsts[0]) == 4


def test_the_training_filter_leaves_the_evaluation_file_alone(tmp_path):
    """task.filter chooses training rows, task.eval_filter evaluation rows: neither leaks into the other."""
    numbers = [*range(200, 205), *range(2000, 2005)]  # statements of 5 and of 6 characters
    evalf = write_jsonl(tmp_path / "eval.jsonl", [{"statement": f"{a}+1", "final": str(a + 1)} for a in numbers])
    over = [f"task.eval_path={evalf}", "task.eval_split=train", "task.heldout_size=10"]
    stream, heldout = _sources(tmp_path, [*over, "task.filter='len(statement) < 6'"])  # every training row passes
    assert len(heldout) == 10  # the training filter did not reach the evaluation rows ...
    _, heldout = _sources(tmp_path, [*over, "task.eval_filter='len(statement) > 5'"])
    assert [p["question"] for p in heldout] == [f"{a}+1" for a in range(2000, 2005)]  # ... and eval_filter does


def test_a_saved_dataset_dict_is_read_from_the_split_asked_for(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(MANY),
        "test": datasets.Dataset.from_list([{"statement": f"{a}+2", "final": str(a + 2)} for a in range(300, 306)]),
    })  # fmt: skip
    dd.save_to_disk(str(tmp_path / "saved"))
    assert [r["final"] for r in read_rows(str(tmp_path / "saved"), split="test")] == [str(a + 2) for a in range(300, 306)]
    assert len(read_rows(str(tmp_path / "saved"), split="train")) == len(MANY)
    stream, heldout = _sources(tmp_path, [f"task.eval_path={tmp_path / 'saved'}", "task.eval_split=test"])
    assert [p["answer"] for p in heldout] == [str(a + 2) for a in range(300, 304)]


@pytest.mark.parametrize("kind", ["rows", "arith"])
def test_a_restored_stream_continues_as_the_uninterrupted_one_across_passes(tmp_path, kind):
    """A stream's state (through the checkpoint's own encoding) carries its position and its shuffling RNG: the
    next pass after a resume is a new order, as in the uninterrupted run, not the first pass again."""
    from reasonrl.checkpoint import read_trainer_state, write_trainer_state
    from reasonrl.tasks.arith import ArithStream
    from reasonrl.tasks.base import ShuffledRows

    def fresh():
        return ShuffledRows([{"i": i} for i in range(10)], seed=3) if kind == "rows" else ArithStream(seed=3)

    straight = fresh()
    whole = [next(straight) for _ in range(45)]  # four and a half passes over 10 rows
    first = fresh()
    head = [next(first) for _ in range(13)]
    write_trainer_state(tmp_path / "trainer.json", {"stream": first.state_dict()})  # a file in the folder
    resumed = fresh()
    resumed.load_state_dict(read_trainer_state(tmp_path)["stream"])  # the folder holding it
    assert head + [next(resumed) for _ in range(32)] == whole
    if kind == "rows":
        assert [r["i"] for r in whole[20:30]] != [r["i"] for r in whole[0:10]]  # passes differ: the test can see it
