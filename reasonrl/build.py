"""The one place that turns config nodes into objects.

``instantiate`` builds a node's ``_target_`` only when it lies under an
allowed module prefix (``reasonrl.`` and the modules of installed
``reasonrl.verifiers`` entry points), and checks the node's keys against the
constructor's signature first, so a misspelled option names itself (with the
closest option it may have meant) instead of failing inside the constructor.
:func:`check_node` runs the same checks without building anything, so entry
points can refuse a bad ``generator`` or ``verifier`` node before a model loads.

It does not import anything the config names outside the allowlist.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Mapping, Sequence

ALLOWED_PREFIXES = ("reasonrl.",)


def _allowed_prefixes() -> tuple[str, ...]:
    from reasonrl.verifiers.base import entry_points

    extra = tuple(ep.value.split(":")[0] + "." for ep in entry_points().values())
    return ALLOWED_PREFIXES + extra


def _resolve(target: str):
    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import _target_ {target!r}: {e}") from e


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=2, cutoff=0.6)
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)" if close else ""


def _target(node: Mapping[str, Any], where: str, extra: Sequence[str] = (), also: Sequence[str] = ()):
    """(the callable, the node's keyword arguments) after the allowlist and key checks; ``extra``: arguments the
    caller supplies, ``also``: keys the caller takes out of the node itself (named in messages)."""
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = kwargs.pop("_target_", None)
    if not target:
        raise ValueError(f"{where}: no _target_ given")
    if not any(target.startswith(p) for p in _allowed_prefixes()):
        raise ValueError(f"{where}: _target_ {target!r} is outside the allowed modules {_allowed_prefixes()}")
    fn = _resolve(target)
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = sorted([k for k in params if k not in extra and k != "self"] + list(also))
            hints = "".join(f"; {where}.{k}{did_you_mean(k, known)}" for k in unknown if did_you_mean(k, known))
            raise ValueError(f"{where}: unknown key(s) {unknown} for {target}; it accepts {known}{hints}")
    return fn, kwargs


def instantiate(node: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """Build ``node['_target_'](**node, **extra)`` after the allowlist and key checks."""
    fn, kwargs = _target(node, where, list(extra))
    return fn(**kwargs, **extra)


def target_of(node: Mapping[str, Any], where: str):
    """The callable a node's ``_target_`` names (after the allowlist and key checks), not called."""
    return _target(node, where, ["model", "tokenizer", "model_path", "compute_dtype", "lora"])[0]


def check_node(node: Mapping[str, Any], where: str, extra: Sequence[str] = (), also: Sequence[str] = ()) -> None:
    """The checks :func:`instantiate` makes (allowlist, importable target, known keys), building nothing;
    ``extra`` names the arguments the caller supplies itself, ``also`` keys it takes out of the node."""
    _target(node, where, extra, also)


def check_verifier_nodes(nodes: Mapping[str, Any]) -> None:
    """Each ``verifier.<name>`` node names a verifier (a ``_target_``: a misspelled name added with ``+`` has
    none) whose constructor takes its keys."""
    from omegaconf import OmegaConf

    from reasonrl.verifiers.base import available_verifiers

    if not nodes:
        raise ValueError("no verifiers configured: set verifier=[...] (for example verifier=[integer])")
    for name, node in nodes.items():
        spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        if not isinstance(spec, dict) or "_target_" not in spec:
            known = available_verifiers()
            raise ValueError(
                f"verifier.{name} is not a configured verifier{did_you_mean(name, [k for k in {*nodes, *known} if k != name])}; "
                f"configured: {sorted(k for k in nodes if k != name)}; choose verifiers with verifier=[...] from "
                f"{', '.join(sorted(known))}"
            )
        spec.pop("weight", None)
        check_node(spec, f"verifier.{name}", also=["weight"])


def build_verifiers(nodes: Mapping[str, Any]) -> dict[str, tuple[Any, float]]:
    """{name: (verifier, weight)} from the ``verifier`` config node."""
    from omegaconf import OmegaConf

    if not nodes:
        raise ValueError("no verifiers configured: set verifier=[...] (for example verifier=[integer])")
    out = {}
    for name, node in nodes.items():
        spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        weight = float(spec.pop("weight", 1.0))
        out[name] = (instantiate(spec, f"verifier.{name}"), weight)
    return out


def build_generator(node: Mapping[str, Any], model, tokenizer, model_path: str | None = None, compute_dtype=None,
                    lora: Mapping[str, Any] | None = None) -> Any:  # fmt: skip
    """The generator a ``generator`` node names, given the policy (and the dtype the trainer computes in; for a
    LoRA policy that a generator does not sample in place, ``lora``: how it takes the adapter, see reasonrl.lora)."""
    extra = {"model": model, "tokenizer": tokenizer, "model_path": None if model_path is None else str(model_path)}
    if compute_dtype is not None:
        extra["compute_dtype"] = str(compute_dtype).replace("torch.", "")
    fn = target_of(node, "generator")
    if lora is not None and not getattr(fn, "samples_from_policy", False):
        if "lora" not in inspect.signature(fn).parameters:
            raise ValueError(f"generator {node.get('_target_')} cannot sample a LoRA policy (it takes no lora argument); "
                             "use generator=hf or generator=vllm")  # fmt: skip
        extra["lora"] = dict(lora)
    return instantiate(node, "generator", **extra)
