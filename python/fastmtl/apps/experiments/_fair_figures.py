"""The FairBranch experiments' own figures, drawn from the runner's output (``"details"``):

* ``NAME_tree.png``: the branching tree of the fairbranch arm of one seed. The tasks are the
  leaves along the top; each branching event adds one level below (the trunk layer it split),
  with one node per new task group, joined to the groups it merged. A merged node is labelled
  with the CKA between its members (the similarity the merge was decided at, ≥ τ, in green); a
  group left on its own with its highest CKA to any other group (grey, why it stayed single).
  The root is the trunk below the last branched layer, still shared by every task.
* ``NAME_scatter.png``: per-task test accuracy against EO (|ΔTPR| + |ΔFPR|), one colour per
  arm, each point a task's mean over seeds, and a larger marker at each arm's mean.
"""

from __future__ import annotations

from pathlib import Path


def figures(name: str):
    """The ``figures`` hook of experiment ``name``: both figures, next to the JSON."""
    def draw(output: dict, folder: Path) -> list[Path]:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            print("matplotlib is not installed: no FairBranch figures (pip install 'fastmtl[experiments]')")
            return []
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [branching_tree(output, folder / f"{name}_tree.png", f"{name}: FairBranch branching (seed 0)"),
                accuracy_vs_eo(output, folder / f"{name}_scatter.png", f"{name}: per-task accuracy vs EO")]
    return draw


def tree_levels(record: dict) -> list[list[dict]]:
    """The tree of one fairbranch record as levels of nodes, leaves first: level 0 the tasks,
    level k the groups of event k. A node: ``tasks`` (indices), ``children`` (indices into the
    level above), ``cka`` (None for a leaf) and ``merged`` (it joined two or more groups)."""
    tasks = len(record["tasks"])
    levels = [[{"tasks": [t], "children": [], "cka": None, "merged": False} for t in range(tasks)]]
    for event in record.get("branch_events", []):
        levels.append([{"tasks": group, "children": members, "cka": cka, "merged": len(members) > 1}
                       for group, members, cka in zip(event["groups"], event["members"], event["cka"])])
    return levels


def _leaf_order(levels: list[list[dict]]) -> list[int]:
    """Leaves ordered so that every group's tasks sit side by side (depth first from the top level)."""
    def walk(level: int, index: int) -> list[int]:
        if level == 0:
            return [index]
        return [leaf for child in levels[level][index]["children"] for leaf in walk(level - 1, child)]
    return [leaf for index in range(len(levels[-1])) for leaf in walk(len(levels) - 1, index)]


def branching_tree(output: dict, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    record = output["details"]["fairbranch"][0]
    events, names = record.get("branch_events", []), record["tasks"]
    levels = tree_levels(record)
    x: list[dict[int, float]] = [{} for _ in levels]
    for position, leaf in enumerate(_leaf_order(levels)):
        x[0][leaf] = float(position)
    for level in range(1, len(levels)):
        for index, node in enumerate(levels[level]):
            x[level][index] = sum(x[level - 1][c] for c in node["children"]) / len(node["children"])
    depth = len(levels)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.62 * len(names) + 3), 2.0 + 1.2 * depth))
    for level in range(1, depth):
        for index, node in enumerate(levels[level]):
            for child in node["children"]:
                ax.plot([x[level - 1][child], x[level][index]], [-(level - 1), -level],
                        color="tab:green" if node["merged"] else "0.6", linewidth=1.6 if node["merged"] else 0.9)
            ax.plot(x[level][index], -level, "o", color="tab:green" if node["merged"] else "0.5",
                    markersize=6 if node["merged"] else 4)
            if node["cka"] is not None:
                ax.annotate(f"{node['cka']:.2f}", (x[level][index], -level), textcoords="offset points",
                            xytext=(0, -11), ha="center", fontsize=7,
                            color="tab:green" if node["merged"] else "0.45")
    root = sum(x[-1].values()) / len(x[-1])
    for index in x[-1]:
        ax.plot([x[-1][index], root], [-(depth - 1), -depth], color="0.75", linewidth=0.7)
    ax.plot(root, -depth, "s", color="k", markersize=7)
    below = events[-1]["layer"] if events else 0  # the trunk layers under the last split stay shared
    shared = "the whole trunk" if not events else "layer 0" if below == 1 else f"layers 0-{below - 1}"
    ax.annotate(f"shared: {shared}", (root, -depth),
                textcoords="offset points", xytext=(0, -13), ha="center", fontsize=8)
    for leaf, position in x[0].items():
        ax.text(position, 0.15, names[leaf], rotation=55, ha="left", va="bottom", fontsize=8)
        ax.plot(position, 0, "o", color="tab:blue", markersize=4)
    labels = ["tasks"] + [f"layer {e['layer']} split\n(epoch {e['epoch']:g}, step {e['step']})" for e in events]
    ax.set_yticks([-level for level in range(depth)] + [-depth], labels + ["root"], fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(-0.8, len(names) - 0.2)
    ax.set_ylim(-depth - 0.7, 1.7)  # room above the leaves for the slanted task names
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    tau = events[0]["tau"] if events else None
    ax.set_title(title + (f", τ = {tau:g}\ngreen: merged (the CKA of the merge), grey: left single (its best CKA)"
                          if events else ": no branching happened"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_eo(output: dict, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    details = output["details"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    colours = plt.get_cmap("tab10")
    for index, (arm, records) in enumerate(details.items()):
        tasks = len(records[0]["acc"])
        acc = [sum(r["acc"][t] for r in records) / len(records) for t in range(tasks)]
        eo = [sum(r["eo"][t] for r in records) / len(records) for t in range(tasks)]
        ax.scatter(eo, acc, s=18, color=colours(index), alpha=0.75, label=arm)
        ax.scatter([sum(eo) / tasks], [sum(acc) / tasks], s=120, color=colours(index), marker="*",
                   edgecolors="k", linewidths=0.6)
    seeds = len(next(iter(details.values())))
    ax.set(xlabel="EO = |ΔTPR| + |ΔFPR| (lower is fairer)", ylabel="test accuracy",
           title=f"{title} (mean over {seeds} seed(s); star: the arm's mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
