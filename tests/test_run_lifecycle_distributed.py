"""Under torchrun the tiny base model is built once, by the first process of the machine, whichever process asks
first; the others wait for it and load what it built.

The test runs this file under torchrun with 2 processes on gloo: process 0 asks for the base model 3 s after
process 1, so process 1 would win the cache lock if every process built. (transformers' ``save_pretrained`` writes
no config and no weights on a rank other than 0, so such a build used to cache a folder holding only the tokenizer
and ``build.json``, and process 1 then failed with "is not a Hugging Face model folder".)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OVERRIDES = ["model.pretrain.max_steps=3", "model.pretrain.eval_every=3", "model.pretrain.eval_problems=4",
             "model.pretrain.batch_size=8"]  # fmt: skip


def test_the_base_model_is_built_once_under_torchrun(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, str(out)]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    got = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    assert got[0]["path"] == got[1]["path"] and got[0]["params"] == got[1]["params"] > 400_000
    assert (res.stdout + res.stderr).count("building the base model (first use") == 1
    entries = sorted(p.name for p in (cache / "reasonrl" / "models").iterdir())
    assert entries == [Path(got[0]["path"]).name]  # no lock file, no temporary folder left
    assert {"config.json", "model.safetensors", "build.json"} <= {p.name for p in Path(got[0]["path"]).iterdir()}


def _worker(out: str) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from reasonrl.policy import load_hf
    from reasonrl.tiny import get_or_build_base

    from conftest import compose

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    cfg = compose("train", OVERRIDES)
    if rank == 0:
        time.sleep(3.0)  # process 1 asks first
    path = get_or_build_base(cfg.model.arch, cfg.model.pretrain, progress=False)
    model, _ = load_hf(path)
    Path(f"{out}.{rank}.json").write_text(json.dumps({"path": str(path), "params": sum(p.numel() for p in model.parameters())}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
