"""A new user's data mistakes are reported before any model loads, naming the file, the line and the setting;
``task.skip_bad_rows`` skips malformed JSON lines too; reasonrl-eval finds its data from any directory.

Every subprocess run here would build the tiny base model (minutes) if it got past the data checks: a
private, empty cache and a short timeout make that a failure.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, needs_data

BIN = Path(sys.executable).parent
ROWS = [{"id": i, "prompt": f"{i}+{i}", "result": str(2 * i)} for i in range(1, 13)]


def write_rows(path: Path, bad_line: str | None = None, at: int = 2) -> Path:
    lines = [json.dumps(r) for r in ROWS]
    if bad_line is not None:
        lines.insert(at, bad_line)
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(program: str, *args: str, tmp_path: Path, env: dict | None = None, timeout: float = 120, cwd=None):
    full_env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [str(BIN / program), *args], cwd=cwd or tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def nothing_built(tmp_path: Path) -> bool:
    return not (tmp_path / "cache" / "reasonrl" / "models").exists()


TASK = ["task.name=mine", "+task.fields.question=prompt", "+task.fields.answer=result", "task.template=text"]
TASK += ["task.heldout_size=2"]


# -- item 7: skip_bad_rows skips a malformed JSON line ----------------------------------------------
def test_skip_bad_rows_skips_a_malformed_json_line_naming_it(tmp_path, caplog):
    from reasonrl.data import DataError
    from reasonrl.tasks.sources import load_problems

    f = write_rows(tmp_path / "d.jsonl", '{"id": 99, "prompt": "1+1", "result": ', at=2)
    with pytest.raises(DataError, match=r"d\.jsonl: row 2 \(line 3\) is not valid JSON.*task.skip_bad_rows=true"):
        load_problems(str(f), fields={"question": "prompt", "answer": "result"})
    with caplog.at_level(logging.ERROR):
        problems = load_problems(str(f), fields={"question": "prompt", "answer": "result"}, skip_bad=True)
    assert [p["id"] for p in problems] == [r["id"] for r in ROWS]
    assert "line 3" in caplog.text and "1 lines of" in caplog.text and "d.jsonl" in caplog.text
    write_rows(f, "[1, 2]", at=0)  # valid JSON, not an object
    assert len(load_problems(str(f), fields={"question": "prompt", "answer": "result"}, skip_bad=True)) == len(ROWS)


def test_skip_bad_rows_from_the_command_line(tmp_path):
    """The run reads the data before the model and skips the bad line; it then stops at the next data check
    (its evaluation file shares a problem with the training data), still before any model is built."""
    train = write_rows(tmp_path / "train.jsonl", "{not json", at=3)
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps(ROWS[0]) + "\n")
    args = [*TASK, f"task.path={train}", f"task.eval_path={held}", f"hydra.run.dir={tmp_path / 'run'}", "max_steps=1"]
    out = cli("reasonrl-train", *args, "task.skip_bad_rows=true", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    logs = out.stdout + out.stderr  # Hydra's job logging writes to stdout
    assert "train.jsonl: row 3 (line 4) is not valid JSON" in logs and "line skipped" in logs  # logged, with its line
    assert "shares problems with evaluation sets" in out.stderr
    assert nothing_built(tmp_path)


# -- item 11: data errors before the model ---------------------------------------------------------
def test_a_data_error_is_reported_before_the_model_is_built(tmp_path):
    train = write_rows(tmp_path / "train.jsonl", "{not json", at=5)
    args = [*TASK, f"task.path={train}", f"hydra.run.dir={tmp_path / 'run'}", "max_steps=1"]
    out = cli("reasonrl-train", *args, tmp_path=tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("reasonrl-train: error: ") and "train.jsonl: row 5 (line 6) is not valid JSON" in last
    assert nothing_built(tmp_path)


def test_a_missing_data_file_names_where_data_comes_from(tmp_path):
    out = cli("reasonrl-sft", "task.name=mine", "task.path=my_problems.jsonl", tmp_path=tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "task.path: 'my_problems.jsonl' does not exist" in out.stderr
    assert str(tmp_path) in out.stderr and "REASONRL_DATA_DIR" in out.stderr
    assert nothing_built(tmp_path)


def test_prepared_problems_are_read_once():
    """What the entry point read before the model is what the trainer gets, not a second read."""
    from reasonrl.tasks import get_task, prepare_problems, problem_source

    from conftest import compose

    cfg = compose("train")
    task = get_task(cfg.task)
    train, heldout = prepare_problems(task, cfg.task, 0, {})
    stream, again = problem_source(task, cfg.task, 0, {})
    assert again is heldout
    assert problem_source(task, cfg.task, 0, {})[1] is not heldout  # taken once


# -- item 14: reasonrl-eval's data and model checks --------------------------------------------------
@needs_data
def test_eval_finds_its_data_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REASONRL_DATA_DIR"}
    out = subprocess.run(
        [str(BIN / "reasonrl-eval"), "--cfg", "job", "--resolve"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"gsm8k: {SHARED_DATA}/gsm8k/test.jsonl" in out.stdout
    assert Path(REPO.parent / "shared" / "data") == SHARED_DATA


def test_eval_names_the_data_setting_and_the_environment_variable(tmp_path):
    out = cli("reasonrl-eval", "check=true", "benchmarks=[gsm8k]", tmp_path=tmp_path, env={"REASONRL_DATA_DIR": "/nonexistent"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "data.gsm8k: '/nonexistent/gsm8k/test.jsonl' does not exist" in out.stderr
    assert "REASONRL_DATA_DIR (set to '/nonexistent')" in out.stderr


def test_eval_refuses_what_the_tiny_model_cannot_take_by_the_keys_of_reasonrl_eval(tmp_path):
    out = cli("reasonrl-eval", "model=tiny_arith", "benchmarks=[gsm8k]", "limit=2", tmp_path=tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "template=chat needs a tokenizer with a chat template" in out.stderr and "task.template" not in out.stderr
    assert "max_new_tokens=512 does not fit model 'tiny_arith', which has 96 positions" in out.stderr
    assert nothing_built(tmp_path)


def test_template_errors_name_the_callers_key_and_prompt_lengths_are_checked():
    from reasonrl.data import DataError, check_prompt_lengths
    from reasonrl.tasks.dataset import render

    with pytest.raises(ValueError, match=r"^template=chat needs a tokenizer with a chat template"):
        render({"question": "q"}, "chat", None, key="template")
    with pytest.raises(ValueError, match=r"task.template in reasonrl-train and reasonrl-sft, template in reasonrl-eval"):
        render({"question": "q"}, "chat", None)
    check_prompt_lengths([[1] * 40, [1] * 50], 46, 96, "gsm8k")
    with pytest.raises(DataError, match=r"gsm8k: 1 of 2 prompts .* longest is 51 tokens, plus max_new_tokens=46, .* 96 pos"):
        check_prompt_lengths([[1] * 40, [1] * 51], 46, 96, "gsm8k")


def test_model_hf_without_a_path_is_refused_by_name(tmp_path):
    out = cli("reasonrl-train", "model=hf", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model 'hf' names no weights: give model.path=" in out.stderr
    assert nothing_built(tmp_path)
