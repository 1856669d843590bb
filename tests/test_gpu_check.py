"""The prepared GPU check runs its CPU dry run end to end, so it cannot rot between GPU sessions."""

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_run(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--fsdp", "--quiet", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    plain, sharded = report["results"]  # the second through FSDP2 in a process group of one
    assert plain["shape"] == "tiny" and sharded["shape"] == "tiny fsdp"
    for res in (plain, sharded):
        assert len(res["steps"]) == 2
        for step in res["steps"]:
            assert step["gen_tokens_per_s"] > 0 and step["train_tokens_per_s"] > 0 and step["mfu"] > 0  # CPU peak is rough
            assert step["completion_len"] > 0
    assert report["matmul_peak_tflops"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny |" in table and "| tiny fsdp |" in table and "| tiny fsdp |" in out.stdout.splitlines()[-1]
