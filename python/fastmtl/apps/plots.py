"""Optional matplotlib plots of a training history (the demo's figures). Without matplotlib the
functions say so and return None."""

from __future__ import annotations

from pathlib import Path


def plot_history(histories: dict, path: Path) -> Path | None:
    """histories: {run name: {"step": [...], "accuracy": [[task accuracies] per eval],
    "eval_step": [...], "cosine": [...]}} -> one PNG with accuracy per task and, where
    recorded, the cosine of the two task gradients over training."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'fastmtl[demo]')")
        return None
    with_cosine = [name for name, h in histories.items() if h.get("cosine")]
    fig, axes = plt.subplots(1, 2 if with_cosine else 1, figsize=(11 if with_cosine else 6, 4), squeeze=False)
    ax = axes[0][0]
    for name, history in histories.items():
        per_task = list(zip(*history["accuracy"]))
        for task, accuracy in enumerate(per_task):
            ax.plot(history["eval_step"], accuracy, label=f"{name}, task {task}", linestyle="-" if task == 0 else "--")
    ax.set(xlabel="step", ylabel="test accuracy", title="MultiDigits: accuracy per task")
    ax.legend(fontsize=8)
    if with_cosine:
        ax = axes[0][1]
        for name in with_cosine:
            ax.plot(histories[name]["step"], histories[name]["cosine"], label=f"{name}: cos(g_0, g_1)", alpha=0.7)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="step", ylabel="cosine of the task gradients", title="gradient conflict (cos < 0)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
