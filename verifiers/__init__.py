"""Verifiers: reward plugins that score one completion against one problem.

The contract (outside code relies on it)::

    class Verifier(Protocol):
        name: str
        def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None: ...

A verifier returns ``None`` when it does not apply to a problem, never raises
on model output, and reports an unparseable gold answer by raising
:class:`GoldAnswerError` from ``check_gold`` (a data error: the problem is
skipped and reported once, with its row).

Built-ins are registered under the entry-point group ``reasonrl.verifiers``
(``integer``, ``format``, ``math``, ``code``, ``code_format``); :func:`load`
finds any verifier by that name, including third-party ones, and
:func:`available_verifiers` lists them (built in or plugin).
:mod:`reasonrl.verifiers.scoring` turns verdicts into rewards and loss masks,
and stops a run whose verifier fails on most samples (``check_failures``).
"""

from reasonrl.verifiers.base import (
    STATUSES,
    GoldAnswerError,
    Verdict,
    Verifier,
    available_verifiers,
    entry_points,
    load,
    safe_call,
)

__all__ = ["STATUSES", "GoldAnswerError", "Verdict", "Verifier", "available_verifiers", "entry_points", "load", "safe_call"]
