"""``reasonrl-export CHECKPOINT OUT_DIR [--dtype bfloat16]``: a training checkpoint as a Hugging Face folder.

The folder (weights in the chosen dtype, bfloat16 by default, and the
tokenizer) loads in transformers and vLLM like ``checkpoints/final``. The
model's shape comes from the checkpoint's own ``config.yaml``.

Exporting a downloaded checkpoint runs no code from it: the model and
optimizer state are read as :mod:`reasonrl.checkpoint` reads them on resume
(DCP metadata through a restricted unpickler, tensors weights-only), and a
file that would need more is refused by name (exit status 1). What it does
trust is listed in that module's docstring: the base model that the
checkpoint's ``config.yaml`` names is loaded (without remote code).

It does not write training checkpoints (:mod:`reasonrl.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

from reasonrl import checkpoint as ckpt


def export_hf(checkpoint: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """A training checkpoint as a Hugging Face folder in ``dtype`` (with the tokenizer)."""
    from omegaconf import OmegaConf

    from reasonrl.models import load_policy
    from reasonrl.policy import save_checkpoint, torch_dtype

    checkpoint = Path(checkpoint)
    if not (checkpoint / "meta.json").is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r} is not a complete training checkpoint (no meta.json)")
    cfg = OmegaConf.load(checkpoint / "config.yaml")
    model, tokenizer, _ = load_policy(cfg.model, progress=False)
    ckpt.load_model_and_optimizer(checkpoint, model)
    model.to(torch_dtype(dtype))
    model.config.torch_dtype = torch_dtype(dtype)
    return save_checkpoint(model, tokenizer, out_dir)


def cli() -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="reasonrl-export", description="Write a training checkpoint as a Hugging Face folder.")
    ap.add_argument("checkpoint", help="a training checkpoint folder, e.g. runs/x/checkpoints/step_000100")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args()
    try:
        out = export_hf(args.checkpoint, args.out_dir, args.dtype)
    except (FileNotFoundError, ckpt.CheckpointRefused) as e:
        raise SystemExit(f"reasonrl-export: {e}") from None
    print(f"[reasonrl] exported {args.checkpoint} ({args.dtype}) to {out}")
