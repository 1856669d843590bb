"""The one place that turns config nodes into objects.

``instantiate`` builds a node's ``_target_`` only when it lies under an
allowed module prefix (``reasonrl.`` and the modules of installed
``reasonrl.verifiers`` entry points), and checks the node's keys against the
constructor's signature first, so a misspelled option names itself instead of
failing inside the constructor.

It does not import anything the config names outside the allowlist.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

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


def instantiate(node: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """Build ``node['_target_'](**node, **extra)`` after the allowlist and key checks."""
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
            known = sorted(k for k in params if k not in extra and k != "self")
            raise ValueError(f"{where}: unknown key(s) {unknown} for {target}; it accepts {known}")
    return fn(**kwargs, **extra)


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


def build_generator(node: Mapping[str, Any], model, tokenizer, model_path: str | None = None, compute_dtype=None) -> Any:
    """The generator a ``generator`` node names, given the policy (and the dtype the trainer computes in)."""
    extra = {"model": model, "tokenizer": tokenizer, "model_path": None if model_path is None else str(model_path)}
    if compute_dtype is not None:
        extra["compute_dtype"] = str(compute_dtype).replace("torch.", "")
    return instantiate(node, "generator", **extra)
