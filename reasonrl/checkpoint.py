"""Training checkpoints: a run's whole state, written atomically, found again on resume, exported.

One checkpoint is a folder ``<run_dir>/checkpoints/step_000005/``:

- ``state/``: model and optimizer state through ``torch.distributed.checkpoint``
  (fully qualified parameter names, one shard file per process; loadable at
  another process count);
- ``trainer.pt``: everything else a step depends on: the step, the scheduler,
  every RNG (Python, torch CPU, CUDA), the problem stream's position (what
  dynamic sampling drew and set aside included), evaluations so far, the SFT
  numbers before a cold start, and the byte offsets of ``metrics.jsonl`` and
  ``samples.jsonl``;
- ``config.yaml``: the run's resolved config when it was written;
- ``meta.json``: written last (step, time, sizes).

It is written into ``.step_000005.partial`` and renamed into place when
complete, so a killed write never leaves a folder that looks complete;
:func:`complete_checkpoints` skips (with a log line) and removes leftovers.
Older checkpoints beyond ``keep`` are deleted only after the new one is in
place. Generation seeds are a function of the step (``reasonrl.train``), so
the step restores them; the vLLM engine gets the restored weights on resume.

It does not decide when to write (``GRPOTrainer.fit``) and does not export
(:mod:`reasonrl.export`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("reasonrl.checkpoint")

NAME = re.compile(r"^step_(\d{6,})$")
# config keys a resumed run may change (prefixes end with "."): nothing here changes what a step computes
RESUME_MAY_CHANGE = (
    "max_steps",
    "resume",
    "run_dir",
    "logging.",
    "checkpoint.",
    "eval.every",
    "verify.workers",
    "verify.overlap",
    # how the update splits and lays out the batch: the same update in any split (tested), so a resumed run may
    # trade memory for speed; a checkpoint from before a key existed reads it as absent
    "rollout.micro_batch_size",
    "rollout.max_tokens_per_micro_batch",
    "rollout.pass_cost_tokens",
    "rollout.share_prompt",
)


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def pause_point(step: int, phase: str) -> None:
    """Fault injection for the resume tests: with ``REASONRL_PAUSE_AT=<step>:<phase>`` in the environment
    the process writes ``REASONRL_PAUSE_FILE`` and stops there (SIGSTOP) for the test to kill it."""
    want = os.environ.get("REASONRL_PAUSE_AT")
    if want is None or want != f"{step}:{phase}":
        return
    Path(os.environ["REASONRL_PAUSE_FILE"]).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    return dcp, get_state_dict, set_state_dict


@contextlib.contextmanager
def _quiet():
    """DCP warns that it runs without a process group; in one process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        yield


def save(
    root: str | Path,
    step: int,
    model,
    optimizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    keep: int = 0,
    is_main: bool = True,
    extra_models: dict[str, torch.nn.Module] | None = None,
    barrier=lambda: None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` (0: all). Its path.
    ``extra_models`` (e.g. the frozen KL reference) are saved beside the policy under their names. Every
    rank calls it (each writes its shards); the main process writes the rest and renames; ``barrier``
    keeps the ranks in step around that."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    dcp, get_state_dict, _ = _dcp()
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".{final.name}.partial"
    t = time.perf_counter()
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    extra = {name: get_model_state_dict(m) for name, m in (extra_models or {}).items()}
    with _quiet():
        dcp.save({"model": model_sd, "optim": optim_sd, **extra}, checkpoint_id=str(tmp / "state"))
    pause_point(step, "checkpoint")  # the resume tests kill the run here: shards written, not yet complete
    if is_main:
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        meta = {"step": step, "time": time.time(), "bytes": size, "save_s": round(time.perf_counter() - t, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        _fsync_tree(tmp)
        if final.exists():  # a rerun of this step after resuming from an older checkpoint
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            shutil.rmtree(old)
        os.rename(tmp, final)
        _fsync_dir(root)
        if keep > 0:
            for old in complete_checkpoints(root, quiet=True)[:-keep]:
                shutil.rmtree(old)
    barrier()
    return final


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(root: str | Path, quiet: bool = False) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first; leftovers of killed writes are logged and removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if p.name.endswith(".partial") or p.name.endswith(".old"):
            if not quiet:
                log.warning("skipping incomplete checkpoint %s (its write was interrupted); removing it", p)
            shutil.rmtree(p, ignore_errors=True)
            continue
        m = NAME.match(p.name)
        if m is None or not p.is_dir():
            continue  # checkpoints/final, checkpoints/sft: Hugging Face folders, not training checkpoints
        if not (p / "meta.json").is_file():
            if not quiet:
                log.warning("skipping incomplete checkpoint %s (no meta.json)", p)
            continue
        found.append(p)
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def resolve(resume: str | None, root: Path) -> Path | None:
    """The checkpoint ``resume`` names: ``auto`` = the latest complete one under ``root`` (None when there
    is none: a fresh start), else a path to a checkpoint folder."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "meta.json").is_file() or not (p / "trainer.pt").is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a complete training checkpoint (no meta.json/trainer.pt there)")
    return p


def read_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / "trainer.pt", weights_only=False)


def load_model_and_optimizer(path: Path, model, optimizer=None, extra_models: dict[str, torch.nn.Module] | None = None) -> None:
    """Load a checkpoint's model (and optimizer, and ``extra_models``) state in place, at any process count."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    dcp, get_state_dict, set_state_dict = _dcp()
    extra = extra_models or {}
    state: dict[str, Any] = {name: get_model_state_dict(m) for name, m in extra.items()}
    if optimizer is None:
        state["model"] = get_model_state_dict(model)
    else:
        state["model"], state["optim"] = get_state_dict(model, optimizer)
    with _quiet():
        dcp.load(state, checkpoint_id=str(Path(path) / "state"))
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for name, m in extra.items():
        set_model_state_dict(m, state[name])


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_changes(saved: dict, new: dict) -> list[str]:
    """Keys whose values differ between a checkpoint's config and the resumed run's, except the allowed ones."""
    a, b = _flat(saved), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") == b.get(k, "<absent>"):
            continue
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUME_MAY_CHANGE):
            continue
        out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
    return out
