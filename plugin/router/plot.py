"""Draw a router's k-means tree: one dot per node (area ~ points), leaves labelled with their most common
WordNet label, so a person can see what the partitions hold. matplotlib is imported lazily."""
from __future__ import annotations

from collections import Counter

import numpy as np


def leaf_labels(router, field: str = "label") -> dict[int, tuple[str, float]]:
    """leaf id -> (most common ``field`` value, its share of the leaf)."""
    counts: dict[int, Counter] = {}
    for page in router.store.scroll(with_vectors=False, payload_fields=["leaf", field]):
        for r in page:
            counts.setdefault(int(r.payload.get("leaf", -1)), Counter())[str(r.payload.get(field))] += 1
    out = {}
    for lid, c in counts.items():
        label, n = c.most_common(1)[0]
        out[lid] = (label, n / sum(c.values()))
    return out


def plot_tree(router, path: str, title: str | None = None, field: str = "label") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree = router.tree
    x: dict[int, float] = {}
    order = []

    def place(node):  # leaves left to right in depth-first order, parents centred over children
        kids = tree.children[node]
        if not kids:
            x[node] = float(len(order))
            order.append(node)
            return
        for c in kids:
            place(c)
        x[node] = float(np.mean([x[c] for c in kids]))

    place(0)
    labels = leaf_labels(router, field)
    n_leaves = max(len(order), 1)
    fig, ax = plt.subplots(figsize=(min(4 + 0.28 * n_leaves, 40), 6))
    total = max(int(tree.counts[0]), 1)
    for node, px in x.items():
        py = -tree.depth[node]
        for c in tree.children[node]:
            ax.plot([px, x[c]], [py, -tree.depth[c]], color="0.75", lw=0.8, zorder=1)
    xs = np.array([x[n] for n in x])
    ys = np.array([-tree.depth[n] for n in x])
    sizes = np.array([20 + 1500 * tree.counts[n] / total for n in x])
    colors = ["tab:orange" if tree.leaf_id[n] >= 0 else "tab:blue" for n in x]
    ax.scatter(xs, ys, s=sizes, c=colors, zorder=2, alpha=0.8, edgecolors="k", linewidths=0.3)
    for node in order:
        lid = tree.leaf_id[node]
        if lid < 0:
            continue
        label, share = labels.get(lid, ("(empty)", 0.0))
        ax.text(x[node], -tree.depth[node] - 0.25, f"{label} {share:.0%}\n{int(tree.counts[node])} pts",
                rotation=90, ha="center", va="top", fontsize=7)
    ax.set_ylim(min(ys) - 1.7, 0.5)
    ax.set_yticks(sorted(set(ys)))
    ax.set_yticklabels([f"level {1 - y}" for y in sorted(set(ys))])
    ax.set_xticks([])
    d = router.describe()
    ax.set_title(title or f"{router.store.name}: k={d['k']} l={d['l']}, {d['leaves']} leaves, {d['points']} points\n"
                 f"leaf text: most common {field}, its share, points", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
