"""Training curves as a PNG: reward, held-out accuracy and chain-of-thought length by step."""

from __future__ import annotations

from pathlib import Path


def plot_training(metrics_path: str | Path, out_path: str | Path, task: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reasonrl.data import load_jsonl

    rows = load_jsonl(metrics_path)

    def series(key):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [
        ("reward", [("reward/mean", "train reward")]),
        ("held-out accuracy", [(f"eval/{task}/accuracy", "greedy"), (f"eval/{task}/accuracy_sampled", "sampled")]),
        (
            "think length (tokens)",
            [("rollout/think_len_mean", "train rollouts"), (f"eval/{task}/think_len_mean", "held-out greedy")],
        ),
    ]
    for ax, (title, keys) in zip(axes, panels):
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)
