"""The in-sandbox test runner for HumanEval-style problems (function + ``check``).

Runs as the sandboxed program; standard library only. Its stdin is one line
holding the run's random token, then a JSON plan from the code verifier:
``program`` (the candidate's module source), ``prompt`` (the problem's own
source, trusted), ``entry_point``, ``setup`` (the test module without its
``check``), ``steps`` (the statements of ``check``'s body, each marked
whether it is a test) and ``mode``. For every test it writes one record

    <token> <index> pass|fail <json reason>

on stdout. The trusted parent counts only records that carry the token, and a
test without a record has failed.

Two processes (``mode="calls"``, the default). Before it reads the token, this
process makes itself undumpable (so no other process of the sandbox may read
its memory through /proc) and forks a *worker*. The worker receives the
program, the entry point and the mode (nothing of the tests: no setup, no
expected values) and answers each ``candidate(*args)`` over a pipe with the
return value as tagged JSON of exact built-in types; it never holds the token.
The tests, their namespace (the prompt's helpers, pristine built-ins) and the
records live only in this process, which executes nothing the program wrote.
So patching built-ins or modules, walking frames, the garbage collector or its
own memory for the token or the expected values, exiting early or returning an
object whose ``__eq__`` always says True all stay inside the worker and change
nothing here; a worker that dies fails every test still to come. An exception
the program raises reaches the tests as one neutral type, ``ProgramRaised``
(its message names the original), so that no exception type can steer the
tests' own control flow (a ``StopIteration`` ending a ``map`` early, say).

``mode="tests"`` (chosen by the verifier only when the tests use names that
only the program defines, e.g. an MBPP setup building the program's ``Node``
class): the worker runs the tests too and reports each outcome, which this
process stamps with the token. That is only as strong as one Python process:
a program that tampers with the interpreter can fake its results there.
"""

import builtins
import collections
import json
import os
import pickle
import struct
import sys

_MAX_MSG = 64 << 20
_MAX_DEPTH = 100
_STDLIB_DICTS = (collections.Counter, collections.OrderedDict, collections.defaultdict)
# What the worker receives per mode: only "tests" needs the tests, for it runs them beside the program.
_WORKER_KEYS = {"calls": ("program", "entry_point", "mode"), "tests": ("program", "entry_point", "mode", "setup", "steps")}


class ProgramRaised(Exception):
    """The one exception type the tests see when the program raised (any type: StopIteration too)."""


# -- framing ----------------------------------------------------------------------------
def _send(fd, data):
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(fd):
    head = _read_exact(fd, 8)
    if head is None:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_MSG:
        raise ValueError(f"message of {n} bytes")
    return _read_exact(fd, n)


# -- values: exact built-in types only, as tagged JSON ------------------------------------
class _Unclean(Exception):
    pass


def _encode(v, depth=0):
    t = type(v)
    if v is None or t is bool or t is str:
        return v
    if depth > _MAX_DEPTH:
        raise _Unclean("nested too deeply")
    if t is int:
        return {"i": str(v)}
    if t is float:
        return {"f": repr(v)}
    if t is complex:
        return {"c": [repr(v.real), repr(v.imag)]}
    if t is bytes:
        return {"b": v.hex()}
    for tag, kind in (("l", list), ("t", tuple), ("s", set), ("fs", frozenset)):
        if t is kind:
            return {tag: [_encode(x, depth + 1) for x in kind.__iter__(v)]}
    if t is dict or t in _STDLIB_DICTS:  # the standard library's dicts compare as plain dicts
        return {"d": [[_encode(k, depth + 1), _encode(x, depth + 1)] for k, x in dict.items(v)]}
    raise _Unclean(f"returned a {t.__name__}; only built-in values are compared")


_BUILD = {"l": list, "t": tuple, "s": set, "fs": frozenset}


def _decode(v, depth=0):
    """The inverse of _encode, accepting nothing else (the worker is not trusted)."""
    if v is None or type(v) in (bool, str):
        return v
    if type(v) is not dict or len(v) != 1 or depth > _MAX_DEPTH:
        raise ValueError("malformed value")
    ((tag, x),) = v.items()
    if tag == "i":
        return int(x)
    if tag == "f":
        return float(x)
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag == "b":
        return bytes.fromhex(x)
    if tag in _BUILD and type(x) is list:
        return _BUILD[tag](_decode(e, depth + 1) for e in x)
    if tag == "d" and type(x) is list:
        return {_decode(k, depth + 1): _decode(e, depth + 1) for k, e in x}
    raise ValueError(f"unknown tag {tag!r}")


# -- the worker: the only process that runs the program -------------------------------------
def _worker(rfd, wfd):
    job = pickle.loads(_recv(rfd))  # only _WORKER_KEYS[mode]
    ns = {"__builtins__": builtins, "__name__": "solution"}
    try:
        exec(compile(job["program"], "solution.py", "exec"), ns)
        fn = ns.get(job["entry_point"])
        if not callable(fn):
            raise NameError(f"no function named {job['entry_point']}")
    except BaseException as e:  # SystemExit included: exiting early passes nothing
        _send(wfd, json.dumps({"load_error": f"{type(e).__name__}: {e}"[:300]}).encode())
        return
    _send(wfd, b'{"ok": true}')
    if job["mode"] == "tests":
        _run_tests_here(job, ns, fn, wfd)
        return
    while True:
        req = _recv(rfd)
        if req is None:
            return
        args, kwargs = pickle.loads(req)
        try:
            out = {"v": _encode(fn(*args, **kwargs))}
        except _Unclean as e:
            out = {"exc": ["AssertionError", str(e)]}
        except BaseException as e:
            out = {"exc": [type(e).__name__, str(e)[:300]]}
        _send(wfd, json.dumps(out).encode())


def _run_tests_here(job, ns, fn, wfd):
    """mode="tests": the tests need the program's own names, so they run beside it."""

    def candidate(*args, **kwargs):
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            raise ProgramRaised(f"{type(e).__name__}: {e}"[:300]) from None
        try:
            return _decode(_encode(value))
        except _Unclean as e:
            raise AssertionError(str(e)) from None

    test_ns = dict(ns)
    test_ns["candidate"] = test_ns[job["entry_point"]] = candidate
    for i, code in [(-1, job["setup"])] + list(enumerate(s["code"] for s in job["steps"])):
        try:
            exec(compile(code, f"test_{i}.py", "exec"), test_ns)
            ok, why = True, ""
        except BaseException as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        _send(wfd, json.dumps({"i": i, "ok": ok, "why": why[:300]}).encode())
        if i == -1 and not ok:
            return


# -- the trusted side ---------------------------------------------------------------------
def _undumpable():
    """Make this process's memory unreadable to the worker (/proc/<pid>/mem), or say why not."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
        if libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_GET_DUMPABLE
            return "PR_SET_DUMPABLE did not take"
    except BaseException as e:  # MemoryError at tiny memory limits, no ctypes, ...
        return f"{type(e).__name__}: {e}"
    return ""


def main():
    why = _undumpable()
    if why:  # fail closed: without it the worker could read the token out of this process
        token = sys.stdin.readline().strip()  # no worker exists yet, so reading it is safe
        os.write(1, f"\n{token} harness_error {json.dumps('cannot protect the test runner: ' + why)}\n".encode())
        return
    to_w_r, to_w_w = os.pipe()
    from_w_r, from_w_w = os.pipe()
    if os.fork() == 0:
        os.close(0)  # stdin carries the token: the worker never gets to read it
        os.dup2(2, 1)  # nor may it write where the records go: its prints land on stderr
        os.close(to_w_w)
        os.close(from_w_r)
        try:
            _worker(to_w_r, from_w_w)
        finally:
            os._exit(0)
    os.close(to_w_r)
    os.close(from_w_w)
    token = sys.stdin.readline().strip()
    plan = json.loads(sys.stdin.read())
    out, pristine = 1, dict(vars(builtins))

    def record(i, ok, why=""):
        try:
            os.write(out, f"\n{token} {i} {'pass' if ok else 'fail'} {json.dumps(str(why)[:200])}\n".encode())
        except OSError:
            pass

    tests = [i for i, step in enumerate(plan["steps"]) if step["test"]]

    def fail_all(why, after=-1):
        for i in tests:
            if i > after:
                record(i, False, why)

    def reply():
        try:
            data = _recv(from_w_r)
            return None if data is None else json.loads(data)
        except Exception:  # malformed, oversized or absurdly nested: the worker is not trusted
            return None

    _send(to_w_w, pickle.dumps({k: plan[k] for k in _WORKER_KEYS[plan["mode"]]}))
    hello = reply()
    if not isinstance(hello, dict) or "ok" not in hello:
        loaded = hello.get("load_error") if isinstance(hello, dict) else None
        fail_all(f"program failed to load: {loaded}" if loaded else "the program's process died while loading")
        return
    if plan["mode"] == "tests":
        while True:
            r = reply()
            if not isinstance(r, dict) or type(r.get("i")) is not int:
                break
            if r["i"] == -1 and not r.get("ok"):
                fail_all(f"test setup failed: {r.get('why')}")
            elif r["i"] in tests:
                record(r["i"], r.get("ok") is True, r.get("why", ""))
        return  # tests without a record have failed

    def candidate(*args, **kwargs):
        try:
            payload = pickle.dumps((args, kwargs))
        except Exception as e:
            raise AssertionError(f"the test's arguments cannot be passed to the program: {e}") from None
        try:
            _send(to_w_w, payload)
        except OSError:
            raise AssertionError("the program's process is gone") from None
        r = reply()
        if not isinstance(r, dict):
            raise AssertionError("the program's process died or answered garbage")
        if "v" in r:
            try:
                return _decode(r["v"])
            except (ValueError, TypeError, OverflowError) as e:
                raise AssertionError(f"malformed return value: {e}") from None
        name, msg = (r.get("exc") or ["AssertionError", "no value"])[:2]
        raise ProgramRaised(f"{name}: {msg}")

    # The prompt's helpers, then the candidate, then the test module's own setup. With a
    # reference solution the entry point's name means the reference (HumanEval/33 compares
    # candidate(x) with sort_third(x)); without one, tests call the program by that name (MBPP).
    test_ns = {"__builtins__": dict(pristine), "__name__": "__test__"}
    prompt = plan["prompt"] + "\n" + plan["reference"] if plan.get("reference") else plan["prompt"]
    for code, what in ((prompt, "the problem's prompt code failed"), (None, ""), (plan["setup"], "test setup failed")):
        if code is None:
            test_ns["candidate"] = candidate
            if not plan.get("reference"):
                test_ns[plan["entry_point"]] = candidate
            continue
        try:
            exec(compile(code, "test.py", "exec"), test_ns)
        except BaseException as e:
            fail_all(f"{what}: {type(e).__name__}: {e}")
            return
    for i, step in enumerate(plan["steps"]):
        try:
            exec(compile(step["code"], f"test_{i}.py", "exec"), test_ns)
        except BaseException as e:
            if step["test"]:
                record(i, False, f"{type(e).__name__}: {e}")
                continue
            fail_all(f"check setup statement {i} failed: {type(e).__name__}: {e}", after=i)
            return
        if step["test"]:
            record(i, True)


if __name__ == "__main__":
    main()
