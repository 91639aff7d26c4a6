"""The experiment runner's figure: one panel per metric, a bar per arm at the mean over seeds
with each seed's value as a dot over it (the spread a table's ± hides); and, when the output has
training curves (``output["curves"]``), one more full-width panel below: one line per arm, the
mean over seeds where the seeds share their steps (each seed's line, thin, where they do not)."""

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
    curves = {arm: runs for arm, runs in (output.get("curves") or {}).items() if runs}
    width = max(4.0, 0.45 * len(names) + 1.5)
    stacked = len(names) > 8  # many arms: one wide panel per row, not a row of wide panels
    rows, columns = (len(metrics), 1) if stacked else (1, len(metrics))
    curve_height = 4.5 + (0.12 * len(curves) if len(curves) > 8 else 0.0)  # room for a legend below
    fig = plt.figure(figsize=(max(width * columns, 8.0), 4 * rows + (curve_height if curves else 0)))
    grid = fig.add_gridspec(rows + (1 if curves else 0), columns,
                            height_ratios=[4] * rows + ([curve_height] if curves else []))
    axes = [fig.add_subplot(grid[r, c]) for r in range(rows) for c in range(columns)]
    for ax, metric in zip(axes, metrics):
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
    if curves:
        _plot_curves(fig.add_subplot(grid[rows, :]), curves, output.get("curve_label") or "training curve",
                     output.get("curve_x") or "step", plt)
    fig.suptitle(f"{title}: mean over {output['config']['seeds']} seed(s), dots = seeds")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # keep the title clear of the panels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_curves(ax, curves: dict, label: str, x_label: str, plt) -> None:
    """One line per arm: the mean over seeds when every seed has the same steps, else each
    seed's own line (thin, the arm's colour)."""
    many = len(curves) > 10
    if len(curves) <= 10:
        colours = [plt.get_cmap("tab10")(i) for i in range(len(curves))]
    else:  # many arms: a continuous colormap, with the line style changing every 10 arms
        colours = [plt.get_cmap("turbo")(i / (len(curves) - 1)) for i in range(len(curves))]
    styles = ("-", "--", ":", "-.")
    shared = True
    for index, (arm, runs) in enumerate(curves.items()):
        colour, style = colours[index], styles[(index // 10) % len(styles)] if many else "-"
        if all(run["step"] == runs[0]["step"] for run in runs):
            steps = runs[0]["step"]
            mean = [sum(run["value"][i] for run in runs) / len(runs) for i in range(len(steps))]
            ax.plot(steps, mean, style, color=colour, linewidth=1.2 if many else 1.6, label=arm)
        else:
            shared = False
            for number, run in enumerate(runs):
                ax.plot(run["step"], run["value"], style, color=colour, linewidth=0.7, alpha=0.8,
                        label=arm if number == 0 else None)
    seeds = max(len(runs) for runs in curves.values())
    how = "mean over seeds" if shared and seeds > 1 else ("one line per seed" if not shared else "one seed")
    ax.set(title=f"{label} ({how})", xlabel=x_label, ylabel=label)
    ax.grid(alpha=0.3)
    if many:  # a compact legend in columns under the panel
        ax.legend(fontsize=7, ncol=min(7, -(-len(curves) // 4)), loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  frameon=False, handlelength=2.0, columnspacing=1.0)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
