"""The run directory: where a run writes everything, announced at start and end.

``open_run_dir(cfg)`` uses ``run_dir`` when set, else Hydra's output directory,
creates it, prints it, and writes the resolved ``config.yaml``;
``write_summary`` writes ``summary.json``. Only the main process writes.

It does not log metrics (:mod:`reasonrl.metrics`) or save checkpoints
(:mod:`reasonrl.policy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def open_run_dir(cfg, is_main: bool = True) -> Path:
    """The run directory (``run_dir`` or Hydra's output dir), created, announced, with config.yaml written."""
    from omegaconf import OmegaConf

    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        announce(run_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def announce(run_dir: Path) -> None:
    print(f"[reasonrl] run directory: {run_dir}", flush=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
