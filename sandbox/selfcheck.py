"""The hostile battery: run known attacks in the sandbox and check the host afterwards.

    python -m reasonrl.sandbox.selfcheck          # prints a table, exits 1 on any failure

Each case is a program that tries one thing a model-written program should
never manage (exhaust the host, reach the network, read secrets, escape,
disturb other processes). A case passes when the run ends with an expected
status, the host shows no effect (a listener it started saw nothing, a
process it started is alive, a file it names was not written, the output
holds no secret), and no sandbox process of its own is left running (other
callers' sandboxes on the machine are never counted or killed, so the battery
can run beside a training run). The network cases use only listeners on
127.0.0.1 that this check starts itself.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import bwrap, cgroup
from .runner import Result, Sandbox


@dataclass
class Case:
    name: str
    code: str
    expect: tuple[str, ...]  # acceptable statuses
    host_check: Callable[[Result], str] | None = None  # '' when the host is untouched, else what went wrong


@dataclass
class Row:
    name: str
    status: str
    wall_s: float
    problem: str  # '' when the case passed

    @property
    def ok(self) -> bool:
        return not self.problem


def sandbox_processes(root: int | None = None) -> list[int]:
    """Pids of sandbox processes still alive among the descendants of ``root`` (default: this
    process), i.e. the runs this caller started, directly or through its scoring workers. Other
    callers' sandboxes on the same machine (a training run beside a test run, two batteries at
    once) are neither counted nor touched."""
    pids = []
    for pid in _descendants(os.getpid() if root is None else root):
        try:
            uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if bwrap.UID_BASE <= uid < bwrap.UID_BASE + bwrap.MAX_SLOTS or b"/sbx/boot.py" in cmd:
            pids.append(pid)
    return pids


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` in the process tree (from the parent pids in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class _Host:
    """What the battery touches on the host: listeners, a bystander process, a secret, paths."""

    def __enter__(self):
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.secret_name, self.secret = "REASONRL_SELFCHECK_SECRET", secrets.token_hex(12)
        os.environ[self.secret_name] = self.secret
        self.tmp = tempfile.TemporaryDirectory(prefix="reasonrl-selfcheck-")
        self.outside = os.path.join(self.tmp.name, "written-from-sandbox")
        self.project = str(Path(__file__).resolve().parents[1])
        self.home = str(Path.home())
        self.usr_file = os.path.realpath(sys.executable) if sys.executable.startswith("/usr/") else "/usr/bin/env"
        return self

    def __exit__(self, *exc):
        os.environ.pop(self.secret_name, None)
        self.bystander.kill()
        self.bystander.wait()
        self.tcp.close()
        self.udp.close()
        self.tmp.cleanup()

    def tcp_untouched(self, _r) -> str:
        try:
            conn, _ = self.tcp.accept()
            conn.close()
            return "the 127.0.0.1 TCP listener accepted a connection"
        except BlockingIOError:
            return ""

    def udp_untouched(self, _r) -> str:
        try:
            self.udp.recvfrom(100)
            return "the 127.0.0.1 UDP listener received a datagram"
        except BlockingIOError:
            return ""

    def bystander_alive(self, _r) -> str:
        return "" if self.bystander.poll() is None else "a host process was killed"

    def nothing_written(self, _r) -> str:
        return f"{self.outside} was written" if os.path.exists(self.outside) else ""

    def no_secret(self, r) -> str:
        return "the secret environment variable leaked" if self.secret in r.stdout + r.stderr else ""

    def printed(self, marker: str) -> Callable[[Result], str]:
        return lambda r: "" if marker in r.stdout else f"the program did not reach its check ({r.stderr.strip()[-120:]!r})"


_LIBC = "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
_IO_SETUP = {"x86_64": 206, "aarch64": 0}.get(os.uname().machine, 206)
_SYNC = {"x86_64": 162, "aarch64": 81}.get(os.uname().machine, 162)


def battery(h: _Host, per_run_memory: bool = True) -> list[Case]:
    denied = "\nfor p in PATHS:\n    try:\n        os.listdir(p); print('LISTED', p)\n    except OSError:\n        print('DENIED', p)\n"
    return [
        Case("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", ("timeout",)),
        Case(
            "thread bomb",
            "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
            ("error", "timeout", "memory"),
        ),
        Case("memory bomb", "x = []\nwhile True:\n    x.append(bytearray(1 << 24))", ("memory",)),
        Case("infinite loop", "while True:\n    pass", ("timeout",)),
        Case("sleep forever", "import time\ntime.sleep(10**6)", ("timeout",)),
        Case("close output, then spin", "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", ("timeout",)),
        Case(
            "orphan daemon",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(10**6)\nprint('parent leaves')",
            ("ok",),
        ),
        Case("huge stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", ("output_limit",)),
        Case(
            "disk fill",
            "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))",
            ("error",),
            lambda r: "" if "File too large" in r.stderr or "No space" in r.stderr else "the write did not hit a limit",
        ),
        Case(
            "disk fill, many files",
            "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20)); i += 1",
            ("error",),
        ),
        Case(
            "fill /dev and /dev/shm",
            "import os\nfor d in ('/dev', '/dev/shm'):\n    try:\n        for i in range(200):\n            open(f'{d}/f{i}', 'wb').write(b'x' * (1 << 20))\n        print('FILLED', d)\n    except OSError:\n        pass",
            ("ok",),
            lambda r: "" if "FILLED" not in r.stdout else "a 200 MiB write went through",
        ),
        Case(
            "memory bomb across processes",
            "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        b = bytearray(200 << 20)\n        time.sleep(60)\n        os._exit(0)\nfor _ in range(8):\n    os.wait()",
            ("memory",) if per_run_memory else ("memory", "timeout", "error"),
        ),
        Case(
            "memory outside the address-space limit",
            _LIBC
            + "import os\ngot = []\nfd = libc.memfd_create(b'x', 0)\ngot.append(('memfd', fd))\nshm = libc.shmget(0, 1 << 26, 0o1600)\ngot.append(('shm', shm))\nmsq = libc.msgget(0, 0o1600)\ngot.append(('msg', msq))\nsem = libc.semget(0, 32000, 0o600)\ngot.append(('sem', sem))\nprint(got)\nassert all(v < 0 for _, v in got)",
            ("ok",),
            lambda r: "" if "[('memfd', -1), ('shm', -1), ('msg', -1), ('sem', -1)]" in r.stdout else f"got {r.stdout.strip()!r}",
        ),
        Case(
            "unaccepted AF_UNIX connections",
            "import socket\nsrv = socket.socket(socket.AF_UNIX)\nsrv.bind('/tmp/l')\ntry:\n    srv.listen(4096)\nexcept OSError:\n    print('NO LISTEN')\n    raise SystemExit\nwhile True:\n    c = socket.socket(socket.AF_UNIX)\n    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)\n    c.connect('/tmp/l')\n    c.setblocking(False)\n    try:\n        while True:\n            c.send(b'x' * (1 << 20))\n    except BlockingIOError:\n        c.close()",
            ("memory",) if per_run_memory else ("ok",),
            None if per_run_memory else h.printed("NO LISTEN"),
        ),
        Case(
            "pseudo-terminals (host-wide pool)",
            "import os\ntry:\n    os.openpty()\n    print('PTY')\nexcept OSError:\n    print('NO PTY')",
            ("ok",),
            h.printed("NO PTY"),
        ),
        Case(
            "memory in extended attributes",
            "import os\nopen('/tmp/x', 'w').close()\ntry:\n    for i in range(20000):\n        os.setxattr('/tmp/x', f'user.a{i}', b'x' * 65000)\n    print('STORED')\nexcept OSError as e:\n    print('XATTR', e.errno)",
            ("ok",),
            lambda r: "" if "XATTR 1" in r.stdout else f"got {r.stdout.strip()!r}",
        ),
        Case(
            "host-wide AIO contexts",
            _LIBC
            + "ctx = ctypes.c_ulong(0)\nprint('IO_SETUP', libc.syscall(SYS_IO_SETUP, 65536, ctypes.byref(ctx)))".replace(
                "SYS_IO_SETUP", str(_IO_SETUP)
            ),
            ("ok",),
            h.printed("IO_SETUP -1"),
        ),
        Case(
            "lock a shared /usr file",
            f"import fcntl\nf = open({h.usr_file!r}, 'rb')\nfor how in ('flock', 'lockf'):\n    try:\n        getattr(fcntl, how)(f, fcntl.LOCK_SH | fcntl.LOCK_NB); print('LOCKED', how)\n    except OSError as e:\n        print('DENIED', how, e.errno)",
            ("ok",),
            lambda r: "" if r.stdout.count("DENIED") == 2 else f"got {r.stdout.strip()!r}",
        ),
        Case(
            "query locks on a shared /usr file",
            f"import fcntl, struct\nf = open({h.usr_file!r}, 'rb')\ntry:\n    fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); print('QUERIED')\nexcept OSError as e:\n    print('DENIED', e.errno)",
            ("ok",),
            h.printed("DENIED 1"),
        ),
        Case(
            "host-wide sync",
            _LIBC + f"print('SYNC', libc.syscall({_SYNC}), libc.syncfs(open('/usr/bin/env', 'rb').fileno()))",
            ("ok",),
            h.printed("SYNC -1 -1"),
        ),
        Case(
            "lower a trusted process's limits and priority",
            "import os, resource\nif os.fork() == 0:\n    for f in (lambda: resource.prlimit(1, resource.RLIMIT_NOFILE, (8, 8)), lambda: os.setpriority(os.PRIO_PROCESS, 1, 19), lambda: os.setpriority(os.PRIO_PGRP, 0, 19)):\n        try:\n            f()\n        except OSError:\n            pass\n    os._exit(0)\nos.wait()\nprint('PID1', resource.getrlimit(resource.RLIMIT_NOFILE)[0], os.getpriority(os.PRIO_PROCESS, 0))",
            ("ok",),
            lambda r: "" if "PID1 64 0" in r.stdout else f"got {r.stdout.strip()!r}",
        ),
        Case(
            "watch /usr with inotify",
            _LIBC + "fd = libc.inotify_init1(0)\nprint('WATCH', fd, libc.inotify_add_watch(max(fd, 0), b'/usr/lib', 0x20))",
            ("ok",),
            h.printed("WATCH -1 -1"),
        ),
        Case(
            "socketpair of other families",
            "import socket\nfor fam in (2, 10, 16, 30):\n    try:\n        socket.socketpair(fam, socket.SOCK_SEQPACKET); print('PAIR', fam)\n    except OSError as e:\n        print('DENIED', fam, e.errno)",
            ("ok",),
            lambda r: "" if r.stdout.count("DENIED") == 4 and "PAIR" not in r.stdout else f"got {r.stdout.strip()!r}",
        ),
        Case(
            "tcp connect to host",
            f"import socket\ns = socket.create_connection(('127.0.0.1', {h.tcp.getsockname()[1]}), timeout=2)\nprint('CONNECTED')",
            ("error",),
            h.tcp_untouched,
        ),
        Case(
            "udp send to host",
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', {h.udp.getsockname()[1]}))\nprint('SENT')",
            ("error",),
            h.udp_untouched,
        ),
        Case(
            "read /etc/shadow",
            "print(open('/etc/shadow').read())",
            ("error",),
            lambda r: "shadow was read" if "root:" in r.stdout else "",
        ),
        Case(
            "read project dir",
            f"import os, sys\nPATHS = [{h.project!r}]" + denied,
            ("ok",),
            lambda r: "" if "DENIED" in r.stdout and "LISTED" not in r.stdout else "the project tree is visible",
        ),
        Case(
            "read home dir",
            f"import os, sys\nPATHS = [{h.home!r}, '/root', '/home']" + denied,
            ("ok",),
            lambda r: "" if "LISTED" not in r.stdout else "a home directory is visible",
        ),
        Case(
            "write outside temp",
            f"import os\nfor p in [{h.outside!r}, '/usr/x', '/sbx/x', '/x']:\n    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n    except OSError:\n        pass\nraise SystemExit(1)",
            ("error",),
            lambda r, h=h: h.nothing_written(r) or ("wrote outside /tmp" if "WROTE" in r.stdout else ""),
        ),
        Case(
            "kill other processes",
            f"import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill({h.bystander.pid}, signal.SIGKILL)",
            ("error",),
            h.bystander_alive,
        ),
        Case(
            "ptrace",
            _LIBC + "r = libc.ptrace(16, 1, 0, 0)\nprint('PTRACE', r)\nassert r == 0, 'ptrace denied'",
            ("error",),
            h.printed("PTRACE -1"),
        ),
        Case(
            "user namespace",
            _LIBC + "r = libc.unshare(0x10000000)\nprint('UNSHARE', r)\nassert r == 0, 'unshare denied'",
            ("error",),
            h.printed("UNSHARE -1"),
        ),
        Case("environment variables", "import os\nprint(dict(os.environ))", ("ok",), h.no_secret),
        Case(
            "deep recursion",
            "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
            ("error", "memory", "timeout"),
        ),
        Case("forge the CPU limit's exit status", "import sys\nsys.exit(128 + 24)", ("error",)),
        Case(
            "segfault",
            "import ctypes\nctypes.string_at(0)",
            ("error",),
            lambda r: "" if "SIGSEGV" in r.reason else f"reason {r.reason!r}",
        ),
    ]


def run_battery(sandbox: Sandbox | None = None, timeout_s: float = 2.0, memory_mb: int = 256) -> list[Row]:
    sandbox = sandbox or Sandbox()
    rows = []
    per_run = sandbox.use_cgroup and not cgroup.available()[1]
    with _Host() as h:
        for case in battery(h, per_run):
            r = sandbox.run(case.code, timeout_s=timeout_s, memory_mb=memory_mb)
            problem = "" if r.status in case.expect else f"status {r.status} ({r.reason}), expected {'/'.join(case.expect)}"
            if not problem and case.host_check is not None:
                problem = case.host_check(r)
            left = sandbox_processes()  # this caller's runs only
            if left:
                problem = (problem + "; " if problem else "") + f"{len(left)} sandbox processes left"
                for pid in left:  # ours (descendants of this process): clean up so the next case starts clean
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            rows.append(Row(case.name, r.status, r.wall_s, problem))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| case | status | wall s | contained |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.status} | {r.wall_s:.2f} | {'yes' if r.ok else 'NO: ' + r.problem} |")
    return "\n".join(lines)


def main() -> int:
    sb = Sandbox()
    sb.check()
    print("sandbox:", sb.describe())
    t0 = time.monotonic()
    rows = run_battery(sb)
    print(table(rows))
    print(f"{sum(r.ok for r in rows)}/{len(rows)} contained, {time.monotonic() - t0:.1f} s")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
