"""Isolated execution of untrusted, model-written code.

    from reasonrl.sandbox import run
    r = run("print(input()[::-1])", stdin="abc\\n", timeout_s=5.0, memory_mb=512)
    r.status, r.stdout   # ("ok", "cba\\n")

``run`` executes a Python program and returns a :class:`Result` with a status
of ``ok``, ``error`` (non-zero exit or a signal), ``timeout`` (wall clock or
CPU time), ``memory`` (the run's cgroup cap, or the address-space limit),
``output_limit`` (stdout or stderr over the cap; the run is killed) or
``infra_error`` (the sandbox itself could not run the program; never the
program's fault). ``Result.info`` is ``{"no_memory_cap": 1}`` for a run whose
per-run cgroup could not be made. Grading belongs to the caller, in the
trusted parent: the exit code and output are evidence, not a verdict.
``Sandbox`` holds the settings (isolation, limits, seccomp, cgroup) for
callers that need other values than the defaults.

What it covers and what it does not (namespaces and the filesystem view, the
per-slot identity, the launcher, resource limits, the per-run cgroup, the
system-call filter, which statuses the parent establishes and which are the
program's word) is the threat model in ``sandbox/README.md`` of the source
tree; ``python -m reasonrl.sandbox.selfcheck`` runs the hostile battery.
"""

from .runner import ISOLATIONS, STATUSES, Limits, Result, Sandbox, SandboxUnavailable

_default: Sandbox | None = None


def run(code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> Result:
    """Run ``code`` (Python source) in the default sandbox; see the module docstring and README.md."""
    global _default
    if _default is None:
        _default = Sandbox()
    return _default.run(code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)


__all__ = ["run", "Result", "Sandbox", "Limits", "SandboxUnavailable", "STATUSES", "ISOLATIONS"]
