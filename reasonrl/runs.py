"""The run directory: claimed before anything is written, announced at start and end, never clobbered.

:func:`open_run` finds the directory (``run_dir``, else Hydra's output
directory) and claims it for this run before writing anything into it:

- a directory that does not exist, is empty, or holds nothing of a run (no
  metric row, checkpoint, summary or result: a run stopped before its first
  step left nothing worth keeping) is used;
- a directory that holds a run is refused (:class:`RunRefused`), naming what is
  there and the ways on: ``resume=auto`` continues it (``reasonrl-train``),
  ``overwrite=true`` removes that run's files first, or another ``run_dir``.
  Files that are not a run's are never touched.

:meth:`Run.start` then writes ``config.yaml`` (for a resumed run only after its
config was checked against the checkpoint's) and Hydra's own files
(``.hydra/``; Hydra's log file is pointed into the run directory), and
:meth:`Run.abandon` removes a directory this run created when it stops before
doing anything (an interrupt during the base model's build). The console
scripts wrap their ``main`` in :func:`one_line_errors`: an interrupt, a refused
run directory, a full disk or an unwritable directory ends with one line.
Only the main process writes.

It does not log metrics (:mod:`reasonrl.metrics`) or save checkpoints
(:mod:`reasonrl.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

# what a run writes into its directory (anything else there is left alone)
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "samples.jsonl",
    "summary.json",
    "curves.png",
    "tb",
    "checkpoints",
    "results.json",
    "results.md",
    "wandb",
    ".hydra",
    "train.log",
    "finetune.log",
    "benchmark.log",
    "reasonrl-train.log",
    "reasonrl-sft.log",
    "reasonrl-eval.log",
)


class RunRefused(ValueError):
    """The run directory holds a run this command may not continue or replace: nothing was written."""


class RunError(RuntimeError):
    """A run stopped for a reason the user can act on (a full disk, say); its message says it all."""


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that says where the run stood and what it kept."""


# ---------------------------------------------------------------- what a directory holds
@dataclasses.dataclass
class Found:
    """What of a run a directory holds."""

    files: list[str]  # the run files there (names)
    work: list[str]  # what of them is work done, described ("metrics.jsonl (steps 0-37)", ...)
    finished: bool  # a summary or results were written: the run ended
    config: dict | None  # its config.yaml

    @property
    def is_run(self) -> bool:
        return bool(self.work)

    @property
    def ours(self) -> bool:
        """Its config.yaml is a reasonrl run's (only then are its files ever removed)."""
        return isinstance(self.config, dict) and {"experiment_name", "run_dir"} <= set(self.config)

    @property
    def foreign(self) -> list[str]:
        """Run files here that no reasonrl run is known to have written (no config.yaml of a run beside them)."""
        return [] if self.ours else [f for f in self.files if f != ".hydra" and not f.endswith(".log")]


def _last_step(metrics: Path) -> tuple[int, int] | None:
    """(first, last) step of a metrics.jsonl, None when it holds no row."""
    try:
        lines = [x for x in metrics.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return None
    steps = []
    for line in (lines[:1] + lines[-1:]) if lines else []:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            steps.append(-1)
    return (steps[0], steps[-1]) if steps else None


def survey(path: Path) -> Found:
    """What of a run ``path`` holds."""
    path = Path(path)
    if not path.is_dir():
        return Found([], [], False, None)
    files = sorted(n for n in RUN_FILES if (path / n).exists())
    work = []
    steps = _last_step(path / "metrics.jsonl")
    if steps is not None:
        work.append(f"metrics.jsonl (steps {steps[0]}-{steps[1]})")
    ckpt = path / "checkpoints"
    if ckpt.is_dir():
        kept = sorted(p.name for p in ckpt.iterdir() if p.is_dir() and not p.name.startswith("."))
        if kept:
            work.append("checkpoints/ (" + ", ".join(kept[-3:]) + (", ..." if len(kept) > 3 else "") + ")")
    finished = False
    for name in ("summary.json", "results.json"):
        if (path / name).is_file():
            finished = True
            work.append(name)
    if (path / "samples.jsonl").is_file() and (path / "samples.jsonl").stat().st_size > 0 and steps is None:
        work.append("samples.jsonl")
    config = None
    if (path / "config.yaml").is_file():
        try:
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        except Exception:  # an unreadable config.yaml is no run's identity; it still counts as a file
            config = None
    return Found(files, work, finished, config)


def remove_run_files(path: Path, files: list[str]) -> None:
    _release_log_files(path)
    for name in files:
        p = Path(path) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# ---------------------------------------------------------------- claiming it
@dataclasses.dataclass
class Run:
    """A claimed run directory."""

    path: Path
    command: str
    is_main: bool = True
    created: bool = True  # it held nothing of a run before this one (it may be removed if this one does nothing)
    existed: bool = False  # the directory itself was there before
    hydra_dir: str | None = None  # Hydra's output directory, when Hydra runs

    def start(self, cfg, fresh: bool = True) -> None:
        """Write config.yaml (the resolved config) and, for a fresh start, Hydra's own files."""
        if not self.is_main:
            return
        from omegaconf import OmegaConf

        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if self.hydra_dir is not None and (fresh or not (self.path / ".hydra").exists()):
            _write_hydra_files(self.path / ".hydra", cfg)

    def abandon(self) -> bool:
        """After a failure or an interrupt: remove what this run wrote when it created the directory and did
        nothing worth keeping (no metric row, checkpoint or result); True when it did."""
        if not (self.is_main and self.created) or not self.path.is_dir():
            return False
        found = survey(self.path)
        if found.is_run or found.foreign:
            return False
        remove_run_files(self.path, found.files)
        if not self.existed:
            try:
                self.path.rmdir()
            except OSError:  # something else is in it: not ours
                pass
        return True


def run_path(cfg) -> tuple[Path, str | None]:
    """(the run directory, Hydra's output directory or None): ``run_dir`` when set, else Hydra's."""
    hydra_dir = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra_dir = str(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    if cfg.run_dir:
        return Path(str(cfg.run_dir)).expanduser(), hydra_dir
    if hydra_dir is None:
        raise ValueError("run_dir is not set and Hydra is not running: set run_dir")
    return Path(hydra_dir), hydra_dir


def claim(path: Path, command: str, *, resume: str | None = None, overwrite: bool = False) -> tuple[Run, Found]:
    """Claim ``path`` for a run of ``command`` (main process only). Refuses a directory holding a run unless
    ``resume`` (the caller then checks that it continues that run) or ``overwrite`` (its run files are
    removed first; with ``resume``, only from a checkpoint outside it) says what to do with it. Returns the
    claim and what was there."""
    path = Path(path)
    found = survey(path)
    if resume and overwrite and (resume == "auto" or Path(resume).resolve().is_relative_to(path.resolve())):
        raise RunRefused(
            f"resume={resume} and overwrite=true contradict each other (overwrite would remove what resume continues): choose one"
        )
    foreign = [f for f in found.foreign if not (resume and f == "checkpoints")]  # resume checks checkpoints itself
    if foreign:  # never write over, or remove, what something else put there
        raise RunRefused(
            f"run directory {path} holds {', '.join(foreign)} but no config.yaml of a reasonrl run: nothing was "
            "written; choose another run_dir="
        )
    if found.is_run and (overwrite or not resume):
        if not overwrite:
            raise RunRefused(_refusal(path, command, found))
        remove_run_files(path, found.files)
        announce_removed(path, found)
        found = survey(path)
    elif not found.is_run and found.files:  # what a run that did nothing left: nothing to keep (logs stay)
        remove_run_files(path, [f for f in found.files if not f.endswith(".log")])
    existed = _EXISTED_BEFORE_HYDRA.get(str(path.resolve()), path.is_dir())
    path.mkdir(parents=True, exist_ok=True)
    return Run(path=path, command=command, created=not found.is_run, existed=existed), found


def _refusal(path: Path, command: str, found: Found) -> str:
    what = "a finished run" if found.finished else "a run that did not finish"
    name = (found.config or {}).get("experiment_name")
    ways = []
    if command == "reasonrl-train":
        ways.append("resume=auto continues it (raise max_steps to train further)")
    ways += ["overwrite=true replaces it (its files are removed)", "or choose another run_dir="]
    return (
        f"run directory {path} holds {what}{f' ({name})' if name else ''}: {', '.join(found.work)}. "
        f"Nothing was written. {'; '.join(ways)}"
    )


def announce_removed(path: Path, found: Found) -> None:
    print(f"[reasonrl] overwrite=true: removed the earlier run in {path} ({', '.join(found.work)})", flush=True)


def open_run(cfg, command: str, is_main: bool = True, resume: str | None = None) -> tuple[Run, Found]:
    """The run directory claimed (main process; the others get the path only), announced, and Hydra's log file
    pointed into it. Nothing is written into it yet: see :meth:`Run.start`."""
    path, hydra_dir = run_path(cfg)
    if not is_main:
        return Run(path=path, command=command, is_main=False, created=False), Found([], [], False, None)
    run, found = claim(path, command, resume=resume, overwrite=bool(cfg.get("overwrite", False)))
    run.hydra_dir = hydra_dir
    _move_hydra_log(hydra_dir, path)
    announce(path)
    return run, found


def open_run_dir(cfg, command: str, is_main: bool = True) -> Run:
    """Claim, announce and start a run directory in one call (commands without resume)."""
    run, _ = open_run(cfg, command, is_main)
    run.start(cfg)
    return run


def _write_hydra_files(folder: Path, cfg) -> None:
    """What Hydra writes into its output directory (config.yaml unresolved, hydra.yaml, overrides.yaml): the
    console scripts ask Hydra not to, so that nothing lands in a directory before it was claimed."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hc}), folder / "hydra.yaml")
    OmegaConf.save(hc.overrides.task, folder / "overrides.yaml")


def _move_hydra_log(hydra_dir: str | None, run_dir: Path) -> None:
    """Point Hydra's log file (``<job>.log`` in its output directory) into the run directory, and remove Hydra's
    output directory when ``run_dir`` is elsewhere and it is left empty."""
    if hydra_dir is None or Path(hydra_dir).resolve() == run_dir.resolve():
        return
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == Path(hydra_dir).resolve():
            h.acquire()
            try:
                h.close()  # reopened at the next record (mode "a"), at the new place
                h.baseFilename = str(run_dir.resolve() / Path(h.baseFilename).name)
            finally:
                h.release()
    try:
        if Path(hydra_dir).is_dir() and not any(Path(hydra_dir).iterdir()):
            Path(hydra_dir).rmdir()
    except OSError:
        pass


def _release_log_files(folder: Path) -> None:
    """Close the log files open in ``folder`` (they reopen at their next record), before files there go."""
    folder = Path(folder).resolve()
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == folder:
            h.acquire()
            try:
                h.close()
            finally:
                h.release()


def announce(run_dir: Path) -> None:
    print(f"[reasonrl] run directory: {run_dir}", flush=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = Path(run_dir) / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, Path(run_dir) / "summary.json")


# ---------------------------------------------------------------- the console scripts
_EXISTED_BEFORE_HYDRA: dict[str, bool] = {}  # run directories named on the command line: there before Hydra made them?


def hydra_argv(argv: list[str], program: str) -> list[str]:
    """The main process's command line for Hydra: Hydra writes nothing into its output directory before the run
    claimed it (``.hydra/`` is written by :meth:`Run.start`, the log file opens at its first record), and
    ``run_dir=X`` also makes X Hydra's output directory, so no timestamped folder is left behind. A run directory
    named on the command line that cannot be made (a read-only place) ends here, in one line."""
    if int(os.environ.get("RANK", "0") or 0) > 0:  # the other processes write no run directory at all
        return argv
    args = list(argv)
    over = args[1:]
    if not any(a.startswith(("hydra.output_subdir=", "++hydra.output_subdir=")) for a in over):
        args.append("hydra.output_subdir=null")
    if not any(a.startswith(("hydra/job_logging=", "hydra.job_logging")) for a in over):
        args.append("++hydra.job_logging.handlers.file.delay=true")
    plain = [a for a in over if a.startswith(("run_dir=", "hydra.run.dir=")) and not set(a) & set("'\"${}[],")]
    run_dir = [a.split("=", 1)[1] for a in plain if a.startswith("run_dir=")]
    if run_dir and run_dir[-1] not in ("", "null") and not any(a.startswith("hydra.run.dir=") for a in over):
        args.append(f"hydra.run.dir={run_dir[-1]}")
        plain.append(args[-1])
    for a in plain:
        value = a.split("=", 1)[1]
        if value in ("", "null"):
            continue
        p = Path(value).expanduser()
        _EXISTED_BEFORE_HYDRA.setdefault(str(p.resolve()), p.is_dir())
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _one_line(program, f"error: {_environment_error(e) or e}")
            raise SystemExit(1) from None
    return args


def _environment_error(e: BaseException) -> str | None:
    """One line for an error the user fixes outside the program (a full disk, a read-only place); else None."""
    from reasonrl.cache import disk_full

    if disk_full(e):
        where = getattr(e, "filename", None)
        return f"no space left on the device{f' (writing {where})' if where else ''}: {e}"
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write there: {e}"
    return None


def one_line_errors(main: Callable[[Any], Any], program: str) -> Callable[[Any], Any]:
    """``main`` as a console script runs it: an interrupt, a refused run directory, a run error, a full disk or an
    unwritable directory end with one line on stderr, ``<program>: interrupted: ...`` (exit status 130) or
    ``<program>: error: ...`` (1); other errors keep their traceback. Under torchrun the main process says it
    (every process stops) and the message goes to torchrun's error file for its failure summary."""

    @functools.wraps(main)
    def wrapped(cfg):
        try:
            return main(cfg)
        except KeyboardInterrupt as e:
            _one_line(program, "interrupted" + (f": {e}" if str(e) else ""), leading_newline=True)
            raise SystemExit(130) from None
        except (RunRefused, RunError) as e:
            _one_line(program, f"error: {e}", everywhere=isinstance(e, RunError))
            raise SystemExit(1) from None
        except RuntimeError as e:
            if type(e).__name__ != "VerifierFailure":  # a verifier failing on most samples: said in one line
                raise
            _one_line(program, f"error: {e}", everywhere=True)
            raise SystemExit(1) from None
        except OSError as e:
            line = _environment_error(e)
            if line is None:
                raise
            _one_line(program, f"error: {line}", everywhere=True)
            raise SystemExit(1) from None

    return wrapped


def _one_line(program: str, msg: str, everywhere: bool = False, leading_newline: bool = False) -> None:
    """``msg`` on stderr (the main process; ``everywhere``: any process, for errors one rank alone may meet)."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            Path(error_file).write_text(json.dumps({"message": f"{program}: {msg}", "timestamp": int(time.time())}))
        except OSError:
            pass
    if everywhere or int(os.environ.get("RANK", "0") or 0) == 0:
        sys.stdout.flush()
        print(("\n" if leading_newline else "") + f"{program}: {msg}", file=sys.stderr, flush=True)
