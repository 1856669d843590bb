"""The in-sandbox test runner for HumanEval-style problems (function + ``check``).

Runs as the sandboxed program; standard library only. Its stdin is one line
holding the run's random token, then a JSON plan from the code verifier:
``program`` (the candidate's module source), ``prompt`` (the problem's own
source, trusted), ``entry_point``, ``setup`` (the test module without its
``check``) and ``steps`` (the statements of ``check``'s body, each marked
whether it is a test). For every test it writes one record

    <token> <index> pass|fail <json reason>

on a private duplicate of stdout. The trusted parent counts only records that
carry the token, and a test without a record has failed: a program that exits
early, crashes the interpreter or floods the output passes nothing.

Hardening against the cheap hacks (the verifier's module docstring lists what
is and is not covered): ``SystemExit`` from the program is caught like any
other exception; return values are rebuilt from exact built-in types, so an
object whose ``__eq__`` always says True (or an ``int``/``str`` subclass doing
the same) never reaches a comparison; the tests run in their own namespace
with the prompt's helpers and a copy of the built-ins taken before the
program ran, so the program cannot redefine a helper or a built-in the tests
use (names only the program defines, such as a class the tests construct, are
added to that namespace). The standard library's ``Counter``, ``OrderedDict``
and ``defaultdict`` results compare as plain dicts.
"""

import builtins
import collections
import json
import os
import sys

_EXACT_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_MAX_DEPTH = 100
_STDLIB_DICTS = (collections.Counter, collections.OrderedDict, collections.defaultdict)


class _Unclean(Exception):
    pass


def _clean(v, depth=0):
    t = type(v)
    if t in _EXACT_SCALARS:
        return v
    if depth > _MAX_DEPTH:
        raise _Unclean("nested too deeply")
    if t is list:
        return [_clean(x, depth + 1) for x in list.__iter__(v)]
    if t is tuple:
        return tuple(_clean(x, depth + 1) for x in tuple.__iter__(v))
    if t is set:
        return {_clean(x, depth + 1) for x in set.__iter__(v)}
    if t is frozenset:
        return frozenset(_clean(x, depth + 1) for x in frozenset.__iter__(v))
    if t is dict or t in _STDLIB_DICTS:  # the standard library's dicts compare as plain dicts
        return {_clean(k, depth + 1): _clean(x, depth + 1) for k, x in dict.items(v)}
    raise _Unclean(f"returned a {t.__name__}; only built-in values are compared")


def main():
    token = sys.stdin.readline().strip()
    plan = json.loads(sys.stdin.read())
    out = os.dup(1)
    write, dumps, pristine = os.write, json.dumps, dict(vars(builtins))

    def record(i, ok, why=""):
        try:
            write(out, f"\n{token} {i} {'pass' if ok else 'fail'} {dumps(str(why)[:200])}\n".encode())
        except OSError:
            pass

    tests = [i for i, step in enumerate(plan["steps"]) if step["test"]]

    def stage(code, filename, ns, what):
        """Run one stage; if it raises (SystemExit included: exiting early passes nothing), every test fails."""
        try:
            exec(compile(code, filename, "exec"), ns)
            return True
        except BaseException as e:
            for i in tests:
                record(i, False, f"{what}: {type(e).__name__}: {e}")
            return False

    test_ns = {"__builtins__": dict(pristine), "__name__": "__test__"}
    if not stage(plan["prompt"], "prompt.py", test_ns, "the problem's prompt code failed"):
        return
    user_ns = {"__builtins__": builtins, "__name__": "solution"}
    if not stage(plan["program"], "solution.py", user_ns, "program failed to load"):
        return
    fn = user_ns.get(plan["entry_point"])
    if not callable(fn):
        for i in tests:
            record(i, False, f"no function named {plan['entry_point']}")
        return

    def candidate(*args, **kwargs):
        try:
            return _clean(fn(*args, **kwargs))
        except _Unclean as e:
            raise AssertionError(str(e)) from None

    for name, value in list(user_ns.items()):  # the program's own classes and helpers that tests build on
        if name not in test_ns and name not in pristine and not name.startswith("__"):
            test_ns[name] = value
    test_ns["candidate"] = test_ns[plan["entry_point"]] = candidate
    if not stage(plan["setup"], "test.py", test_ns, "test setup failed"):
        return
    for i, step in enumerate(plan["steps"]):
        try:
            exec(compile(step["code"], f"test_{i}.py", "exec"), test_ns)
        except BaseException as e:
            if step["test"]:
                record(i, False, f"{type(e).__name__}: {e}")
                continue
            for j in tests:  # a failed setup statement sinks every later test
                if j > i:
                    record(j, False, f"check setup statement {i} failed: {type(e).__name__}: {e}")
            return
        if step["test"]:
            record(i, True)


if __name__ == "__main__":
    main()
