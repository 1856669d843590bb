"""Row validation names the culprit; packing aligns masks with next-token targets."""

from __future__ import annotations

import json

import pytest
import torch

from reasonrl.data import DataError, load_jsonl, pack, validate_rows
from reasonrl.rollout import Rollout


def test_malformed_row_is_reported_with_its_index():
    rows = [{"question": "1+2", "answer": "3"}, {"question": "2+2", "answer": "4"}, {"question": "5+5"}]
    with pytest.raises(DataError, match=r"train\.jsonl: row 2 has no field 'answer'"):
        validate_rows(rows, {"question": str, "answer": str}, "train.jsonl")
    with pytest.raises(DataError, match=r"row 1 field 'question' is int"):
        validate_rows([rows[0], {"question": 7, "answer": "1"}], {"question": str, "answer": str}, "x")


def test_bad_rows_can_be_skipped_and_counted(caplog):
    rows = [{"question": "a", "answer": "1"}, "junk", {"question": "b"}]
    good = validate_rows(rows, {"question": str, "answer": str}, "f.jsonl", skip_bad=True)
    assert good == [rows[0]]
    assert "2 of 3 rows skipped" in caplog.text


def test_load_jsonl_errors_name_file_and_row(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"d\.jsonl: row 1 \(line 3\) is not valid JSON"):
        load_jsonl(p)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_train_cli_reports_malformed_task_row(tmp_path):
    from reasonrl.tasks import get_task, problem_source

    from conftest import compose

    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"question": "1+2", "answer": "3"}, {"question": "1+1", "answr": "2"}]))
    cfg = compose("train", [f"task.path={f}"])
    with pytest.raises(DataError, match=r"row 1 has no field 'answer'"):
        problem_source(get_task(cfg.task), cfg.task, 0, {})


def test_pack_aligns_completion_mask_and_logprobs():
    r1 = Rollout(0, [5, 6, 7], [8, 9], "x", "stop", [-0.1, -0.2])
    r2 = Rollout(1, [5], [4, 3, 2], "y", "length", [-1.0, -2.0, -3.0])
    b = pack([r1, r2], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # targets are ids[:, 1:]: row 1 -> [6,7,8,9], completion targets 8,9 at positions 2,3
    assert b.completion_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert torch.allclose(b.sampler_logprobs, torch.tensor([[0, 0, -0.1, -0.2], [-1, -2, -3, 0]]))
    targets = b.input_ids[:, 1:]
    assert targets[b.completion_mask.bool()].tolist() == [8, 9, 4, 3, 2]
