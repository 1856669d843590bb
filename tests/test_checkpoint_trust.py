"""A downloaded checkpoint is data: resuming from it or exporting it never runs code from it.

Each hostile file carries a payload whose unpickling writes a marker file. The controls load the same
file the way the old code (``torch.load(weights_only=False)``) or DCP's defaults (``pickle.load`` of
``.metadata``, full ``torch.load`` of non-tensor entries) do and see the marker appear, so the payloads
are live; ``resume=`` and ``reasonrl-export`` refuse them with an error naming the file, and the marker
never appears. A normal checkpoint still saves and resumes to the same next step, and one written in the
older format (``trainer.pt``) still resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, compose

EXPORT = os.path.join(os.path.dirname(sys.executable), "reasonrl-export")
BASE = [*TINY, "max_steps=2", "verify.workers=0", "logging.tensorboard=false", "optim.lr=1e-3"]


class Payload:
    """Unpickling this writes ``marker``: what a hostile checkpoint would do with ``os.system`` instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('ran')",)


def _untimed(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if not k.startswith(("time/", "rollout/tokens_per_s"))})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run's checkpoint after step 1, the RNG states it holds, and the straight run's step 2."""
    from reasonrl.train import GRPOTrainer

    run = tmp_path_factory.mktemp("trust") / "run"
    over = [*BASE, f"run_dir={run}"]
    trainer = GRPOTrainer(compose("train", over)).setup()
    try:
        trainer.step()
        path = trainer.save_state()
        rng = (random.getstate(), torch.get_rng_state())
        row = trainer.step()
        params = [p.detach().clone() for p in trainer.model.parameters()]
    finally:
        trainer.close()
    return {"over": over, "path": path, "rng": rng, "row": row, "params": params}


def _copy(saved, tmp_path: Path) -> Path:
    dst = tmp_path / "downloaded" / saved["path"].name
    shutil.copytree(saved["path"], dst)
    return dst


def _resume(saved, path: Path, tmp_path: Path):
    from reasonrl.train import GRPOTrainer

    return GRPOTrainer(compose("train", [*saved["over"], f"run_dir={tmp_path / 'resumed'}", f"resume={path}"]))


def _refused_on_resume(saved, path: Path, tmp_path: Path, file: Path) -> None:
    from reasonrl.checkpoint import CheckpointRefused

    trainer = _resume(saved, path, tmp_path)
    try:
        with pytest.raises(CheckpointRefused) as e:
            trainer.setup()
    finally:
        trainer.close()
    assert str(file) in str(e.value) and "refused" in str(e.value)


def _export(path: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EXPORT, str(path), str(out), "--dtype", "float32"], capture_output=True, text=True)


def _same(a, b) -> bool:
    """Equal values of equal types, all the way down (tensors: dtype, shape and bits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


# ---------------------------------------------------------------- the trainer state


def test_a_hostile_older_format_trainer_state_is_refused_by_resume(saved, tmp_path):
    from reasonrl.checkpoint import read_trainer_state

    path, marker = _copy(saved, tmp_path), tmp_path / "pwned"
    state = read_trainer_state(path)
    state["evals"] = Payload(marker)
    (path / "trainer.json").unlink()
    torch.save(state, path / "trainer.pt")  # how checkpoints were written before trainer.json

    _refused_on_resume(saved, path, tmp_path, path / "trainer.pt")
    assert not marker.exists()
    # the control: what reading it used to do runs the payload
    torch.load(path / "trainer.pt", weights_only=False)
    assert marker.read_text() == "ran"


def test_export_never_runs_a_hostile_trainer_state(saved, tmp_path):
    path, marker = _copy(saved, tmp_path), tmp_path / "pwned"
    (path / "trainer.json").unlink()
    torch.save({"evil": Payload(marker)}, path / "trainer.pt")
    out = _export(path, tmp_path / "hf")
    assert not marker.exists()
    if out.returncode != 0:  # export may read the trainer state (e.g. for the run's directory): then it refuses it
        assert str(path / "trainer.pt") in out.stderr and "refused" in out.stderr, out.stderr[-3000:]


def test_a_malformed_trainer_json_is_refused_by_name(tmp_path):
    from reasonrl.checkpoint import STATE_FORMAT, CheckpointRefused, read_trainer_state

    cases = {
        "tag": {"__t__": "pickle", "data": "gASV"},
        "dtype": {"__t__": "tensor", "dtype": "load", "shape": [1], "data": "AA=="},
        "size": {"__t__": "tensor", "dtype": "float32", "shape": [2], "data": "AA=="},
        "object": {"__t__": "ndarray", "dtype": "|O", "shape": [1], "data": "AAAAAAAAAAA="},
    }
    for name, value in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        doc = {"format": STATE_FORMAT, "byteorder": sys.byteorder, "state": {"steps_done": 1, "x": value}}
        (folder / "trainer.json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointRefused, match=str(folder / "trainer.json")):
            read_trainer_state(folder)
    (tmp_path / "tag" / "trainer.json").write_text("{not json")
    with pytest.raises(CheckpointRefused, match="not a trainer state"):
        read_trainer_state(tmp_path / "tag")


def test_the_trainer_state_round_trips_exactly_without_pickle(tmp_path):
    """RNG states (Python tuples, torch and numpy arrays), non-string keys, non-finite floats: all plain JSON."""
    from reasonrl.checkpoint import read_trainer_state, write_trainer_state

    np_rng = np.random.RandomState(3)
    np_rng.standard_normal()  # a cached Gaussian in the state
    state = {
        "steps_done": 7,
        "rng": [{"python": random.Random(1).getstate(), "torch": torch.get_rng_state(), "cuda": []}],
        "stream": {"numpy": np_rng.get_state(), "generator": np.random.default_rng(5).bit_generator.state, "pos": 3},
        "evals": {4: {"eval/arith/accuracy": 0.25}, 8: {"x": float("nan"), "y": float("-inf"), "z": -0.0}},
        "odd": {"__t__": "a key that looks like a tag", (1, 2): [b"\x00\xff", np.float32(1.5), np.zeros(())]},
        "tensors": [torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t(), torch.empty(0, 4), torch.tensor(True)],
        "before_sft": None,
    }
    write_trainer_state(tmp_path / "trainer.json", state)
    assert b"\x80" not in (tmp_path / "trainer.json").read_bytes()[:2]  # not a pickle: JSON text
    back = read_trainer_state(tmp_path)
    assert _same(state, back)
    restored = np.random.RandomState()
    restored.set_state(back["stream"]["numpy"])
    assert restored.standard_normal() == np_rng.standard_normal()
    with pytest.raises(TypeError, match=r"state\.evals\.4: cannot store a Payload"):
        write_trainer_state(tmp_path / "bad.json", {"evals": {4: Payload(tmp_path / "x")}})


# ---------------------------------------------------------------- the DCP metadata and shards


def _poison_metadata(path: Path, marker: Path) -> Path:
    from reasonrl.checkpoint import read_dcp_metadata

    file = path / "state" / ".metadata"
    md = read_dcp_metadata(file)
    md.version = Payload(marker)
    with open(file, "wb") as f:
        pickle.dump(md, f)
    return file


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_hostile_dcp_metadata_is_refused_by_resume_and_export(saved, tmp_path):
    path, marker = _copy(saved, tmp_path), tmp_path / "pwned"
    file = _poison_metadata(path, marker)

    _refused_on_resume(saved, path, tmp_path, file)
    out = _export(path, tmp_path / "hf")
    assert out.returncode != 0 and str(file) in out.stderr and "builtins.exec" in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "hf").exists()
    assert not marker.exists()
    # the control: torch's own reader unpickles it in full, and the payload runs
    import torch.distributed.checkpoint as dcp

    dcp.load({"model": {}}, checkpoint_id=str(path / "state"))
    assert marker.read_text() == "ran"


def test_metadata_naming_a_shard_outside_its_folder_is_refused(saved, tmp_path):
    import dataclasses

    from reasonrl.checkpoint import CheckpointRefused, read_dcp_metadata

    file = _copy(saved, tmp_path) / "state" / ".metadata"
    md = read_dcp_metadata(file)
    key = next(iter(md.storage_data))
    md.storage_data[key] = dataclasses.replace(md.storage_data[key], relative_path="../../../etc/passwd")
    with open(file, "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(CheckpointRefused, match="not a file name inside"):
        read_dcp_metadata(file)


def test_metadata_cannot_set_the_state_of_an_allowed_function(tmp_path):
    """The allowed globals include a function (torch.layout unpickles through it): a BUILD on it would
    replace its attributes in this process (plain pickle does, the control); only metadata objects may
    have their state set."""
    import torch.serialization

    from reasonrl.checkpoint import CheckpointRefused, read_dcp_metadata

    raw = b"ctorch.serialization\n_get_layout\n(dS'cache'\n(dS'torch.strided'\nI7\nssb."  # _get_layout.cache = {...}
    (tmp_path / ".metadata").write_bytes(raw)
    with pytest.raises(CheckpointRefused, match="setting the state of a function"):
        read_dcp_metadata(tmp_path / ".metadata")
    saved_cache = dict(torch.serialization._get_layout.cache)
    try:
        pickle.loads(raw)
        assert torch.serialization._get_layout("torch.strided") == 7  # the control: torch's layouts were replaced
    finally:
        torch.serialization._get_layout.cache = saved_cache


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_hostile_non_tensor_shard_entry_is_refused(tmp_path):
    """The optimizer's non-tensor entries (lr, betas, ...) sit in the shard files as pickles; DCP's default
    planner loads them with ``weights_only=False``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from reasonrl import checkpoint as ckpt

    marker = tmp_path / "pwned"

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, opt = fresh()
    path = ckpt.save(tmp_path / "checkpoints", 1, model, opt, {"steps_done": 1}, "{}")
    opt.param_groups[0]["lr"] = Payload(marker)
    hostile = ckpt.save(tmp_path / "checkpoints", 2, model, opt, {"steps_done": 2}, "{}")

    model, opt = fresh()
    ckpt.load_model_and_optimizer(path, model, opt)  # the clean one loads
    assert opt.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ckpt.CheckpointRefused) as e:
        ckpt.load_model_and_optimizer(hostile, model, opt)
    assert str(hostile / "state" / "__0_0.distcp") in str(e.value) and "optim.param_groups.0.lr" in str(e.value)
    assert not marker.exists()
    # the control: DCP's default planner runs it
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(hostile / "state"))
    assert marker.read_text() == "ran"


# ---------------------------------------------------------------- normal checkpoints


def test_a_checkpoint_saves_as_json_and_resumes_to_the_same_next_step(saved):
    from reasonrl.train import GRPOTrainer

    path = saved["path"]
    assert (path / "trainer.json").is_file() and not (path / "trainer.pt").exists()
    trainer = GRPOTrainer(compose("train", [*saved["over"], "resume=auto"])).setup()
    try:
        assert trainer.steps_done == 1 and trainer.resumed_from == path
        python, torch_rng = saved["rng"]
        assert random.getstate() == python and torch.equal(torch.get_rng_state(), torch_rng)
        row = trainer.step()
    finally:
        trainer.close()
    assert _untimed(row) == _untimed(saved["row"])
    assert all(torch.equal(a, b) for a, b in zip(saved["params"], trainer.model.parameters()))


def test_an_older_format_checkpoint_still_resumes(saved, tmp_path):
    """A ``trainer.pt`` of tensors and plain data (what earlier versions wrote) loads weights-only."""
    from reasonrl.checkpoint import read_trainer_state

    path = _copy(saved, tmp_path)
    state = read_trainer_state(path)
    (path / "trainer.json").unlink()
    torch.save(state, path / "trainer.pt")
    assert _same(read_trainer_state(path), state)
    trainer = _resume(saved, path, tmp_path).setup()
    try:
        assert trainer.steps_done == 1 and trainer.resumed_from == path
        row = trainer.step()
    finally:
        trainer.close()
    assert _untimed(row) == _untimed(saved["row"])


def test_the_model_alone_loads_exactly_when_no_optimizer_is_given(tmp_path):
    """What ``reasonrl-export`` does: a checkpoint saved with its optimizer, loaded into a fresh model only."""
    from helpers import tiny_model

    from reasonrl import checkpoint as ckpt

    trained = tiny_model(seed=0)
    path = ckpt.save(tmp_path / "checkpoints", 1, trained, torch.optim.AdamW(trained.parameters()), {"steps_done": 1}, "{}")
    fresh = tiny_model(seed=1)
    assert not torch.equal(fresh.lm_head.weight, trained.lm_head.weight)  # the control: it starts elsewhere
    ckpt.load_model_and_optimizer(path, fresh)
    want, got = trained.state_dict(), fresh.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
