"""Our step time on one config of ``benchmarks/vs_trl.py``, the code of an older commit against this tree.

    .venv/bin/python benchmarks/before_after.py --commit 301055c --config a --steps 8 --rounds 2

The older commit is staged in its installed shape in a temporary folder (``reasonrl/`` with ``verifiers/``,
``sandbox/`` and ``evals/`` inside it, ``conf/`` and ``benchmarks/`` beside it) and put first on PYTHONPATH, so
its own ``vs_trl.py`` child runs its own package; this tree's runs use the installed (editable) package.
The two alternate (before first in even rounds), each a fresh process on the same model folder and prompts,
and the medians of the timed steps are compared as a ratio: absolute times on a shared machine vary by tens of
percent from run to run, a side-by-side ratio much less.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def stage(commit: str, into: Path) -> Path:
    """The commit's package in its installed shape under ``into``."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(src, filter="data")
    tree = into / "tree"
    shutil.copytree(src / "reasonrl", tree / "reasonrl")
    for sub in ("verifiers", "sandbox", "evals"):
        shutil.copytree(src / sub, tree / "reasonrl" / sub)
    for folder in ("conf", "benchmarks"):
        shutil.copytree(src / folder, tree / folder)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", required=True, help="the older commit (any git revision)")
    ap.add_argument("--config", default="a", help="a vs_trl.py config (a: tiny Qwen2, seconds per run)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import vs_trl

    env = {**os.environ, "REASONRL_DATA_DIR": os.environ.get("REASONRL_DATA_DIR", str(REPO.parent / "shared" / "data")),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    got: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = stage(args.commit, Path(tmp) / "before")
        model_dir = str(vs_trl.tiny_qwen2(Path(tmp) / "tiny-qwen2"))
        for r in range(args.rounds):
            for which in ("before", "after") if r % 2 == 0 else ("after", "before"):
                out = Path(tmp) / f"{which}-{r}.json"
                script, e = REPO / "benchmarks" / "vs_trl.py", dict(env)
                if which == "before":
                    script, e["PYTHONPATH"] = tree / "benchmarks" / "vs_trl.py", str(tree)
                t = time.time()
                cmd = [sys.executable, str(script), "--child", "ours", args.config, model_dir, str(args.steps), str(out)]
                res = subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=tmp)
                if res.returncode != 0:
                    raise SystemExit(f"{which} failed:\n{res.stderr[-4000:]}")
                got[which].append(json.loads(out.read_text()))
                med = statistics.median(got[which][-1]["step_s"])
                print(f"[before_after] round {r} {which}: median step {med:.3f} s ({time.time() - t:.0f} s)", flush=True)
    rows = {}
    for which, runs in got.items():
        step = [x for d in runs for x in d["step_s"]]
        gen = [x for d in runs for x in d["gen_score_s"]]
        rows[which] = (statistics.median(step), statistics.median(gen), max(d["peak_rss_gb"] for d in runs))
    print(f"\nconfig {args.config}, {args.rounds} rounds x {args.steps} timed steps; before = {args.commit}")
    print(f"{'':28}{'before':>10}{'after':>10}{'after/before':>14}")
    for i, label in enumerate(("median step, s", "generation + scoring, s", "peak RSS, GB")):
        b, a = rows["before"][i], rows["after"][i]
        print(f"{label:28}{b:10.3f}{a:10.3f}{a / b:14.3f}")


if __name__ == "__main__":
    main()
