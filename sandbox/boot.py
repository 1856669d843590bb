"""The first code that runs inside a sandbox, before the untrusted program.

Trusted; standard library only, because it runs on the bare interpreter with
``-I -S``. Usage (the sandbox builds the command line):

    python -I -S -B boot.py STARTED_FD NPROC NOFILE FSIZE CPU_S AS_BYTES PROGRAM

It tells the parent through STARTED_FD that the sandbox came up (so a setup
failure is never mistaken for the program's own failure), sets the resource
limits here, inside the sandbox's own user namespace, so
that the process count is charged to this sandbox alone and not to every run
of the same user; closes every inherited descriptor above stderr; then runs
PROGRAM as ``__main__``.
"""

import os
import resource
import sys


def _limit(which, soft, hard=None):
    resource.setrlimit(which, (soft, soft if hard is None else hard))


def main():
    started_fd, nproc, nofile, fsize, cpu_s, as_bytes = (int(x) for x in sys.argv[1:7])
    program = sys.argv[7]
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, nproc)
    _limit(resource.RLIMIT_NOFILE, nofile)
    _limit(resource.RLIMIT_FSIZE, fsize)
    _limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU first, SIGKILL a second later
    _limit(resource.RLIMIT_AS, as_bytes)
    main = type(sys)("__main__")  # a fresh __main__ module (runpy would cost 4 ms of imports per run)
    main.__file__ = program
    # Only now, with every limit in force and nothing left to fail but the program itself,
    # tell the parent that the program is starting: anything before this is a setup failure.
    os.write(started_fd, b"1")
    os.closerange(3, 1 << 16)
    sys.argv = [program]
    sys.modules["__main__"] = main
    with open(program, "rb") as f:
        source = f.read()
    exec(compile(source, program, "exec"), main.__dict__)


if __name__ == "__main__":
    main()
