"""Per-run memory and process caps through cgroups, where this process may create them.

Resource limits bound each process; a cgroup bounds the whole run: the sum of
every process's memory (tmpfs pages included), and on cgroup v2 the number of
tasks too (on v1 the per-namespace process limit already does that, and each
extra hierarchy would cost a migration, about 2.5 ms, per run). The sandbox
creates one child cgroup per concurrent slot below the cgroup it runs in
(cgroup v1 ``memory`` hierarchy, or a v2 cgroup with ``memory`` and ``pids``
delegated), moves the run's first process into it before that process
executes anything, and removes it after the run. Where no such cgroup
can be created (no permission, no delegation), :func:`available` says why and
the sandbox relies on resource limits alone.

A run whose caller was killed (a scoring worker's OOM kill) leaves its cgroup
behind: nobody is left to remove it. The next run in that slot removes it
before making its own (an old cgroup's limits and charges are not the new
run's: on v1 a larger limit than the old memory+swap limit cannot even be
written), and :func:`remove_stale` clears those of slots nobody holds.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, ContextManager

ROOT = Path("/sys/fs/cgroup")
_PREFIX = "reasonrl-sandbox"


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ('' key: the v2 unified path)."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _bases() -> dict[str, Path] | None:
    """Where to create run cgroups: {'memory': dir} (v1) or {'v2': dir}."""
    own = _own_paths()
    if "memory" in own and (ROOT / "memory").is_dir():
        return {"memory": ROOT / "memory" / own["memory"].lstrip("/")}
    if "" in own and (ROOT / "cgroup.controllers").exists():
        base = ROOT / own[""].lstrip("/")
        enabled = (base / "cgroup.subtree_control").read_text().split() if (base / "cgroup.subtree_control").exists() else []
        if {"memory", "pids"} <= set(enabled):
            return {"v2": base}
    return None


class RunCgroup:
    """One run's cgroup(s): created with limits, joined by the run's first process, removed after."""

    def __init__(self, bases: dict[str, Path], name: str, memory_bytes: int, max_tasks: int):
        self.v2 = "v2" in bases
        self.dirs: dict[str, Path] = {k: b / name for k, b in bases.items()}
        made = []
        try:
            for d in self.dirs.values():
                try:
                    d.mkdir()
                except FileExistsError:  # a killed run's: its limits and charges are not this run's
                    clear(d)
                    d.mkdir()
                made.append(d)
            if self.v2:
                d = self.dirs["v2"]
                _write(d / "memory.max", memory_bytes)
                _write(d / "memory.swap.max", 0, optional=True)
                _write(d / "pids.max", max_tasks)
            else:
                _write(self.dirs["memory"] / "memory.limit_in_bytes", memory_bytes)
                _write(self.dirs["memory"] / "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
            self._oom0 = self.oom_kills()
        except OSError:
            for d in made:
                _rmdir(d)
            raise

    def add(self, pid: int) -> None:
        for d in self.dirs.values():
            _write(d / "cgroup.procs", pid)

    def oom_kills(self) -> int:
        f = self.dirs["v2"] / "memory.events" if self.v2 else self.dirs["memory"] / "memory.oom_control"
        try:
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def oom_killed(self) -> bool:
        return self.oom_kills() > self._oom0

    def remove(self) -> None:
        for d in self.dirs.values():
            _rmdir(d)


def _write(path: Path, value, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not optional:
            raise


def _rmdir(d: Path) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass


def clear(d: Path, wait_s: float = 2.0) -> None:
    """Remove the cgroup ``d`` that a dead run left, killing whatever is still in it (through a pidfd, after
    checking that the process is a member, so a recycled pid is never hit); OSError if it will not go."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        for pid in _members(d):
            try:
                fd = os.pidfd_open(pid)  # pins the process: a signal through fd reaches it or nobody
            except OSError:
                continue
            try:
                if pid in _members(d):  # still listed after the pin: fd's process is a member (not a recycled pid)
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)
        time.sleep(0.02)


def _members(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_stale(held: Callable[[int], ContextManager[bool]]) -> int:
    """Remove the run cgroups of this uid that dead runs left, for each slot that ``held(slot)`` (a context
    manager yielding True when it could take the slot) shows nobody holds; how many were removed."""
    bases, _ = available()
    if bases is None:
        return 0
    pattern = re.compile(rf"{re.escape(_PREFIX)}-{os.getuid()}-(\d+)")
    stale: dict[int, list[Path]] = {}
    for base in bases.values():
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            m = pattern.fullmatch(name)
            if m:
                stale.setdefault(int(m.group(1)), []).append(base / name)
    removed = 0
    for slot, dirs in sorted(stale.items()):
        with held(slot) as free:
            if not free:
                continue  # a live run's
            for d in dirs:
                try:
                    clear(d)
                    removed += 1
                except OSError:
                    pass
    return removed


_cache: dict[str, object] = {}


def available() -> tuple[dict[str, Path] | None, str]:
    """(bases, '') when run cgroups can be made here, else (None, why not); probed once per process."""
    if "r" not in _cache:
        try:
            bases = _bases()
            if bases is None:
                raise OSError("no cgroup v1 memory hierarchy and no v2 cgroup with memory+pids delegated")
            RunCgroup(bases, f"{_PREFIX}-probe-{os.getpid()}", 64 << 20, 8).remove()
            _cache["r"] = (bases, "")
        except OSError as e:
            _cache["r"] = (None, f"no per-run cgroup ({e})")
    return _cache["r"]  # type: ignore[return-value]


def for_slot(slot: int, memory_bytes: int, max_tasks: int) -> RunCgroup | None:
    """The run cgroup of ``slot`` (whose lock the caller holds); None where run cgroups cannot be made here at
    all (:func:`available` says why); OSError where they can but this one could not be."""
    bases, _ = available()
    if bases is None:
        return None
    return RunCgroup(bases, f"{_PREFIX}-{os.getuid()}-{slot}", memory_bytes, max_tasks)
