"""What every Hydra console script does before its ``main``: check, explain, fail early and once.

:func:`run` (called by :func:`reasonrl.config.run_entry_point`) runs an entry
point under Hydra with these steps first:

1. The command line's overrides are checked against the schema before Hydra
   composes anything: an unknown key fails with or without Hydra's ``+``
   prefix, with the closest keys it may have meant (``+`` adds keys only to
   free-form nodes: ``task.fields``, ``generator``, ``verifier.<name>``, ...);
   an unknown group option (``verifier=[integr]``) lists what is available,
   installed plugin verifiers included.
2. After composition: keys the schema lacks (added by ``+`` anywhere), the
   plugin estimators and losses (:func:`reasonrl.plugins.prepare`: the
   ``plugins`` modules imported, ``algorithm.advantage`` and
   ``algorithm.policy_loss`` found, or refused with the names there are), the
   entry point's cross-field checks, then :func:`reasonrl.preflight.preflight`:
   the ``generator`` and ``verifier`` nodes against their constructors, what
   the model can take, and the data, read and checked before any model loads,
   so a data error costs seconds.
3. Torch's thread count is chosen from the cores this process may use
   (:func:`reasonrl.runtime.configure_threads`).

A failed check prints one short message from the main process (rank 0 under
``torchrun``; every rank also records it in torchrun's error file, so the
failure summary shows it) and exits with status 2. ``HYDRA_FULL_ERROR=1``
raises instead, with the traceback.

:func:`help_node` builds the ``--help`` page of each entry point: its main
settings, one line each, with their current values.

It does not define the schemas (:mod:`reasonrl.config`) or build objects
(:mod:`reasonrl.build`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

PROGRAMS = {"train": "reasonrl-train", "sft": "reasonrl-sft", "eval": "reasonrl-eval"}
FREE = object()  # a schema node that takes any key (a dict, Any)


# -- the command line, before Hydra ------------------------------------------------------------------
def _field_types(schema) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(schema)}


def _unwrap(tp):
    """A dataclass type for nested schema nodes (Optional unwrapped), FREE for dicts and Any, else None (a value)."""
    if dataclasses.is_dataclass(tp):
        return tp
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(inner[0]) if len(inner) == 1 else FREE
    if tp is Any or origin in (dict, typing.Dict) or tp is dict:
        return FREE
    return None


def schema_paths(schema, prefix: str = "") -> list[str]:
    """Every dotted key of a schema (values and nested nodes)."""
    out = []
    for name, tp in _field_types(schema).items():
        out.append(prefix + name)
        sub = _unwrap(tp)
        if dataclasses.is_dataclass(sub):
            out += schema_paths(sub, f"{prefix}{name}.")
    return out


def suggest(key: str, schema) -> str:
    """`` (did you mean 'a' or 'b'?)`` from the schema's keys: by the whole path, and by its last part in any node
    (``temprature`` -> rollout.temperature, eval.temperature)."""
    paths = schema_paths(schema)
    close = difflib.get_close_matches(key, paths, n=2, cutoff=0.75)
    leaves = {p: p.rsplit(".", 1)[-1] for p in paths}
    near = set(difflib.get_close_matches(key.rsplit(".", 1)[-1], list(set(leaves.values())), n=2, cutoff=0.75))
    by_leaf = sorted((p for p, leaf in leaves.items() if leaf in near), key=lambda p: (p.count("."), p))
    if "." in key:  # a node was named: its own keys first
        by_leaf = [p for p in by_leaf if p.startswith(key.rsplit(".", 1)[0] + ".")] or by_leaf
    found = list(dict.fromkeys(close + by_leaf if "." in key else by_leaf + close))[:3]
    return " (did you mean " + " or ".join(repr(c) for c in found) + "?)" if found else ""


def key_problem(schema, key: str) -> str | None:
    """Why ``key`` (dotted) is not a key of ``schema``, or None when it is (or lies in a free-form node)."""
    node, parts = schema, key.split(".")
    for i, part in enumerate(parts):
        types = _field_types(node)
        here = ".".join(parts[: i + 1])
        if part not in types:
            return f"unknown key {here!r}{suggest(key if i == len(parts) - 1 else here, schema)}"
        sub = _unwrap(types[part])
        if sub is FREE:
            return None
        if sub is None:
            return None if i == len(parts) - 1 else f"{here!r} is a value, not a group of settings: {key!r} does not exist"
        node = sub
    return None


def group_options(group: str, conf_dir: Path) -> dict[str, str]:
    """{option: where it comes from} for a config group: YAML files, then the ConfigStore (plugin verifiers)."""
    from hydra.core.config_store import ConfigStore

    # a file whose name starts with "_" is a shared base that presets include, not an option of its own
    out = {p.stem: "yaml" for p in sorted((conf_dir / group).glob("*.yaml")) if not p.stem.startswith("_")}
    try:
        stored = ConfigStore.instance().list(group)
    except (OSError, ValueError, KeyError):
        stored = []
    for name in stored:
        out.setdefault(name.removesuffix(".yaml"), "plugin")
    return out


def _group_problem(group: str, values: list, conf_dir: Path) -> str | None:
    options = group_options(group, conf_dir)
    bad = [str(v) for v in values if v is not None and str(v) not in options]
    if not bad:
        return None
    v = bad[0]
    close = difflib.get_close_matches(v, list(options), n=2, cutoff=0.6)
    hint = " (did you mean " + " or ".join(repr(c) for c in close) + "?)" if close else ""
    if group == "verifier":
        from reasonrl.verifiers.base import available_verifiers

        found = available_verifiers()
        plugins = sorted(k for k, w in found.items() if w != "built in")
        builtin = sorted(k for k in options if k not in plugins)
        plugged = ", ".join(plugins) or "none installed"
        listing = f"built in: {', '.join(builtin)}; plugins (entry-point group reasonrl.verifiers): {plugged}"
    else:
        listing = ", ".join(options)
    return f"{group}: no option {v!r}{hint}; available: {listing}"


def override_problems(args: Sequence[str], schema, conf_dir: Path) -> list[str]:
    """What is wrong with the command line's overrides (empty: nothing found; Hydra reports syntax errors)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        known, unknown = get_args_parser().parse_known_args(list(args))
        texts = list(known.overrides or []) + [a for a in unknown if not a.startswith("-")]
        overrides = OverridesParser.create().parse_overrides(texts)
    except BaseException:  # argparse exits on bad flags; Hydra gives its own message for those
        return []
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    problems = []
    for o in overrides:
        key = o.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.is_delete() or o.package is not None:
            continue
        if key in groups:
            value = o.value()
            problem = _group_problem(key, value if isinstance(value, list) else [value], conf_dir)
        elif "/" in key:
            continue
        elif key.startswith("verifier.") and key.split(".")[1] not in group_options("verifier", conf_dir):
            name = key.split(".")[1]
            problem = _group_problem("verifier", [name], conf_dir).replace("verifier: no option", f"{key}: no verifier", 1)
        else:
            problem = key_problem(schema, key)
        if problem:
            problems.append(problem)
    return problems


# -- the composed config ---------------------------------------------------------------------------
def unknown_keys(cfg, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg`` that its structured schema lacks (a key added with Hydra's ``+`` opens the
    schema and would otherwise be ignored). Free-form nodes (dicts) are not checked here."""
    from omegaconf import DictConfig, OmegaConf

    out: list[str] = []
    if not isinstance(cfg, DictConfig):
        return out
    schema = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        if known is not None and key not in known:
            out.append(f"{prefix}{key}")
        elif not (OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key)):
            out += unknown_keys(cfg._get_node(key), f"{prefix}{key}.")
    return out


# -- failing once ----------------------------------------------------------------------------------
def fail(program: str, message: str, code: int = 2) -> typing.NoReturn:
    """Print ``message`` once (the main process), record it for torchrun's failure summary, exit with ``code``."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            Path(error_file).write_text(json.dumps({"message": f"{program}: {message}", "timestamp": int(time.time())}))
        except OSError:
            pass
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        time.sleep(2.0)  # the main process fails first, so torchrun stops the others before it could say why
    raise SystemExit(code)


def _prepare_plugins(cfg) -> None:
    """Fill the estimator and loss registries (entry points, then the config's ``plugins`` modules) and check the
    names ``algorithm.advantage`` / ``algorithm.policy_loss`` give, before anything else reads them."""
    from reasonrl.plugins import prepare

    modules = list(cfg.plugins) if "plugins" in cfg else []
    if "algorithm" in cfg:
        prepare(modules, cfg.algorithm.advantage, cfg.algorithm.policy_loss)
    else:
        prepare(modules)


def _checked(main: Callable, config_name: str, check: Callable, schema) -> Callable:
    import functools

    program = PROGRAMS.get(config_name, config_name)

    @functools.wraps(main)
    def wrapped(cfg):
        from reasonrl.data import DataError
        from reasonrl.preflight import Refused

        try:
            extra = unknown_keys(cfg)
            if extra:
                raise Refused(
                    "unknown key(s) "
                    + ", ".join(f"{k!r}{suggest(k, schema)}" for k in extra)
                    + f" (a leading + adds keys only to free-form nodes such as task.fields; `{program} --help` lists "
                    f"the main settings, `{program} --cfg job` every key)"
                )
            _prepare_plugins(cfg)
            check(cfg)
            from reasonrl.preflight import preflight

            preflight(cfg, config_name)
        except (Refused, DataError, ValueError, FileNotFoundError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(program, str(e))
        except KeyboardInterrupt:  # Ctrl-C while the data is being checked: nothing was written yet
            fail(program, "interrupted while checking the configuration and data; nothing was written", 130)
        from reasonrl.runtime import configure_threads

        configure_threads()
        return main(cfg)

    return wrapped


def with_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """``argv`` with ``extra`` overrides added where Hydra's parser takes them whatever the order of flags and
    overrides on the command line (``--cfg job max_steps=1`` and ``max_steps=1 --cfg job``): flags first, then
    every override. Appending after a trailing flag (``... --cfg job``) makes argparse refuse the extras."""
    from hydra._internal.utils import get_args_parser

    try:
        known, unknown = get_args_parser().parse_known_args(argv[1:])
    except BaseException:  # Hydra reports a bad command line itself
        return [*argv, *extra]
    overrides = list(known.overrides or []) + [a for a in unknown if not a.startswith("-")]
    rest = list(argv[1:])
    for o in overrides:
        rest.remove(o)
    return [argv[0], *rest, *overrides, *extra]


def run(main: Callable, config_name: str, *, schema, conf_dir: Path, check: Callable, argv: list[str] | None = None) -> None:
    """Run ``main`` under Hydra with the checks above; ``schema`` is the entry point's structured config class."""
    import hydra

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s %(message)s")
    program = PROGRAMS.get(config_name, config_name)
    args = sys.argv[1:] if argv is None else argv
    problems = override_problems(args, schema, conf_dir)
    if problems:
        fail(program, "; ".join(problems) + f" (`{program} --help` lists the main settings and groups)")
    extra = []
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only the main process writes a run directory
        sys.argv = [a for a in sys.argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        extra = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    sys.argv = with_overrides(sys.argv, extra)  # overrides added after a trailing flag would be refused
    hydra.main(version_base=None, config_path=str(conf_dir), config_name=config_name)(
        _checked(main, config_name, check, schema)
    )()


# -- --help ----------------------------------------------------------------------------------------
SUMMARIES = {
    "train": "GRPO training of a language model with rewards from verifiers (R1-Zero, or SFT cold start then RL).",
    "sft": "Supervised fine-tuning on demonstrations; its checkpoints/final feeds reasonrl-train model.path=...",
    "eval": "A model (or the references themselves, check=true) scored on reasoning and code benchmarks.",
}
EXAMPLES = {
    "train": [
        "reasonrl-train max_steps=50 seed=1 hydra.run.dir=runs/try1",
        "reasonrl-train experiment=sft_cold_start_arith",
        "reasonrl-train task.name=mine task.path=my.jsonl +task.fields.answer=result task.template=text",
    ],
    "sft": ["reasonrl-sft max_steps=300", "reasonrl-sft sft.data_file=demos.jsonl hydra.run.dir=runs/sft1"],
    "eval": [
        "reasonrl-eval check=true benchmarks=[gsm8k,math500]",
        "reasonrl-eval model=hf model.path=runs/x/checkpoints/final template=r1 benchmarks=[gsm8k] limit=100",
    ],
}
_TASK = [
    ("task", "group: arith (generated sums) | gsm8k; or any task.name with task.path"),
    ("task.name", "arith, or a label for a task read from data (names the eval/<name>/... metrics)"),
    ("task.path", "training data: a JSONL/JSON/Parquet/CSV file, a saved dataset folder or a hub name"),
    ("task.format", "a built-in layout of the rows: gsm8k, math500, mbpp, humaneval, ..."),
    ("task.fields", "problem key -> column, added with +task.fields.<key>=<column> (verifiers read `answer`)"),
    ("task.template", "prompt wrapper: r1 | r1_think (arith) | chat (instruct models) | r1 | text"),
    ("task.instruction", "the prompt text, filled from the problem's fields, e.g. 'Q:{question}=?'"),
    ("task.heldout_size", "held-out problems evaluated at eval steps (set aside from task.path without task.eval_path)"),
    ("task.eval_path", "held-out problems from their own file"),
    ("task.answer_verifier", "the verifier whose `correct` counts as accuracy"),
    ("task.skip_bad_rows", "true: a malformed row or JSON line is logged, counted and skipped; false: the run stops"),
]
_MODEL = [
    ("model", "group: tiny_arith (built and cached on first use) | smollm2_135m | hf (with model.path)"),
    ("model.path", "a Hugging Face folder to start from"),
    ("model.device", "auto (a GPU when there is one) | cpu | cuda:N"),
]
SETTINGS = {
    "train": [
        ("experiment", "group: a preset (r1_zero_arith, sft_cold_start_arith, smollm2_gsm8k, ...)"),
        ("max_steps", "optimizer steps in the run"),
        ("seed", "sampling and initialisation seed"),
        *_MODEL,
        ("model.lora.r", "LoRA adapters' rank (0: every parameter trains); model.lora.* sets alpha, targets, vLLM sync"),
        *_TASK,
        ("verifier", "group, a list: rewards, e.g. verifier=[integer,format]; verifier.<name>.<option>=..."),
        ("generator", "group: hf (transformers, default) | vllm"),
        ("algorithm", "group: grpo | grpo_deepseekmath | dr_grpo | dapo | gspo | cispo; knobs under algorithm.*"),
        ("rollout.prompts_per_step", "B: prompts per step (a multiple of the number of processes)"),
        ("rollout.samples_per_prompt", "G: completions per prompt, one group"),
        ("rollout.temperature", "sampling temperature (above 0 when G > 1: a greedy group has no variance)"),
        ("rollout.max_new_tokens", "the longest completion, in tokens"),
        ("optim.lr", "learning rate (AdamW); optim.* also sets warmup, schedule, clipping"),
        ("algorithm.advantage", "advantage estimator by name: built in (reasonrl.grpo) or an installed plugin's"),
        ("algorithm.policy_loss", "policy loss by name: built in (reasonrl.grpo) or an installed plugin's"),
        ("algorithm.options", "free-form knobs that plugin estimators and losses read: +algorithm.options.<key>=<value>"),
        ("plugins", "modules imported before the run, so their @advantage_estimator / @policy_loss register"),
        ("algorithm.kl_coef", "KL penalty to the initial policy (0: no reference model)"),
        ("verify.workers", "scoring processes: -1 auto, 0 in the trainer's process"),
        ("verify.timeout_s", "deadline of one check"),
        ("verify.max_failed_frac", "stop when a verifier fails (error/timeout) on more than this fraction of a step"),
        ("eval.every", "held-out evaluation every N steps (0: at the start and the end only)"),
        ("eval.max_new_tokens", "the longest completion in evaluation"),
        ("eval.benchmarks", "benchmarks evaluated during training: +eval.benchmarks.<name>=<file>"),
        ("cold_start.enabled", "SFT on demonstrations before RL"),
        ("checkpoint.every", "a training checkpoint every N steps (0: none by count)"),
        ("resume", "auto (the run directory's latest checkpoint) or a checkpoint path"),
        ("overwrite", "true: remove the run already in run_dir (its files only) and start afresh"),
        ("logging.progress", "progress bars"),
    ],
    "sft": [
        ("max_steps", "SFT steps"),
        ("seed", "seed"),
        *_MODEL,
        *_TASK,
        ("task.target", "demonstrations from data: the completion, filled from the fields (e.g. '{solution}')"),
        ("sft.data_file", "a JSONL of prompt/completion rows (default: the task's demonstrations)"),
        ("sft.demos", "generated demonstrations (arith)"),
        ("sft.batch_size", "sequences per step"),
        ("sft.optim.lr", "learning rate"),
        ("sft.eval_every", "held-out evaluation every N steps"),
        ("eval.max_new_tokens", "the longest completion in evaluation"),
        ("checkpoint.final", "write checkpoints/final"),
    ],
    "eval": [
        *_MODEL,
        ("generator", "group: hf (transformers) | vllm"),
        ("check", "true: score each benchmark's reference solutions (no model)"),
        ("benchmarks", "a list: gsm8k, math500, aime24, amc23, minerva_math, olympiadbench, humaneval, mbpp"),
        ("data", "benchmark -> file (data.gsm8k=PATH); default under $$REASONRL_DATA_DIR"),
        ("limit", "the first N problems of each benchmark (null: all)"),
        ("n", "samples per problem"),
        ("ks", "k of pass@k and maj@k (k <= n)"),
        ("temperature", "sampling temperature (0: greedy; above 0 when n > 1)"),
        ("max_new_tokens", "the longest completion, in tokens (prompt + completion must fit the model)"),
        ("template", "chat (instruct models) | r1 (base models) | text"),
        ("verify_workers", "scoring processes: -1 auto, 0 in this process"),
        ("verify_timeout_s", "deadline of one math check in a scoring process"),
        ("code_verify_timeout_s", "deadline of one code check at least (longer where its test cases need it)"),
    ],
}


HELP_GROUPS = {"sft": ["model", "task"], "eval": ["model", "generator"]}  # train: every group


def help_template(config_name: str, conf_dir: Path | None = None) -> str:
    """The --help page: what the program does, examples, the main settings with their current values, the
    config groups (Hydra fills in $APP_CONFIG_GROUPS, plugin verifiers included) and where to find the rest."""
    program = PROGRAMS[config_name]
    rows = SETTINGS[config_name]
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{program}: {SUMMARIES[config_name]}", "", "Usage: " + program + " [KEY=VALUE ...] [GROUP=OPTION ...]", ""]
    lines += ["Examples:"] + [f"  {e}" for e in EXAMPLES[config_name]] + [""]
    lines += ["Main settings (KEY=VALUE; now: the value this command line gives):"]
    for key, text in rows:
        now = (
            ""
            if text.startswith("group") or key in ("task.fields", "eval.benchmarks", "data")
            else f"  [now: ${{reasonrl.show:{key}}}]"
        )
        lines.append(f"  {key:<{width}}{text}{now}")
    lines += [
        "",
        "Config groups (GROUP=OPTION):",
        *(
            [f"{g}: {', '.join(group_options(g, conf_dir))}" for g in HELP_GROUPS[config_name]] + [""]
            if config_name in HELP_GROUPS and conf_dir is not None
            else ["$APP_CONFIG_GROUPS"]
        ),
        f"Every key with its value: {program} --cfg job (add --resolve to resolve interpolations).",
        "A misspelled key or option fails with a suggestion; a leading + adds keys only to free-form nodes",
        "(task.fields, eval.benchmarks, verifier and generator options).",
        f"Hydra's own flags (multirun, output directories, logging): {program} --hydra-help",
    ]
    return "\n".join(lines) + "\n"


def show(key: str, _root_) -> str:
    """A config value for the help page, whatever it is (missing, None, a list); ``$`` escaped for the template."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(_root_, key, throw_on_missing=True)
    except Exception:  # a mandatory value not given yet (model.path with model=hf), or an unresolvable one
        value = "???"
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return str(value).replace("$", "$$")


def help_node(config_name: str, conf_dir: Path | None = None) -> dict[str, str]:
    """A hydra/help option for ``config_name``."""
    return {"app_name": PROGRAMS[config_name], "header": "", "footer": "", "template": help_template(config_name, conf_dir)}
