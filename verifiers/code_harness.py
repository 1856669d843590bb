"""The in-sandbox test runner for HumanEval-style problems (function + ``check``).

Runs as the sandboxed program; standard library only. Its stdin is one line
holding the run's random token, then a JSON plan from the code verifier:
``program`` (the candidate's module source), ``prompt`` (the problem's own
source, trusted), ``entry_point``, ``setup`` (the test module without its
``check``), ``steps`` (the statements of ``check``'s body, each marked
whether it is a test), ``names`` (names the tests read that only the program
defines) and ``mode``. It writes, on stdout, lines starting with the token:

    <token> <index> pass|fail <json reason>   one per test
    <token> void <json reason>                a statement that is not a test failed:
                                              every test fails, recorded or not
    <token> compile_error <json reason>       the program does not compile
    <token> harness_error <json reason>       this runner could not do its job

The trusted parent counts only lines that carry the token, and a test without
a record has failed.

Two processes (``mode="calls"``, the default). Before it reads the token, this
process makes itself undumpable (so no other process of the sandbox may read
its memory through /proc) and forks a *worker*. The worker receives the
program, the entry point, the mode and the names the tests need from it
(nothing of the tests: no setup, no expected values); it compiles and runs the
program (so the program's compile time is charged to its own time limit) and
then answers requests over a pipe; it never holds the token. The tests, their
namespace (the prompt's helpers, pristine built-ins) and the records live only
in this process, which executes nothing the program wrote. Requests:

- ``candidate(*args)``: the return value comes back as tagged JSON of exact
  built-in types; anything else fails the test.
- names only the program defines (an MBPP setup building the program's
  ``Node`` or ``Pair``): each is a *handle* here, a ``_Remote`` standing for an
  object that lives in the worker. Calling a handle, reading an attribute of
  one and setting one are forwarded; what comes back is a built-in value (a
  copy) or another handle. A handle passed to ``candidate`` arrives as the
  worker's own object. Nothing else is forwarded: a handle compares and
  hashes by identity, is true, and has no operators, length, items or
  iteration (a test that needs those fails, for honest programs too), and
  dunder attributes are never asked for.

So every assertion is evaluated here, on values this process decoded itself.
Patching built-ins or modules, walking frames, the garbage collector or its
own memory for the token or the expected values, writing forged outcomes on
its pipe or any descriptor it holds, exiting early or returning an object
whose ``__eq__`` always says True all stay inside the worker and change
nothing here; whatever the worker writes on its pipe is at most an answer to
a request this process made, which the program could have returned anyway. A
worker that dies fails every test still to come. An exception the program
raises reaches the tests as one neutral type, ``ProgramRaised`` (its message
names the original), so that no exception type can steer the tests' own
control flow (a ``StopIteration`` ending a ``map`` early, say).

``mode="beside"`` (only where the verifier is built with
``tests_beside_program=True``, an explicit opt-in for tests that need more of
the program's objects than handles give): the worker runs the tests next to
the program and reports each outcome, which this process stamps with the
token. That protects nothing: a program that walks to the worker's frame or
writes on its descriptors reports every test passed.
"""

import builtins
import collections
import io
import json
import os
import pickle
import struct
import sys

_MAX_MSG = 64 << 20
_MAX_DEPTH = 100
_STDLIB_DICTS = (collections.Counter, collections.OrderedDict, collections.defaultdict)
# What the worker receives per mode: only "beside" needs the tests, for it runs them next to the program.
_WORKER_KEYS = {
    "calls": ("program", "entry_point", "mode", "names"),
    "beside": ("program", "entry_point", "mode", "setup", "steps"),
}
_COMPILE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)


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


def _encode(v, handle=None, depth=0):
    """A value as tagged JSON. Anything not of an exact built-in type is refused, or, given
    ``handle`` (a function registering the object, returning its number), sent as a handle."""
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
            return {tag: [_encode(x, handle, depth + 1) for x in kind.__iter__(v)]}
    if t is dict or t in _STDLIB_DICTS:  # the standard library's dicts compare as plain dicts
        return {"d": [[_encode(k, handle, depth + 1), _encode(x, handle, depth + 1)] for k, x in dict.items(v)]}
    if handle is not None:
        return {"h": handle(v)}
    raise _Unclean(f"returned a {t.__name__}; only built-in values are compared")


_BUILD = {"l": list, "t": tuple, "s": set, "fs": frozenset}


def _decode(v, handles=False, depth=0):
    """The inverse of _encode, accepting nothing else (the worker is not trusted); handles only
    where ``handles`` allows them (never in what ``candidate`` returns)."""
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
        return _BUILD[tag](_decode(e, handles, depth + 1) for e in x)
    if tag == "d" and type(x) is list:
        return {_decode(k, handles, depth + 1): _decode(e, handles, depth + 1) for k, e in x}
    if tag == "h" and handles and type(x) is int:
        return _Remote(x)
    raise ValueError(f"unknown tag {tag!r}")


# -- the worker: the only process that runs the program -------------------------------------
class _Objects(pickle.Unpickler):
    """Requests from the runner, with its handles turned back into this worker's objects."""

    def __init__(self, data, objects):
        super().__init__(io.BytesIO(data))
        self.objects = objects

    def persistent_load(self, pid):
        return self.objects[pid]


def _worker(rfd, wfd):
    job = pickle.loads(_recv(rfd))  # only _WORKER_KEYS[mode]
    ns = {"__builtins__": builtins, "__name__": "solution"}
    try:
        code = compile(job["program"], "solution.py", "exec")
    except _COMPILE_ERRORS as e:
        _send(wfd, json.dumps({"compile_error": f"{type(e).__name__}: {e}"[:300]}).encode())
        return
    try:
        exec(code, ns)
        fn = ns.get(job["entry_point"])
        if not callable(fn):
            raise NameError(f"no function named {job['entry_point']}")
    except BaseException as e:  # SystemExit included: exiting early passes nothing
        _send(wfd, json.dumps({"load_error": f"{type(e).__name__}: {e}"[:300]}).encode())
        return
    if job["mode"] == "beside":
        _send(wfd, b'{"ok": true}')
        _run_tests_here(job, ns, fn, wfd)
        return
    objects = []

    def handle(obj):
        objects.append(obj)
        return len(objects) - 1

    names = {n: _encode(ns[n], handle) for n in job["names"] if n in ns}
    _send(wfd, json.dumps({"ok": True, "names": names}).encode())
    while True:
        req = _recv(rfd)
        if req is None:
            return
        op, target, *rest = _Objects(req, objects).load()
        try:
            if op == "call":
                value = (fn if target is None else objects[target])(*rest[0], **rest[1])
            elif op == "get":
                value = getattr(objects[target], rest[0])
            else:
                setattr(objects[target], rest[0], rest[1])
                value = None
            # what the candidate returns must be a built-in value; other objects' answers may be handles
            out = {"v": _encode(value, None if target is None else handle)}
        except _Unclean as e:
            out = {"exc": ["AssertionError", str(e)]}
        except BaseException as e:
            out = {"exc": [type(e).__name__, str(e)[:300]]}
        _send(wfd, json.dumps(out).encode())


def _run_tests_here(job, ns, fn, wfd):
    """mode="beside": the tests run next to the program, which can fake their outcomes (opt-in only)."""

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
        if not ok and (i == -1 or not job["steps"][i]["test"]):
            return


# -- the trusted side ---------------------------------------------------------------------
_ask = None  # set by main(): sends one request to the worker, returns its decoded answer


class _Remote:
    """A handle on an object of the program's, living in the worker (see the module docstring)."""

    __slots__ = ("__h",)

    def __init__(self, h):
        object.__setattr__(self, "_Remote__h", h)

    def __call__(self, *args, **kwargs):
        return _ask(("call", self.__h, args, kwargs))

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):  # copy, pickle, ... probe these: never forwarded
            raise AttributeError(name)
        return _ask(("get", self.__h, name))

    def __setattr__(self, name, value):
        _ask(("set", self.__h, name, value))

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete {name} of a program object")

    def __repr__(self):
        return f"<program object #{self.__h}>"


class _Requests(pickle.Pickler):
    """Pickles a request, each handle in it as the number of the worker's object it stands for."""

    def persistent_id(self, obj):
        return obj._Remote__h if type(obj) is _Remote else None


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
    global _ask
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

    def write(line):
        try:
            os.write(out, f"\n{token} {line}\n".encode())
        except OSError:
            pass

    def record(i, ok, why=""):
        write(f"{i} {'pass' if ok else 'fail'} {json.dumps(str(why)[:200])}")

    tests = [i for i, step in enumerate(plan["steps"]) if step["test"]]

    def fail_all(why, after=-1):
        for i in tests:
            if i > after:
                record(i, False, why)

    def void(why, after=-1):  # a statement that is not a test failed: no test passes, earlier ones neither
        write(f"void {json.dumps(str(why)[:200])}")
        fail_all(why, after)

    def reply():
        try:
            data = _recv(from_w_r)
            return None if data is None else json.loads(data)
        except Exception:  # malformed, oversized or absurdly nested: the worker is not trusted
            return None

    _send(to_w_w, pickle.dumps({k: plan[k] for k in _WORKER_KEYS[plan["mode"]]}))
    hello = reply()
    if not isinstance(hello, dict) or "ok" not in hello:
        hello = hello if isinstance(hello, dict) else {}
        if isinstance(hello.get("compile_error"), str):
            write(f"compile_error {json.dumps(hello['compile_error'][:200])}")
        loaded = hello.get("load_error") or hello.get("compile_error")
        fail_all(f"program failed to load: {loaded}" if loaded else "the program's process died while loading")
        return
    if plan["mode"] == "beside":
        while True:
            r = reply()
            if not isinstance(r, dict) or type(r.get("i")) is not int:
                break
            if r["i"] in tests:
                record(r["i"], r.get("ok") is True, r.get("why", ""))
            elif not r.get("ok"):
                void(f"check statement {r['i']} failed: {r.get('why')}")
                break
        return  # tests without a record have failed

    def ask(request):
        """One request to the worker; its answer decoded here. ``candidate``'s (target None) are values only."""
        try:
            buf = io.BytesIO()
            _Requests(buf).dump(request)
        except Exception as e:
            raise AssertionError(f"the test's arguments cannot be passed to the program: {e}") from None
        try:
            _send(to_w_w, buf.getvalue())
        except OSError:
            raise AssertionError("the program's process is gone") from None
        r = reply()
        if not isinstance(r, dict):
            raise AssertionError("the program's process died or answered garbage")
        if "v" in r:
            try:
                return _decode(r["v"], handles=request[1] is not None)
            except (ValueError, TypeError, OverflowError) as e:
                raise AssertionError(f"malformed return value: {e}") from None
        name, msg = (r.get("exc") or ["AssertionError", "no value"])[:2]
        raise ProgramRaised(f"{name}: {msg}")

    _ask = ask

    def candidate(*args, **kwargs):
        return ask(("call", None, args, kwargs))

    # The prompt's helpers, then the candidate and the program's names the tests need, then the
    # test module's own setup. With a reference solution the entry point's name means the reference
    # (HumanEval/33 compares candidate(x) with sort_third(x)); without one, tests call the program
    # by that name (MBPP).
    test_ns = {"__builtins__": dict(pristine), "__name__": "__test__"}
    prompt = plan["prompt"] + "\n" + plan["reference"] if plan.get("reference") else plan["prompt"]
    for code, what in ((prompt, "the problem's prompt code failed"), (None, ""), (plan["setup"], "test setup failed")):
        if code is None:
            names = hello.get("names") if isinstance(hello.get("names"), dict) else {}
            for name in plan["names"]:
                if name in names:
                    try:
                        test_ns[name] = _decode(names[name], handles=True)
                    except (ValueError, TypeError, OverflowError):
                        pass  # the tests' use of it then fails
            test_ns["candidate"] = candidate
            if not plan.get("reference"):
                test_ns[plan["entry_point"]] = candidate
            continue
        try:
            exec(compile(code, "test.py", "exec"), test_ns)
        except BaseException as e:
            void(f"{what}: {type(e).__name__}: {e}")
            return
    for i, step in enumerate(plan["steps"]):
        try:
            exec(compile(step["code"], f"test_{i}.py", "exec"), test_ns)
        except BaseException as e:
            if step["test"]:
                record(i, False, f"{type(e).__name__}: {e}")
                continue
            void(f"check statement {i} failed: {type(e).__name__}: {e}", after=i)
            return
        if step["test"]:
            record(i, True)


if __name__ == "__main__":
    main()
