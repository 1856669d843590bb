"""A run's life from the command line: its directory is claimed before anything is written, never clobbered by a
second command, interrupts and full disks end in one line and keep what is done, a build waits and says for whom.

Most tests run the console scripts in a subprocess from an empty working directory, as a user would. The cache
is the session's (conftest), so the tiny base model (a few pretraining steps) is built once; the tests that need
a build of their own use a cache of their own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, compose, needs_data

BIN = Path(sys.executable).parent
RUN = [*TINY, "verify.workers=0", "max_steps=2", "eval.every=0", "checkpoint.every=1"]


def cli(program: str, args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def interrupted(program: str, args: list[str], cwd: Path, when: str, log: Path, env: dict | None = None, delay=0.0):
    """Start ``program``, wait until ``when`` appears in its output, press Ctrl-C (SIGINT to its process group, as a
    terminal does); (return code, stdout, stderr)."""
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out, "w") as fo, open(err, "w") as fe:
        # Ctrl-C's default action even where the test itself was started in the background (an asynchronous job
        # of a non-interactive shell starts with SIGINT ignored, and its children inherit that)
        proc = subprocess.Popen([str(BIN / program), *args], cwd=cwd, stdout=fo, stderr=fe, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while when not in out.read_text() + err.read_text():
                assert proc.poll() is None, f"ended before {when!r}:\n{out.read_text()}\n{err.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{when!r} never came"
                time.sleep(0.1)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return rc, out.read_text(), err.read_text()


def lines(text: str) -> list[str]:
    """The non-empty lines of an output, progress-bar redraws dropped."""
    return [x for x in text.replace("\r", "\n").splitlines() if x.strip() and "it/s]" not in x and "s/it]" not in x]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def tb_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 2-step run (eval.every=0), started with run_dir= from an empty working directory."""
    root = tmp_path_factory.mktemp("lifecycle")
    (root / "cwd").mkdir()
    args = [*RUN, f"run_dir={root / 'run'}"]
    res = cli("reasonrl-train", args, cwd=root / "cwd")
    assert res.returncode == 0, res.stderr[-4000:]
    return root, args, res


def test_run_dir_leaves_nothing_in_the_working_directory(finished):
    root, _, _ = finished
    assert list((root / "cwd").iterdir()) == []  # no outputs/default/<time>/ beside the run directory
    assert (root / "run" / ".hydra" / "overrides.yaml").is_file()  # Hydra's own files are in the run directory


def test_the_final_evaluation_is_logged_with_eval_every_0(finished):
    root, _, _ = finished
    got = rows(root / "run")
    assert [r["step"] for r in got] == [0, 1, 2]
    assert "eval/arith/accuracy" in got[0] and "eval/arith/accuracy" in got[2]
    assert tb_steps(root / "run", "eval/arith/accuracy") == [0, 2]


def test_the_compute_dtype_and_the_first_logprob_gap_are_said(finished):
    _, _, res = finished
    assert "compute dtype: float32 (model.compute_dtype=float32)" in res.stdout
    assert "sampler vs trainer logprob gap at the first step: mean" in res.stdout


def test_a_finished_run_directory_is_refused_and_left_as_it_was(finished):
    root, args, _ = finished
    before = snapshot(root / "run")
    res = cli("reasonrl-train", args, cwd=root / "cwd")
    assert res.returncode == 1
    said = lines(res.stderr)
    assert said[-1].startswith("reasonrl-train: error: run directory") and "holds a finished run" in said[-1]
    assert "resume=auto" in said[-1] and "overwrite=true" in said[-1] and "Traceback" not in res.stderr
    assert snapshot(root / "run") == before  # no second set of rows, config.yaml, summary, checkpoints, events
    assert list((root / "cwd").iterdir()) == []


def test_resume_with_a_changed_config_is_refused_before_anything_is_written(finished):
    root, args, _ = finished
    before = snapshot(root / "run")
    res = cli("reasonrl-train", [*args, "resume=auto", "optim.lr=1e-3"], cwd=root / "cwd")
    assert res.returncode == 1
    assert "optim.lr: 5e-05 -> 0.001" in res.stderr and "Traceback" not in res.stderr
    assert snapshot(root / "run") == before  # config.yaml still the run's own


def test_resume_auto_continues_a_finished_run(finished, tmp_path):
    root, args, _ = finished
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    res = cli("reasonrl-train", [*args[:-1], f"run_dir={run}", "resume=auto", "max_steps=3"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in rows(run)] == [0, 1, 2, 3]
    assert "max_steps: 3" in (run / "config.yaml").read_text()


def test_overwrite_replaces_the_run_in_the_directory(finished, tmp_path):
    """overwrite=true removes the earlier run's files (and only those) and starts afresh."""
    from omegaconf import OmegaConf

    from reasonrl.runs import RunRefused
    from reasonrl.train import main

    root, _, _ = finished
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "notes.txt").write_text("mine")

    def cfg(*extra):
        c = compose("train", [*RUN, "logging.progress=false", f"run_dir={run}", *extra])
        OmegaConf.set_struct(c, False)  # works whether or not the schema declares overwrite yet
        c.overwrite = True
        return c

    with pytest.raises(RunRefused, match="contradict"):
        main(cfg("resume=auto"))
    main(cfg())
    assert [r["step"] for r in rows(run)] == [0, 1, 2]
    assert len(list((run / "tb").iterdir())) == 1
    assert (run / "notes.txt").read_text() == "mine"


def test_files_that_are_not_a_runs_are_never_touched(tmp_path):
    """A directory with a config.yaml (or checkpoints/, metrics.jsonl, ...) that no reasonrl run wrote is refused,
    with overwrite=true too: nothing in it is written over or removed."""
    from reasonrl.runs import RunRefused, claim

    (tmp_path / "config.yaml").write_text("lr: 3\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.pt").write_text("x")
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(RunRefused, match="no config.yaml of a reasonrl run"):
            claim(tmp_path, "reasonrl-train", overwrite=overwrite)
    assert snapshot(tmp_path) == before


def test_interrupt_during_the_base_model_build(tmp_path):
    """Ctrl-C while the base model pretrains: one line, no traceback, no lock or half-built folder left in the
    cache, and the run directory (which held nothing yet) is gone."""
    (tmp_path / "cwd").mkdir()
    run, cache = tmp_path / "run", tmp_path / "cache"
    pretrain = ["model.pretrain.max_steps=2000", "model.pretrain.batch_size=4", "model.pretrain.eval_every=5000"]
    args = [*pretrain, "max_steps=2", f"run_dir={run}"]
    rc, out, err = interrupted("reasonrl-train", args, tmp_path / "cwd", "pretrain base", tmp_path / "log",
                               env={"XDG_CACHE_HOME": str(cache)}, delay=1.0)  # fmt: skip
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    said = [x for x in lines(err) if not x.startswith(("pretrain base", "Loading weights"))]
    assert len(said) == 1 and said[0].startswith("reasonrl-train: interrupted: before the first step"), said
    models = cache / "reasonrl" / "models"
    assert list(models.iterdir()) == []  # no lock file, no temporary folder, no entry
    assert not run.exists() and list((tmp_path / "cwd").iterdir()) == []


def test_interrupt_during_training_keeps_rows_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    args = [*RUN, "max_steps=500", "checkpoint.every=2", "checkpoint.final=false", f"run_dir={run}"]
    rc, out, err = interrupted("reasonrl-train", args, tmp_path, "[reasonrl] step 0:", tmp_path / "log", delay=4.0)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    said = lines(err)
    assert said[-1].startswith("reasonrl-train: interrupted: at step ") and "resume=auto continues from step_" in said[-1]
    steps = [r["step"] for r in rows(run)]
    assert steps == list(range(len(steps))) and len(steps) >= 2
    # what was kept carries on: resume=auto continues from the latest checkpoint, no row twice
    res = cli("reasonrl-train", [*args, "resume=auto", f"max_steps={steps[-1] + 1}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in rows(run)] == list(range(steps[-1] + 2))


def test_interrupt_during_a_checkpoint_write(tmp_path):
    """Ctrl-C while checkpoint 2 is being written (held there by the fault-injection hook): one line, the partial
    write removed, checkpoint 1 named as the one a resume continues from."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REASONRL_PAUSE_AT": "2:checkpoint", "REASONRL_PAUSE_FILE": str(marker)}
    cmd = [str(BIN / "reasonrl-train"), *RUN, "max_steps=4", f"run_dir={run}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert (run / "checkpoints" / ".step_000002.partial").is_dir()
        os.killpg(proc.pid, signal.SIGINT)  # delivered when it runs again
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert lines(err)[-1].startswith("reasonrl-train: interrupted: at step 2 of 4")
    assert "resume=auto continues from step_000001" in lines(err)[-1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]


@needs_data
def test_interrupt_during_eval_keeps_the_finished_benchmarks(tmp_path):
    run = tmp_path / "run"
    args = ["check=true", "benchmarks=[aime24,math500]", "verify_workers=0", f"run_dir={run}"]
    rc, out, err = interrupted("reasonrl-eval", args, tmp_path, "[reasonrl] aime24:", tmp_path / "log")
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    said = lines(err)
    assert said[-1].startswith("reasonrl-eval: interrupted: during math500") and "aime24" in said[-1], said
    assert list(json.loads((run / "results.json").read_text())) == ["aime24"]
    assert "| aime24 |" in (run / "results.md").read_text()


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_during_a_checkpoint_is_named_in_one_line(tmp_path):
    """A run directory on a 3 MiB filesystem: the first checkpoint (about 6 MB) does not fit. The run stops with one
    line naming the full disk, removes the partial write and keeps its metric rows."""
    disk = tmp_path / "disk"
    args = [*RUN, "max_steps=3", f"run_dir={disk / 'run'}"]
    if _mount_tmpfs(disk, "size=3m"):
        try:
            res = cli("reasonrl-train", args, cwd=tmp_path)
            left = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
            got = rows(disk / "run")
        finally:
            _umount(disk)
    else:  # no mount here: the write raises ENOSPC as a full disk does
        code = (
            "import errno, sys; from reasonrl import checkpoint as c\n"
            "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device', str(a[0]))\n"
            "c.write_trainer_state = full\n"
            f"sys.argv = ['reasonrl-train', *{args!r}]\n"
            "from reasonrl.train import cli; cli()\n"
        )
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        left = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
        got = rows(disk / "run")
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "inline_container" not in res.stderr, res.stderr[-3000:]
    said = lines(res.stderr)[-1]
    assert said.startswith("reasonrl-train: error: step 1: writing checkpoint step_000001 failed: the disk holding")
    assert "is full" in said and "resume=auto" in said
    assert left == []  # the partial write is gone
    assert [r["step"] for r in got] == [0, 1]


def test_a_read_only_run_directory_is_named_in_one_line(tmp_path):
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, "size=1m,ro"):
        try:
            res = cli("reasonrl-train", [*RUN, f"run_dir={ro / 'run'}"], cwd=tmp_path)
        finally:
            _umount(ro)
    elif os.geteuid() != 0:
        ro.chmod(0o555)
        res = cli("reasonrl-train", [*RUN, f"run_dir={ro / 'run'}"], cwd=tmp_path)
    else:
        pytest.skip("root without mount: no directory here is read-only to this process")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    said = lines(res.stderr)[-1]
    assert said.startswith("reasonrl-train: error: cannot write there:") and str(ro / "run") in said, said


def test_a_second_build_waits_and_says_for_whom(tmp_path):
    """While one process holds the lock of a cache entry, another that needs it says who holds it (pid, what it
    builds) instead of waiting in silence; it goes on when the holder is gone (here: killed, lock file left)."""
    import socket

    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    overrides = ["model.pretrain.max_steps=0"]
    find = (
        "import sys; sys.path.insert(0, {tests!r}); from conftest import compose; "
        "cfg = compose('train', {overrides!r}); from reasonrl import tiny\n"
    ).format(tests=str(Path(__file__).parent), overrides=overrides)
    holder = subprocess.Popen(
        [sys.executable, "-c", find + "from reasonrl.cache import locked; import time\n"
         "with locked(tiny.base_path(cfg.model.arch, cfg.model.pretrain), 'building the base model'):\n"
         "    print('held', flush=True); time.sleep(600)\n"],
        env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        log = tmp_path / "waiter.log"
        with open(log, "w") as f:
            build = "print(tiny.get_or_build_base(cfg.model.arch, cfg.model.pretrain, progress=False))"
            waiter = subprocess.Popen([sys.executable, "-c", find + build], env=env, stdout=f, stderr=subprocess.STDOUT,
                                      cwd=tmp_path)  # fmt: skip
        deadline = time.monotonic() + 300
        while "waiting for" not in log.read_text():
            assert waiter.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        said = log.read_text()
        assert f"waiting for pid {holder.pid} on {socket.gethostname()} (building the base model, since" in said
        holder.kill()
        holder.wait()
        assert waiter.wait(timeout=300) == 0, log.read_text()
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    models = cache / "reasonrl" / "models"
    assert [p.name for p in models.iterdir()] == [Path(log.read_text().strip().splitlines()[-1]).name]  # no lock left


def test_a_folder_without_weights_is_never_cached(tmp_path, monkeypatch):
    """A build whose save wrote no weights (as transformers does on a rank other than 0) fails naming the folder;
    nothing is cached, and no lock or temporary folder is left."""
    from reasonrl import cache
    from reasonrl.tasks import arith
    from reasonrl.tiny import build_tokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    final = cache.cache_root() / "models" / "entry"

    def build(tmp):
        build_tokenizer(arith.CHARSET, arith.TAGS).save_pretrained(tmp)
        (tmp / "build.json").write_text("{}")

    with pytest.raises(cache.BrokenEntry, match="no config.json"):
        cache.build_once(final, build, "building a test entry")
    assert list(final.parent.iterdir()) == []


def test_export_works_from_another_directory_and_quietly(tmp_path, monkeypatch):
    """A run started from model.path=<relative folder> exports from any working directory (the checkpoint knows where
    the run started), in bfloat16 without transformers' deprecation warning."""
    from reasonrl.tiny import get_or_build_base
    from reasonrl.train import main

    base_cfg = compose("train", TINY).model
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    shutil.copytree(get_or_build_base(base_cfg.arch, base_cfg.pretrain, progress=False), start / "base")
    monkeypatch.chdir(start)
    over = [o for o in RUN if not o.startswith("model.")]
    main(compose("train", [*over, "model=hf", "model.path=base", "model.compute_dtype=float32", "max_steps=1",
                           "checkpoint.final=false", "run_dir=run"]))  # fmt: skip
    ckpt = start / "run" / "checkpoints" / "step_000001"
    res = cli("reasonrl-export", [str(ckpt), str(elsewhere / "hf")], cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "deprecated" not in res.stdout + res.stderr
    assert "loading the checkpoint's weights" in res.stdout  # it says what it does
    import torch
    from transformers import AutoModelForCausalLM

    assert next(AutoModelForCausalLM.from_pretrained(elsewhere / "hf").parameters()).dtype == torch.bfloat16
    # an existing folder is never replaced silently, and only a model folder at all
    (elsewhere / "notes").mkdir()
    (elsewhere / "notes" / "a.txt").write_text("mine")
    for target, extra, word in (("hf", [], "exists and is not empty"), ("notes", ["--overwrite"], "not a Hugging Face")):
        res = cli("reasonrl-export", [str(ckpt), str(elsewhere / target), *extra], cwd=elsewhere)
        assert res.returncode == 1 and word in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert (elsewhere / "notes" / "a.txt").read_text() == "mine"
    res = cli("reasonrl-export", [str(ckpt), str(elsewhere / "hf"), "--overwrite", "--dtype", "float32"], cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-3000:]
    assert next(AutoModelForCausalLM.from_pretrained(elsewhere / "hf").parameters()).dtype == torch.float32


def test_smollm2_gsm8k_computes_in_float32():
    """The preset's documented precision: float32 on both sides, whatever the CPU offers."""
    cfg = compose("train", ["experiment=smollm2_gsm8k"])
    assert cfg.model.compute_dtype == "float32" and cfg.generator.dtype == "auto"


def test_a_large_logprob_gap_is_said_loudly(capsys):
    import torch

    from reasonrl.runtime import Runtime
    from reasonrl.train import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    trainer.runtime, trainer._bar, trainer.compute_dtype = Runtime(), None, torch.bfloat16
    trainer._report_logprob_gap({"sampling/logprob_diff_mean": 0.25, "sampling/logprob_diff_max": 1.5})
    said = capsys.readouterr().out
    assert "WARNING" in said and "mean 0.25, max 1.5 (compute dtype bfloat16)" in said
    assert "model.compute_dtype=float32" in said
    trainer.compute_dtype = torch.float32
    trainer._report_logprob_gap({"sampling/logprob_diff_mean": 2e-6, "sampling/logprob_diff_max": 5e-5})
    said = capsys.readouterr().out
    assert "WARNING" not in said and "mean 2e-06, max 5e-05 (compute dtype float32)" in said


def test_errno_of_a_full_disk_is_recognised():
    from reasonrl.cache import disk_full

    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("write failed") from e
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(RuntimeError("something else"))
