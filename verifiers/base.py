"""The Verdict type, the Verifier protocol, and discovery by entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping, Protocol, runtime_checkable

STATUSES = ("correct", "wrong", "no_answer", "format_error", "timeout", "error")
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
    name: str

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None: ...


class GoldAnswerError(ValueError):
    """A problem's gold answer cannot be parsed: a data error, not a model error."""


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
