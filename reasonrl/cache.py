"""The user cache: built base models and converted checkpoints.

Entries live under ``$XDG_CACHE_HOME/reasonrl`` (default ``~/.cache/reasonrl``).
:func:`build_once` is how an entry comes to exist:

- an entry is built in a temporary sibling, checked (a model folder must hold
  a config, a tokenizer and every weight of the model it was saved from) and
  only then renamed into place, so neither an interrupted nor a broken build
  ever leaves an entry that looks complete;
- a file lock (``<entry>.lock``, removed when released) keeps two processes from
  building the same entry at once; the one that waits says for whom (pid, host,
  what it builds, since when) and keeps saying it while it waits;
- under ``torchrun`` only the first process of each machine (``LOCAL_RANK`` 0)
  builds; the others wait until the entry is in place, so a model is built or
  converted once per machine, never once per process.

It does not evict anything: delete the folder to reclaim space.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

WAIT_REPORT_S = 60.0  # how often a waiting process says it still waits


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reasonrl"


def config_key(spec: Any) -> str:
    """A short stable hash of a JSON-serialisable spec (sorted keys)."""
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _say(msg: str) -> None:
    print(f"[reasonrl] {msg}", flush=True)


def _holder(lock_file: Path) -> str:
    """Who holds a lock, as its holder wrote it into the lock file."""
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", time.time())))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('what') or 'a cache entry'}, since {since})"


@contextlib.contextmanager
def locked(path: Path, what: str = "", poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive lock on ``path.lock`` for the duration; the lock file is removed on release.

    The holder writes its pid, host, ``what`` and start time into the lock file; a process that has to wait
    prints who holds it at once and again every minute (a build can take minutes)."""
    lock_file = Path(str(path) + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    t0, reported = time.monotonic(), 0.0
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            waited = time.monotonic() - t0
            if reported == 0.0 or waited - reported >= WAIT_REPORT_S:
                reported = max(waited, 1e-9)
                _say(f"waiting for {_holder(lock_file)} to finish with {path} ({waited:.0f} s so far; lock {lock_file})")
            time.sleep(poll_s)
            continue
        # the file may have been removed (its holder finished) between open and flock: lock the current one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
        os.write(fd, json.dumps(info).encode())
        if reported:
            _say(f"{path}: lock acquired after {time.monotonic() - t0:.0f} s")
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # while still holding it: a waiter that then locks the old file sees it is gone
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only on success (and after ``check(tmp)`` passed:
    it raises to refuse the folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if check is not None:
            check(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- model folders
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class BrokenEntry(RuntimeError):
    """A folder that was to become a cache entry does not hold a loadable model: it is not cached."""


def model_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a loadable Hugging Face model folder (None: it is): config, tokenizer and
    weight files present, every shard an index names present."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return "no config.json"
    try:
        json.loads((folder / "config.json").read_text())
    except ValueError as e:
        return f"config.json is not JSON ({e})"
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return "no tokenizer files"
    weights = [f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not weights:
        return f"no weights (none of {', '.join(WEIGHT_FILES)})"
    for index in (f for f in weights if f.endswith(".index.json")):
        try:
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
        except (ValueError, KeyError) as e:
            return f"{index} is not a weight index ({e})"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{index} names shards that are not there: {', '.join(missing)}"
    return None


def saved_tensor_names(folder: Path) -> set[str]:
    """The tensor names stored in a folder's safetensors files (read from their headers only)."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    return names


def check_model_folder(folder: Path, model=None) -> None:
    """Raise :class:`BrokenEntry` unless ``folder`` is a loadable model folder holding every tensor of
    ``model`` (the model it was saved from; a tensor that shares its storage with a saved one, a tied
    weight, counts as saved)."""
    folder = Path(folder)
    problem = model_folder_problem(folder)
    if problem is None and model is not None and any(folder.glob("*.safetensors")):
        saved = saved_tensor_names(folder)
        state = model.state_dict()
        stored = {state[k].data_ptr() for k in saved if k in state}
        missing = sorted(k for k, t in state.items() if k not in saved and t.data_ptr() not in stored)
        if missing:
            more = ", ..." if len(missing) > 3 else ""
            problem = f"weights missing for {len(missing)} tensors ({', '.join(missing[:3])}{more})"
    if problem is not None:
        raise BrokenEntry(f"{folder} is not a loadable model folder: {problem}")


def save_model_folder(model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer into ``folder``, by this process whatever its global rank:
    transformers writes no config and no weights on a rank other than 0 of a started process group, and the
    first process of a second machine builds that machine's cache entries."""
    model.should_save_on_this_rank = lambda is_main_process: True  # an instance attribute, dropped below
    try:
        model.save_pretrained(folder)
    finally:
        del model.should_save_on_this_rank
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- building an entry once
def local_rank() -> int:
    """This process's index among the processes of a ``torchrun`` launch on this machine (0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def build_once(
    final: Path,
    build: Callable[[Path], None],
    what: str,
    *,
    ready: Callable[[Path], bool] | None = None,
    check: Callable[[Path], None] | None = None,
    poll_s: float = 0.5,
) -> Path:
    """The cache entry ``final``, built on first use: ``build(tmp)`` fills a temporary folder, ``check(tmp)``
    refuses it by raising (default: :func:`check_model_folder`), and only then is it renamed into place.
    ``ready(final)`` says an entry is complete (default: a loadable model folder). Under ``torchrun`` only
    ``LOCAL_RANK`` 0 builds; the other processes wait until the entry is there."""
    final = Path(final)
    ready = ready or (lambda p: model_folder_problem(p) is None)
    check = check or check_model_folder
    if ready(final):
        return final
    if local_rank() > 0:  # the first process of this machine builds it (or waits for whoever does)
        t0 = time.monotonic()
        while not ready(final):
            time.sleep(poll_s)
        if time.monotonic() - t0 > 1.0:
            _say(f"{what}: ready after {time.monotonic() - t0:.0f} s (built by local rank 0)")
        return final
    with locked(final, what, poll_s=poll_s):
        if ready(final):  # built by another process meanwhile
            return final
        if final.exists():
            _say(f"{final} is incomplete ({model_folder_problem(final) or 'not ready'}): building it again")
        _say(f"{what} (first use, cached afterwards): {final}")
        with atomic_dir(final, check) as tmp:
            build(tmp)
    return final


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) is a write that ran out of space."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
