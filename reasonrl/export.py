"""``reasonrl-export CHECKPOINT OUT_DIR [--dtype bfloat16] [--overwrite]``: a training checkpoint as a Hugging Face folder.

The folder (weights in the chosen dtype, bfloat16 by default, and the
tokenizer) loads in transformers and vLLM like ``checkpoints/final``. A LoRA
run's is the merged model, with the adapter alone in ``OUT_DIR/adapter`` (a
peft folder: ``PeftModel.from_pretrained`` or vLLM's ``LoRARequest``, on the
base it names). The
model's shape comes from the checkpoint's own ``config.yaml``.

Exporting a downloaded checkpoint runs no code from it: the model and
optimizer state are read as :mod:`reasonrl.checkpoint` reads them on resume
(DCP metadata through a restricted unpickler, tensors weights-only), and a
file that would need more is refused by name (exit status 1). What it does
trust is listed in that module's docstring: the base model that the
checkpoint's ``config.yaml`` names is loaded (without remote code). A relative
``model.path`` there is taken relative to the directory the training run
started in (the checkpoint records it), so the export works from anywhere.

It does not write training checkpoints (:mod:`reasonrl.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path

from reasonrl import checkpoint as ckpt
from reasonrl import lora


def export_hf(checkpoint: str | Path, out_dir: str | Path, dtype: str = "bfloat16", overwrite: bool = False) -> Path:
    """A training checkpoint as a Hugging Face folder in ``dtype`` (with the tokenizer). An existing non-empty
    ``out_dir`` is refused, unless ``overwrite`` and it is a model folder itself (then it is replaced whole)."""
    import time

    from omegaconf import OmegaConf

    from reasonrl.models import load_policy
    from reasonrl.policy import save_checkpoint, torch_dtype

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not (checkpoint / "meta.json").is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r} is not a complete training checkpoint (no meta.json)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{str(out_dir)!r} exists and is not empty: nothing was written (--overwrite replaces it)")
        if not (out_dir / "config.json").is_file():
            raise FileExistsError(f"{str(out_dir)!r} is not a Hugging Face model folder; --overwrite replaces only those")
    cfg = OmegaConf.load(checkpoint / "config.yaml")
    resolve_model_paths(cfg.model, ckpt.read_trainer_state(checkpoint).get("cwd"), checkpoint)
    t0 = time.monotonic()
    _say(f"loading the base model the checkpoint was trained from ({base_model_name(cfg.model)})")
    model, tokenizer, base = load_policy(cfg.model, progress=False)
    _say(f"loading the checkpoint's weights from {checkpoint / 'state'}")
    ckpt.load_model_and_optimizer(checkpoint, model)
    model.to(torch_dtype(dtype))  # save_pretrained records the dtype in config.json
    if cfg.get("cold_start", {}).get("enabled", False):  # a LoRA adapter applies to the cold start's result
        base = checkpoint.parent / "sft"
    _say(f"writing {out_dir}" + (" (LoRA: merged, and the adapter alone in adapter/)" if lora.is_lora(model) else ""))
    out = save_checkpoint(model, tokenizer, out_dir, base_path=str(base))
    _say(f"done in {time.monotonic() - t0:.0f} s")
    return out


def _say(msg: str) -> None:
    print(f"[reasonrl] {msg}", flush=True)


def base_model_name(model_cfg) -> str:
    return str(model_cfg.get("path") or model_cfg.get("gguf") or f"the tiny base model {model_cfg.get('name', '')}".strip())


def resolve_model_paths(model_cfg, run_cwd: str | None, checkpoint: Path) -> None:
    """Make the checkpoint config's relative model paths (``model.path``, a GGUF file ``model.gguf``) absolute:
    they are relative to the directory the run started in (recorded in the checkpoint; an older checkpoint does
    not say, and the current directory is tried). A path found nowhere is an error naming both places."""
    for key in ("path", "gguf"):
        value = model_cfg.get(key)
        if not value or os.path.isabs(os.path.expanduser(str(value))) or (key == "gguf" and ":" in str(value)):
            continue
        value = str(value)
        places = [p for p in (run_cwd, os.getcwd()) if p]
        for base in places:
            if os.path.exists(os.path.join(base, value)):
                model_cfg[key] = os.path.join(base, value)
                break
        else:
            where = " or ".join(repr(p) for p in dict.fromkeys(places))
            raise FileNotFoundError(
                f"model.{key}={value!r} in {checkpoint / 'config.yaml'} is a relative path, and it is not found from "
                f"{where}; run reasonrl-export from the directory the training run started in"
            )


def cli() -> None:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="reasonrl-export", description="Write a training checkpoint as a Hugging Face folder.")
    ap.add_argument("checkpoint", help="a training checkpoint folder, e.g. runs/x/checkpoints/step_000100")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DIR when it is a model folder already")
    args = ap.parse_args()
    try:
        out = export_hf(args.checkpoint, args.out_dir, args.dtype, args.overwrite)
    except (FileNotFoundError, FileExistsError, ckpt.CheckpointRefused) as e:
        raise SystemExit(f"reasonrl-export: error: {e}") from None
    except KeyboardInterrupt:
        print(f"\nreasonrl-export: interrupted; {args.out_dir} was not written", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except OSError as e:  # a full disk, a read-only place: the folder is renamed into place only when complete
        raise SystemExit(f"reasonrl-export: error: {e}; {args.out_dir} was not written") from None
    print(f"[reasonrl] exported {args.checkpoint} ({args.dtype}) to {out}")
