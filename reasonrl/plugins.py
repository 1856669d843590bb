"""Advantage estimators and policy losses from a user's own package, by name from the command line.

:mod:`reasonrl.grpo` chooses estimators and losses by name from its registries
(``ADVANTAGE_ESTIMATORS``, ``POLICY_LOSSES``), which its decorators fill when a
module is imported. A console script imports no user code by itself, so there
are two ways in, and both fill the registries before the config is checked:

- Entry points. An installed package declares, in its ``pyproject.toml``::

      [project.entry-points."reasonrl.advantage_estimators"]
      my_adv = "mypkg.algos:my_advantages"
      [project.entry-points."reasonrl.policy_losses"]
      my_loss = "mypkg.algos:my_loss"

  Each function is registered under its entry point's name (no decorator
  needed), and ``algorithm.advantage=my_adv algorithm.policy_loss=my_loss``
  finds it. :func:`load_entry_points` runs in :func:`reasonrl.config.register`.
- ``plugins: [mypkg.algos]`` in a training config (or ``plugins=[mypkg.algos]``
  on the command line): those modules are imported before the run starts, so
  their ``@advantage_estimator("name")`` / ``@policy_loss("name")`` decorators
  register. The console scripts' checks (:mod:`reasonrl.cli`) call
  :func:`prepare`, which also checks ``algorithm.advantage`` and
  ``algorithm.policy_loss`` against the registries before any model loads.

A plugin's own knobs go under ``algorithm.options``, a free-form mapping
(``+algorithm.options.beta=0.1``) that the strict schema lets through;
estimators and losses read it from the algorithm config they are given
(``alg.options.get("beta", 0.1)``).

Failures: an entry point that does not load (its module raises on import, the
object is missing or not callable) is logged once as a warning and remembered;
a run that names it stops with the entry point and the error, other runs go on
(an unrelated broken package must not stop every run). A module in ``plugins``
that fails to import stops the run, naming the module. An entry point whose
name is already registered (a built-in, or a name a module registered first)
is skipped with a warning: the registered one is kept.

Code that calls ``reasonrl.train.main`` itself, not through a console script,
calls :func:`prepare` (or imports its modules) first.

It does not define estimators or losses (:mod:`reasonrl.grpo`) and does not
find verifier plugins (:mod:`reasonrl.verifiers.base`, group ``reasonrl.verifiers``).
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Callable, Sequence

log = logging.getLogger(__name__)

ADVANTAGE_GROUP = "reasonrl.advantage_estimators"
LOSS_GROUP = "reasonrl.policy_losses"
# group -> (what one of its entries is called, the config key that names one)
GROUPS = {ADVANTAGE_GROUP: ("advantage estimator", "algorithm.advantage"), LOSS_GROUP: ("policy loss", "algorithm.policy_loss")}

_loaded: dict[tuple[str, str], str] = {}  # (group, name) -> the entry point's value, once registered
_failed: dict[tuple[str, str], str] = {}  # (group, name) -> why it did not load


class PluginError(ValueError):
    """A plugin estimator or loss that cannot be used; the message names the entry point or module."""


def _registry(group: str) -> tuple[dict, Callable]:
    from reasonrl import grpo

    if group == ADVANTAGE_GROUP:
        return grpo.ADVANTAGE_ESTIMATORS, grpo.advantage_estimator
    return grpo.POLICY_LOSSES, grpo.policy_loss


def _describe(group: str, ep: metadata.EntryPoint) -> str:
    return f"{ep.name} = {ep.value} (entry-point group {group!r})"


def load_entry_points() -> None:
    """Register every installed estimator and loss entry point under its name (each entry point once per process)."""
    found = {group: list(metadata.entry_points(group=group)) for group in GROUPS}
    if not any(found.values()):  # nothing installed: not even the registries (and torch) need importing
        return
    for group, eps in found.items():
        registry, register = _registry(group)
        what = GROUPS[group][0]
        for ep in eps:
            key = (group, ep.name)
            if key in _loaded or key in _failed:
                continue
            if ep.name in registry:
                log.warning(
                    "plugin %s: a %s named %r is already registered; keeping that one", _describe(group, ep), what, ep.name
                )
                _loaded[key] = ep.value
                continue
            try:
                fn = ep.load()
                if not callable(fn):
                    raise TypeError(f"{ep.value} is a {type(fn).__name__}, not a function")
            except Exception as e:  # a broken plugin stops only the runs that name it (check_algorithm)
                _failed[key] = f"{type(e).__name__}: {e}"
                log.warning("plugin %s cannot be loaded: %s", _describe(group, ep), _failed[key])
                continue
            register(ep.name)(fn)
            _loaded[key] = ep.value


def import_modules(modules: Sequence[str]) -> None:
    """Import each module named in ``plugins``, so that its decorators register; the first that fails raises."""
    for name in modules:
        try:
            importlib.import_module(str(name))
        except Exception as e:
            raise PluginError(f"plugins: module {name!r} cannot be imported: {type(e).__name__}: {e}") from e


def _unknown(group: str, name: str, known: Sequence[str]) -> str:
    what, key = GROUPS[group]
    if (group, name) in _failed:
        ep = next((e for e in metadata.entry_points(group=group) if e.name == name), None)
        where = _describe(group, ep) if ep is not None else f"{name} (entry-point group {group!r})"
        return f"{what} {name!r} ({key}) comes from the plugin {where}, which cannot be loaded: {_failed[(group, name)]}"
    return f"unknown {what} {name!r} ({key}); known: {sorted(known)}"


def check_algorithm(advantage: str, policy_loss: str) -> None:
    """Raise :class:`PluginError` when ``advantage`` or ``policy_loss`` names nothing registered (built-ins and
    plugins), listing what is, or naming the plugin that failed to load."""
    for group, name in ((ADVANTAGE_GROUP, advantage), (LOSS_GROUP, policy_loss)):
        registry, _ = _registry(group)
        if name not in registry:
            raise PluginError(_unknown(group, name, list(registry)))


def prepare(modules: Sequence[str] = (), advantage: str | None = None, policy_loss: str | None = None) -> None:
    """What a console script does before checking a config: register the entry points, import ``modules``
    (the config's ``plugins``), then check the estimator and loss it names (when given)."""
    load_entry_points()
    import_modules(modules)
    if advantage is not None and policy_loss is not None:
        check_algorithm(advantage, policy_loss)
