"""The experiment runner's figure: one panel per metric, a bar per arm at the mean over seeds
with each seed's value as a dot over it (the spread a table's ± hides)."""

from __future__ import annotations

from pathlib import Path


def plot_arms(output: dict, title: str, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'fastmtl[experiments]')")
        return None
    arms = output["arms"]
    names = list(arms)
    metrics = list(arms[names[0]])
    width = max(4.0, 0.45 * len(names) + 1.5)
    stacked = len(names) > 8  # many arms: one wide panel per row, not a row of wide panels
    rows, columns = (len(metrics), 1) if stacked else (1, len(metrics))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 4 * rows), squeeze=False)
    for ax, metric in zip(axes.reshape(-1), metrics):
        means = [sum(arms[arm][metric]) / len(arms[arm][metric]) for arm in names]
        ax.bar(range(len(names)), means, color="tab:blue", alpha=0.6)
        for x, arm in enumerate(names):
            ax.plot([x] * len(arms[arm][metric]), arms[arm][metric], "k.", markersize=4)
        ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                      fontsize=8)
        ax.set(title=metric, ylabel=metric)
        low = min(min(values[metric]) for values in arms.values())
        high = max(max(values[metric]) for values in arms.values())
        if low > 0 and high - low < 0.5 * high:  # zoom in on close values (accuracies)
            ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    fig.suptitle(f"{title}: mean over {output['config']['seeds']} seed(s), dots = seeds")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
