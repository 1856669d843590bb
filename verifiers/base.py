"""The Verdict type, the Verifier protocol with its optional hooks, and discovery by entry point.

Everything a verifier may provide is described on :class:`Verifier`, and the
code that uses an optional hook calls it through one function here
(:func:`check_gold`, :func:`declares_deadlines`, :func:`deadline_s`,
:func:`own_timeout_s`, :func:`extract_answer`, :func:`check_picklable`), so
the scoring (:mod:`reasonrl.verifiers.scoring`), the scoring pool
(:mod:`reasonrl.verifiers.pool`) and ``reasonrl-eval`` read a verifier the
same way.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping, Protocol, runtime_checkable

STATUSES = ("correct", "wrong", "no_answer", "format_error", "timeout", "error")
# verdicts that say nothing about the answer (the check did not finish): out of the loss and the group baseline
MASK_STATUSES = ("timeout", "error")
ENTRY_POINT_GROUP = "reasonrl.verifiers"


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]; weights are applied by the caller
    status: str  # one of STATUSES
    info: dict[str, Any] = field(default_factory=dict)  # small; logged as reward/<name>/<key>

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Verdict status {self.status!r} is not one of {STATUSES}")
        if not (0.0 <= float(self.score) <= 1.0):
            raise ValueError(f"Verdict score {self.score!r} is outside [0, 1]")


@runtime_checkable
class Verifier(Protocol):
    """A reward: scores one completion against one problem.

    Required:

    ``name: str``
        The verifier's name: metric keys ``reward/<name>/...``, ``verifier=[<name>]``.
    ``__call__(problem, completion) -> Verdict | None``
        ``problem`` holds the row's fields (its gold answer among them), ``completion`` the model's text. In a
        multi-turn rollout (``env.name=python``) that is the model's own words, its turns joined with the tools'
        output left out (``Rollout.text``), so an answer a tool printed counts only once the model writes it;
        every built-in verifier reads this.
        ``None``: the verifier does not apply to this problem (it adds nothing to the reward). It never
        raises on model output; anything it raises becomes an ``error`` verdict for that sample (masked out
        of the loss, never scored as wrong), and a :class:`GoldAnswerError` an ``error`` verdict with
        ``info["gold_error"]``. Called in a scoring-pool worker (``verify.workers`` > 0, the default) or in
        the trainer's process (``verify.workers=0``).

    Optional hooks, looked up on the object; each has a default when absent:

    ``check_gold(problem) -> None``
        Raises :class:`GoldAnswerError` when the problem's gold answer cannot be parsed (a data error).
        Called once per problem when a task's problems are read (training problems from data and the
        held-out set), in the trainer's process, before any of them is sampled; a problem that fails is
        skipped and reported once with its row. Absent: every problem is kept, and a gold answer that
        ``__call__`` cannot read costs ``error`` verdicts instead.
    ``deadline_s(problem) -> float``
        The seconds a check of this problem may take while everything it runs stays within its own limits
        (the code verifier: cases x the sandbox's wall limit). Called by the scoring pool, in the trainer's
        process, once per check as it is queued; the check's deadline is then the larger of the pool's
        (``verify.timeout_s``) and this plus one second, so a slow but legitimate check is never killed as a
        ``timeout``. If it raises, the pool's deadline applies. Absent: every check gets the pool's deadline.
    ``timeout_s: float``
        A limit the verifier itself puts on what it runs (a program's time). Read when a scoring pool
        starts: without ``deadline_s`` a ``timeout_s`` at or above the pool's deadline is refused (the pool
        would kill every check the verifier means to allow). Absent: nothing to compare.
    ``extract(completion) -> (answer | None, candidates)``
        The final answer the verifier reads from a completion, and every candidate it found. Called by
        ``reasonrl-eval`` on every sample, in its own process, to vote for maj@k and to write
        ``extracted`` in samples.jsonl. Absent: no answer is extracted (``None``).

    Picklable: the scoring pool starts its workers with ``spawn`` and pickles each verifier into every
    worker once, when the pool starts (and again for a replacement worker); a verifier's caches then live
    in the workers. Hold plain data (names, numbers, paths, compiled patterns) and build what cannot be
    pickled (locks, open files, clients, lambdas) lazily in ``__call__``, or define ``__getstate__``. A
    verifier that cannot be pickled stops the pool's start with an error that names it
    (:func:`check_picklable`); it still runs with ``verify.workers=0`` (in the trainer's process, without
    timeouts).

    Constructor keyword arguments with defaults are its options (``verifier.<name>.<option>=...``).
    """

    name: str

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None: ...


class GoldAnswerError(ValueError):
    """A problem's gold answer cannot be parsed: a data error, not a model error."""


# -- the optional hooks, each read in one place --------------------------------------------------------
def check_gold(verifier: Verifier, problem: Mapping[str, Any]) -> None:
    """The verifier's ``check_gold(problem)``, which raises :class:`GoldAnswerError`; nothing when it has none."""
    hook = getattr(verifier, "check_gold", None)
    if hook is not None:
        hook(problem)


def declares_deadlines(verifier: Verifier) -> bool:
    """Whether the verifier says how long each problem's check may take (``deadline_s``)."""
    return callable(getattr(verifier, "deadline_s", None))


def deadline_s(verifier: Verifier, problem: Mapping[str, Any]) -> float | None:
    """The verifier's ``deadline_s(problem)``, or None when it declares none or cannot say for this problem."""
    if not declares_deadlines(verifier):
        return None
    try:
        return float(verifier.deadline_s(problem))
    except Exception:  # a malformed problem: its check will say so; the caller's own deadline applies
        return None


def own_timeout_s(verifier: Verifier) -> float | None:
    """The limit the verifier puts on what it runs (``timeout_s``), or None when it has no number there."""
    own = getattr(verifier, "timeout_s", None)
    return float(own) if isinstance(own, (int, float)) else None


def extract_answer(verifier: Verifier, completion: str) -> str | None:
    """The answer the verifier reads from ``completion`` (``extract(completion)[0]``); None when it extracts none."""
    hook = getattr(verifier, "extract", None)
    return None if hook is None else hook(completion)[0]


def check_picklable(name: str, verifier: Verifier) -> None:
    """Raise TypeError naming the verifier when it cannot be pickled (into a scoring pool's workers)."""
    try:
        pickle.dumps(verifier)
    except Exception as e:
        raise TypeError(
            f"verifier {name!r} ({type(verifier).__module__}.{type(verifier).__qualname__}) cannot be pickled into the "
            f"scoring pool's worker processes: {type(e).__name__}: {e}. Keep what cannot be pickled (locks, open "
            "files, clients, lambdas) out of its attributes or build it lazily, or score in the trainer's process "
            "with verify.workers=0"
        ) from e


def safe_call(verifier: Verifier, problem: Mapping[str, Any], completion: str) -> Verdict | None:
    """Call a verifier; anything it raises becomes an ``error`` verdict (never a wrong answer)."""
    try:
        v = verifier(problem, completion)
    except GoldAnswerError:
        raise
    except Exception as e:  # a verifier bug must cost one sample, not the run
        return Verdict(0.0, "error", {"exception": f"{type(e).__name__}: {e}"[:300]})
    if v is not None and not isinstance(v, Verdict):
        return Verdict(0.0, "error", {"exception": f"verifier returned {type(v).__name__}, not Verdict"})
    return v


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed verifiers by name (built-ins and third-party packages)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_verifiers() -> dict[str, str]:
    """{name: "built in" or "plugin <module:object>"} for every verifier installed under the entry-point group."""
    return {name: "built in" if ep.value.startswith("reasonrl.") else f"plugin {ep.value}" for name, ep in entry_points().items()}


def describe_available() -> str:
    """The installed verifiers in one line: built-in names, then plugins."""
    found = available_verifiers()
    builtin = sorted(k for k, v in found.items() if v == "built in")
    plugins = sorted(k for k, v in found.items() if v != "built in")
    return f"built in: {', '.join(builtin) or 'none'}; plugins: {', '.join(plugins) or 'none installed'}"


def load(name: str, **kwargs: Any) -> Verifier:
    """Construct the verifier registered under ``name``."""
    import difflib

    eps = entry_points()
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"no verifier named {name!r}{hint} in entry-point group {ENTRY_POINT_GROUP!r}; {describe_available()}")
    return eps[name].load()(**kwargs)
