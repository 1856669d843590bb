"""Training checkpoints: a run's whole state, written atomically, found again on resume, exported.

One checkpoint is a folder ``<run_dir>/checkpoints/step_000005/``:

- ``state/``: model and optimizer state, and the frozen KL reference when the
  run has one, through ``torch.distributed.checkpoint`` (fully qualified
  parameter names, one shard file per process; loadable at another process
  count);
- ``trainer.json``: everything else a step depends on: the step, the scheduler,
  every RNG (Python, torch CPU, CUDA), the problem stream's position (what
  dynamic sampling drew and set aside included), evaluations so far, the SFT
  numbers before a cold start, run counters, the working directory the run
  started in, and the byte offsets of ``metrics.jsonl`` and
  ``samples.jsonl``; plain JSON, with tuples, non-string keys, tensors and
  numpy arrays tagged (``{"__t__": "tensor", "dtype": ..., "shape": ..., "data": base64}``);
- ``config.yaml``: the run's resolved config when it was written;
- ``meta.json``: written last (step, time, sizes).

It is written into ``.step_000005.partial`` and renamed into place when
complete, so a killed write never leaves a folder that looks complete;
:func:`complete_checkpoints` skips (with a log line) and removes leftovers.
Older checkpoints beyond ``keep`` are deleted only after the new one is in
place. Generation seeds are a function of the step (``reasonrl.train``), so
the step restores them; the vLLM engine gets the restored weights on resume.

What loading trusts. Checkpoints get downloaded and shared, so reading one
(``resume=``, ``reasonrl-export``) never runs code from it:

- ``meta.json`` and ``trainer.json`` are JSON; a tag the reader does not know,
  a dtype that is not a torch/numpy number type, or a numpy object array is
  refused (:class:`CheckpointRefused`, naming the file).
- ``config.yaml`` is YAML read by OmegaConf's safe loader. ``resume=`` only
  compares it with the run's own config (nothing is built from it);
  ``reasonrl-export`` builds the base model its ``model`` node names (a local
  folder, a GGUF file or the tiny model) through transformers without remote
  code, so it reads the files that node points at, as the user running it.
- ``state/.metadata`` is a pickle (DCP writes it so). It is read by a
  restricted unpickler that resolves only the ``torch.distributed.checkpoint``
  metadata classes, ``torch.Size``, torch dtypes and layouts and ``pathlib``
  paths; any other global is refused by name. Shard names in it must be plain
  file names inside ``state/``.
- ``state/*.distcp`` shards: tensors through ``torch.load(weights_only=True)``
  (DCP's own reader); the few non-tensor entries (the optimizer's ``lr``,
  ``betas``, ...) also through ``weights_only=True``, where DCP's default
  planner would unpickle them in full.
- Older checkpoints hold ``trainer.pt`` (``torch.save``, a pickle) instead of
  ``trainer.json``: it is read with torch's weights-only unpickler (tensors and
  plain containers; torch >= 2.6) and anything else in it is refused, naming
  the file and the global it asked for. Its next checkpoint is written as
  ``trainer.json``.

What stays trusted is the data: the weights decide what the model writes
(model-written code runs in :mod:`reasonrl.sandbox`), the saved log offsets
truncate the resumed run's ``metrics.jsonl``/``samples.jsonl``, and sizes are
not capped (a hostile file can exhaust memory).

It does not decide when to write (``GRPOTrainer.fit``) and does not export
(:mod:`reasonrl.export`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import math
import os
import pickle
import re
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("reasonrl.checkpoint")

NAME = re.compile(r"^step_(\d{6,})$")
TRAINER_STATE = "trainer.json"
LEGACY_TRAINER_STATE = "trainer.pt"  # checkpoints written before trainer.json: a torch.save pickle
STATE_FORMAT = "reasonrl-trainer-state/1"
# config keys a resumed run may change (prefixes end with "."): nothing here changes what a step computes
RESUME_MAY_CHANGE = (
    "max_steps",
    "resume",
    "overwrite",
    "run_dir",
    "logging.",
    "checkpoint.",
    "eval.every",
    "verify.workers",
    "verify.overlap",
    "verify.max_failed_frac",  # when a failing verifier stops the run: nothing a step computes
    # how the update splits and lays out the batch: the same update in any split (tested), so a resumed run may
    # trade memory for speed; a checkpoint from before a key existed reads it as absent
    "rollout.micro_batch_size",
    "rollout.max_tokens_per_micro_batch",
    "rollout.pass_cost_tokens",
    "rollout.share_prompt",
    # how long a wait between actor and learner may take, and how they split a CPU's threads: nothing a step
    # computes (the staleness bound itself is part of the run)
    "rollout.sync_timeout_s",
    "rollout.actor_threads",
    "rollout.actor",  # thread or process: the same batches from the same stream position
    "rollout.actor_address",
    "model.lora.sync",  # how a vLLM engine receives the same policy: its adapter, or the merged weights
    # keys the schema no longer has (nothing read them): a checkpoint that still holds them resumes
    "cold_start.eval_every",
)


class CheckpointRefused(ValueError):
    """A checkpoint file that is not what reasonrl writes, or that would need code to load: not loaded."""


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def pause_point(step: int, phase: str) -> None:
    """Fault injection for the resume tests: with ``REASONRL_PAUSE_AT=<step>:<phase>`` in the environment
    the process writes ``REASONRL_PAUSE_FILE`` and stops there (SIGSTOP) for the test to kill it."""
    want = os.environ.get("REASONRL_PAUSE_AT")
    if want is None or want != f"{step}:{phase}":
        return
    Path(os.environ["REASONRL_PAUSE_FILE"]).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    return dcp, get_state_dict, set_state_dict


@contextlib.contextmanager
def _quiet():
    """DCP warns that it runs without a process group; in one process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        yield


def save(
    root: str | Path,
    step: int,
    model,
    optimizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    keep: int = 0,
    is_main: bool = True,
    extra_models: dict[str, torch.nn.Module] | None = None,
    barrier=lambda: None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` (0: all). Its path.
    ``extra_models`` (e.g. the frozen KL reference) are saved beside the policy under their names. Every
    rank calls it (each writes its shards); the main process writes the rest and renames; ``barrier``
    keeps the ranks in step around that."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    dcp, get_state_dict, _ = _dcp()
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".{final.name}.partial"
    t = time.perf_counter()
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    extra = {name: get_model_state_dict(m) for name, m in (extra_models or {}).items()}
    with _quiet():
        dcp.save({"model": model_sd, "optim": optim_sd, **extra}, checkpoint_id=str(tmp / "state"))
    pause_point(step, "checkpoint")  # the resume tests kill the run here: shards written, not yet complete
    if is_main:
        write_trainer_state(tmp / TRAINER_STATE, trainer_state)
        (tmp / "config.yaml").write_text(config_yaml)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        meta = {"step": step, "time": time.time(), "bytes": size, "save_s": round(time.perf_counter() - t, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        _fsync_tree(tmp)
        if final.exists():  # a rerun of this step after resuming from an older checkpoint
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            shutil.rmtree(old)
        os.rename(tmp, final)
        _fsync_dir(root)
        if keep > 0:
            for old in complete_checkpoints(root, quiet=True)[:-keep]:
                shutil.rmtree(old)
    barrier()
    return final


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(root: str | Path, quiet: bool = False) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first; leftovers of killed writes are logged and removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if p.name.endswith(".partial") or p.name.endswith(".old"):
            if not quiet:
                log.warning("skipping incomplete checkpoint %s (its write was interrupted); removing it", p)
            shutil.rmtree(p, ignore_errors=True)
            continue
        m = NAME.match(p.name)
        if m is None or not p.is_dir():
            continue  # checkpoints/final, checkpoints/sft: Hugging Face folders, not training checkpoints
        if not (p / "meta.json").is_file():
            if not quiet:
                log.warning("skipping incomplete checkpoint %s (no meta.json)", p)
            continue
        found.append(p)
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def resolve(resume: str | None, root: Path) -> Path | None:
    """The checkpoint ``resume`` names: ``auto`` = the latest complete one under ``root`` (None when there
    is none: a fresh start), else a path to a checkpoint folder."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    p = Path(resume)
    has_state = (p / TRAINER_STATE).is_file() or (p / LEGACY_TRAINER_STATE).is_file()
    if not (p / "meta.json").is_file() or not has_state:
        raise FileNotFoundError(f"resume={resume!r} is not a complete training checkpoint (no meta.json/{TRAINER_STATE} there)")
    return p


# ---------------------------------------------------------------- the trainer state: JSON, no pickle
_TAG = "__t__"


def write_trainer_state(file: Path, state: dict[str, Any]) -> None:
    """``state`` (plain data, tuples, tensors, numpy arrays) as JSON; anything else is a TypeError naming where."""
    doc = {"format": STATE_FORMAT, "byteorder": sys.byteorder, "state": _encode(state, "state")}
    Path(file).write_text(json.dumps(doc, allow_nan=False))


def _raw(kind: str, dtype: str, shape: list[int], data: bytes) -> dict[str, Any]:
    return {_TAG: kind, "dtype": dtype, "shape": shape, "data": base64.b64encode(data).decode("ascii")}


def _encode(x: Any, where: str) -> Any:
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is float:
        return x if math.isfinite(x) else {_TAG: "float", "v": repr(x)}
    if type(x) is list:
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if type(x) is tuple:
        return {_TAG: "tuple", "v": [_encode(v, f"{where}[{i}]") for i, v in enumerate(x)]}
    if type(x) is dict:
        if all(type(k) is str for k in x) and _TAG not in x:
            return {k: _encode(v, f"{where}.{k}") for k, v in x.items()}
        return {_TAG: "dict", "items": [[_encode(k, f"{where}.<key>"), _encode(v, f"{where}.{k}")] for k, v in x.items()]}
    if type(x) is bytes:
        return {_TAG: "bytes", "data": base64.b64encode(x).decode("ascii")}
    if isinstance(x, torch.Tensor) and x.layout == torch.strided and not x.is_quantized:
        t = x.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        return _raw("tensor", str(x.dtype).removeprefix("torch."), list(x.shape), t.view(torch.uint8).numpy().tobytes())
    if type(x).__module__ == "numpy":
        import numpy as np

        if isinstance(x, (np.ndarray, np.generic)) and not x.dtype.hasobject:
            a = np.asarray(x)
            return _raw("ndarray" if isinstance(x, np.ndarray) else "npscalar", a.dtype.str, list(a.shape), a.tobytes("C"))
    raise TypeError(f"trainer state {where}: cannot store a {type(x).__qualname__} (plain data, tensors and numpy arrays only)")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``path``: ``trainer.json``, or an older checkpoint's ``trainer.pt``
    through torch's weights-only unpickler. Anything that is not plain data is refused, naming the file."""
    path = Path(path)
    file = path / TRAINER_STATE
    if not file.is_file():
        if (path / LEGACY_TRAINER_STATE).is_file():
            return _read_legacy_state(path / LEGACY_TRAINER_STATE)
        raise FileNotFoundError(f"{str(path)!r} is not a complete training checkpoint (no {TRAINER_STATE} there)")
    try:
        doc = json.loads(file.read_text())
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise CheckpointRefused(f"{file}: not a trainer state (expected format {STATE_FORMAT!r})")
        if doc.get("byteorder") != sys.byteorder:
            raise CheckpointRefused(f"{file}: written on a {doc.get('byteorder')}-endian machine; this one is {sys.byteorder}")
        state = _Decoder(file).decode(doc.get("state"), "state")
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise CheckpointRefused(f"{file}: not a trainer state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointRefused(f"{file}: not a trainer state (a {type(state).__name__})")
    return state


class _Decoder:
    """Tagged JSON back to Python values; a tag, dtype or shape it does not know is refused."""

    def __init__(self, file: Path):
        self.file = file

    def refuse(self, where: str, why: str) -> CheckpointRefused:
        return CheckpointRefused(f"{self.file}: {where}: {why}")

    def decode(self, x: Any, where: str) -> Any:
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is list:
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if type(x) is not dict:
            raise self.refuse(where, f"unexpected {type(x).__name__}")
        if _TAG not in x:
            return {k: self.decode(v, f"{where}.{k}") for k, v in x.items()}
        tag = x[_TAG]
        if tag == "tuple" and type(x.get("v")) is list:
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(x["v"]))
        if tag == "dict" and type(x.get("items")) is list:
            if not all(type(kv) is list and len(kv) == 2 for kv in x["items"]):
                raise self.refuse(where, "dict items are not [key, value] pairs")
            try:
                return {self.decode(k, f"{where}.<key>"): self.decode(v, f"{where}.{k}") for k, v in x["items"]}
            except TypeError as e:  # an unhashable key
                raise self.refuse(where, str(e)) from None
        if tag == "float" and x.get("v") in ("nan", "inf", "-inf"):
            return float(x["v"])
        if tag == "bytes":
            return self.b64(x.get("data"), where)
        if tag == "tensor":
            return self.tensor(x, where)
        if tag in ("ndarray", "npscalar"):
            return self.ndarray(x, where)
        raise self.refuse(where, f"unknown or malformed tagged value {str(tag)[:40]!r}")

    def b64(self, data: Any, where: str) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (TypeError, ValueError):
            raise self.refuse(where, "data is not base64") from None

    def shape(self, x: dict, where: str) -> list[int]:
        shape = x.get("shape")
        if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
            raise self.refuse(where, f"bad shape {shape!r}")
        return shape

    def tensor(self, x: dict, where: str) -> torch.Tensor:
        dtype = getattr(torch, str(x.get("dtype")), None) if str(x.get("dtype")).isidentifier() else None
        if not isinstance(dtype, torch.dtype):
            raise self.refuse(where, f"not a torch dtype: {str(x.get('dtype'))[:40]!r}")
        shape, data = self.shape(x, where), self.b64(x.get("data"), where)
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise self.refuse(where, f"{len(data)} bytes do not make a {dtype} tensor of shape {shape}")
        if not data:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()

    def ndarray(self, x: dict, where: str) -> Any:
        import numpy as np

        try:
            dtype = np.dtype(str(x.get("dtype")))
        except (TypeError, ValueError):
            raise self.refuse(where, f"not a numpy dtype: {str(x.get('dtype'))[:40]!r}") from None
        if dtype.hasobject:
            raise self.refuse(where, "numpy object arrays are not stored")
        shape, data = self.shape(x, where), self.b64(x.get("data"), where)
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise self.refuse(where, f"{len(data)} bytes do not make a {dtype} array of shape {shape}")
        a = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        return a if x[_TAG] == "ndarray" else a[()]


def _read_legacy_state(file: Path) -> dict[str, Any]:
    """An older checkpoint's ``trainer.pt`` (a pickle) through torch's weights-only unpickler, or refused."""
    major, minor = (int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
    if (major, minor) < (2, 6):
        raise CheckpointRefused(f"{file}: an older-format trainer state (a pickle); reading it safely needs torch >= 2.6")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = f"it asks for {named.group(1)}" if named else f"{type(e).__name__}: {(str(e) or ' ').splitlines()[0][:200]}"
        raise CheckpointRefused(
            f"{file}: refused: this older-format trainer state is a pickle that holds more than tensors and plain data "
            f"({why}); loading it could run code from the file, and reasonrl never writes such a file"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointRefused(f"{file}: not a trainer state (a {type(state).__name__})")
    log.warning("%s: an older-format trainer state, read with torch's weights-only loader", file)
    return state


# ---------------------------------------------------------------- model and optimizer through DCP, read safely
_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch.layout pickles as _get_layout("torch.strided")
    ("collections", "OrderedDict"),
    *((m, n) for m in ("pathlib", "pathlib._local") for n in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),
}


class _MetadataUnpickler(pickle._Unpickler):
    """Resolves only the globals DCP metadata is made of (plain containers need none) and refuses any other
    by name; BUILD (setting an object's state) applies only to instances of the metadata classes, so a
    file cannot reach into a class, function or dtype. Python's own unpickler: the hooks are its methods."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, build_types: tuple[type, ...]):
        super().__init__(file)
        self.build_types = build_types

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata")

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        plain = isinstance(state, tuple) or (isinstance(state, dict) and all(type(k) is str for k in state))
        if type(inst) not in self.build_types or not plain:
            raise pickle.UnpicklingError(f"setting the state of a {type(inst).__name__} is not part of checkpoint metadata")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def read_dcp_metadata(file: Path):
    """A ``torch.distributed.checkpoint`` ``.metadata`` file, unpickled with only its own classes allowed."""
    from torch.distributed.checkpoint import metadata as m
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r}: no checkpoint metadata there (not a complete training checkpoint)")
    kinds = (m.Metadata, m.TensorStorageMetadata, m.BytesStorageMetadata, m.ChunkStorageMetadata, m.TensorProperties)
    with open(file, "rb") as f:
        try:
            md = _MetadataUnpickler(f, (*kinds, m.MetadataIndex, m.StorageMeta, _StorageInfo)).load()
        except pickle.UnpicklingError as e:
            raise CheckpointRefused(f"{file}: refused: {e}; loading it could run code from the file") from None
        except Exception as e:
            raise CheckpointRefused(f"{file}: not readable checkpoint metadata ({type(e).__name__}: {e})") from None
    ok = (
        isinstance(md, m.Metadata)
        and isinstance(md.state_dict_metadata, dict)
        and all(isinstance(v, (m.TensorStorageMetadata, m.BytesStorageMetadata)) for v in md.state_dict_metadata.values())
        and isinstance(md.storage_data, dict)
        and all(isinstance(k, m.MetadataIndex) and isinstance(v, _StorageInfo) for k, v in md.storage_data.items())
    )
    if not ok:
        raise CheckpointRefused(f"{file}: not checkpoint metadata (a {type(md).__name__} of unexpected shape)")
    for info in md.storage_data.values():
        name = info.relative_path
        if not (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name):
            raise CheckpointRefused(f"{file}: refused: shard {str(name)[:80]!r} is not a file name inside {file.parent}")
    return md


@functools.cache
def _safe_dcp_classes():
    """A DCP file reader whose metadata goes through :func:`read_dcp_metadata`, and a load planner that reads
    non-tensor entries with ``weights_only=True``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            rank = kwargs.get("rank")
            md = read_dcp_metadata(Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata"))
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = getattr(self, "load_id", None)
            return md

    class Planner(DefaultLoadPlanner):
        def __init__(self, folder: Path):
            super().__init__()
            self.folder = folder

        def load_bytes(self, read_item, value) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as e:
                shard = self.metadata.storage_data[read_item.storage_index].relative_path
                named = re.search(r"GLOBAL ([\w.]+)", str(e))
                raise CheckpointRefused(
                    f"{self.folder / shard}: refused: entry {fqn!r} holds more than tensors and plain data"
                    f"{f' (it asks for {named.group(1)})' if named else ''}; loading it could run code from the file"
                ) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return Reader, Planner


def load_model_and_optimizer(path: Path, model, optimizer=None, extra_models: dict[str, torch.nn.Module] | None = None) -> None:
    """Load a checkpoint's model (and optimizer, and ``extra_models``) state in place, at any process count.
    Nothing in the folder is unpickled beyond tensors, plain data and DCP's metadata classes (module docstring)."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    dcp, get_state_dict, set_state_dict = _dcp()
    Reader, Planner = _safe_dcp_classes()
    folder = Path(path) / "state"
    read_dcp_metadata(folder / ".metadata")  # a refusal here reads plainly, not wrapped in DCP's per-rank report
    extra = extra_models or {}
    state: dict[str, Any] = {name: get_model_state_dict(m) for name, m in extra.items()}
    if optimizer is None:
        state["model"] = get_model_state_dict(model)
    else:
        state["model"], state["optim"] = get_state_dict(model, optimizer)
    try:
        with _quiet():
            dcp.load(state, storage_reader=Reader(str(folder)), planner=Planner(folder))
    except CheckpointException as e:
        for exc, _ in e.failures.values():
            if isinstance(exc, CheckpointRefused):
                raise exc from None
        raise
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for name, m in extra.items():
        set_model_state_dict(m, state[name])


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_changes(saved: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """Keys whose values differ between a checkpoint's config and the resumed run's, except the allowed ones.

    A key the checkpoint lacks (a knob newer than the checkpoint) counts as changed unless the resumed run
    leaves it at its ``defaults`` value (the schema's, which keeps what the code did before the knob existed)."""
    a, b, d = _flat(saved), _flat(new), _flat(defaults or {})
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") == b.get(k, "<absent>"):
            continue
        if k not in a and k in d and d[k] == b.get(k, "<absent>"):
            continue
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUME_MAY_CHANGE):
            continue
        out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
    return out
