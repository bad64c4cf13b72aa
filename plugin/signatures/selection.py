"""Branch selection on clustered and indexed signatures (IndxCBSA, paper §3.4 and Fig. 6), Extended
OR-Inc pruning (Pandey et al. 2015; eq. 6 and the parent-child rule) and the general / specific
semantics they give.

**Branch selection.** Level by level, starting with the top-level subtrees: the candidates' distances
to the query (per feature, from each synset's best dominant cluster: :func:`plugin.signatures.vptree.
node_distances`) give one sorted list per feature; ``n = ceil(fraction * N)`` of the N candidates are
selected (paper: n = ceil(N / 4) at the top level; the same rule is applied at every level, since the
paper gives none for the others), and the children of the selected ones are the next level's
candidates. The paper does not say how the three lists are "analysed" into n picks; here a candidate's
strength is its **best rank over the features** (a subtree some feature puts first beats one no
feature puts first: the "OR" spirit of the pruning, and the definition of a *dominant feature* below),
ties broken by CombSUM, then weighted distance. The selected top-level subtrees are the **general
semantics**; the selected nodes of every level are the search space.

**Extended OR** (eq. 6), per selected top-level subtree: its *dominant feature* is the one that ranked
it best at the top level (ties: the first feature). With ``Dqs`` the distances (in that feature) of the
subtree's selected nodes (its top node included), keep a node when ``Dqs <= Dmean + mean|Dqs - Dmean|``
OR ``Dqs <= Dmed + median|Dqs - Dmed|``. **Inc**: a kept node whose distance grew from its parent's in
more than half of the features is dropped (soft pruning: only that node, never its subtree; top-level
nodes have no parent to compare with and stay). The parent's distances exist whether or not the
parent itself survived, since it was selected to reach the child. Pruning never empties the search
space: Ext OR always keeps each subtree's nearest node, and when Inc would then remove every node
left (Ext OR dropped a subtree's top node, Inc all its children), the Ext OR set stands instead
(``Pruned.fallback``; the paper does not say, and a query must get some semantics).

**Specific semantics**: the survivors in CombSUM order of their per-feature ranks
(:mod:`plugin.signatures.fusion`), the first ``n_specific`` = 3. The images searched for retrieval are
those of the specific semantics (the paper: "only those images ... that belong to the nodes
corresponding to retrieved specific semantics").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from plugin.signatures import fusion
from plugin.signatures.hierarchy import Hierarchy

FRACTION = 0.25
N_SPECIFIC = 3


@dataclass
class Selection:
    """What branch selection computed for one query."""

    dist: dict = field(default_factory=dict)  # node -> (F,) distances, every candidate scored
    levels: list = field(default_factory=list)  # per level: (candidates, selected) node arrays
    dominant_feature: dict = field(default_factory=dict)  # selected top-level node -> feature index

    @property
    def general(self) -> list[int]:
        return [int(x) for x in self.levels[0][1]] if self.levels else []

    @property
    def selected(self) -> list[int]:
        return [int(x) for _, sel in self.levels for x in sel]

    @property
    def scored(self) -> list[int]:
        return [int(x) for cand, _ in self.levels for x in cand]


def pick(D: np.ndarray, n: int, weights: np.ndarray) -> np.ndarray:
    """Indices of the ``n`` strongest rows of (N, F) distances: best rank over features, then CombSUM,
    then weighted distance, then index."""
    R = fusion.ranks(D)
    key = np.lexsort((np.arange(len(D)), D @ weights, fusion.combsum(R), R.min(axis=1)))
    return key[:n]


def branch_select(hier: Hierarchy, node_dist: Callable[[np.ndarray], np.ndarray], weights: np.ndarray,
                  fraction: float = FRACTION, n: int | None = None) -> Selection:
    """Level-by-level selection; ``node_dist(nodes) -> (len(nodes), F)`` distances to the query.
    ``n`` fixes the picks per level; otherwise ``ceil(fraction * N)``."""
    if n is None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n is not None and int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    sel = Selection()
    cand = hier.top_level
    while len(cand):
        D = np.asarray(node_dist(cand), np.float64)
        for i, c in enumerate(cand):
            sel.dist[int(c)] = D[i]
        k = min(int(n) if n is not None else math.ceil(fraction * len(cand)), len(cand))
        chosen = cand[pick(D, k, weights)]
        if not sel.levels:
            R = fusion.ranks(D)
            for i, c in enumerate(cand):
                sel.dominant_feature[int(c)] = int(np.argmin(R[i]))
        sel.levels.append((np.asarray(cand), chosen))
        cand = np.concatenate([hier.children(int(c)) for c in chosen]).astype(np.int64)
    return sel


def extended_or(dqs: np.ndarray) -> np.ndarray:
    """Eq. 6: mask of the distances within the extended mean OR the extended median. The bounds get a
    relative 1e-9 of slack: with two nodes the larger distance *is* the extended mean, and round-off
    must not drop it."""
    dqs = np.asarray(dqs, np.float64)
    mean, med = dqs.mean(), np.median(dqs)
    meanx = mean + np.abs(dqs - mean).mean()
    medx = med + np.median(np.abs(dqs - med))
    slack = 1e-9 * max(float(np.abs(dqs).max()), 1e-300)
    return (dqs <= meanx + slack) | (dqs <= medx + slack)


def inc_keeps(d_child: np.ndarray, d_parent: np.ndarray) -> bool:
    """Inc: False when the distance grew from parent to child in more than half of the features."""
    grew = int((np.asarray(d_child) > np.asarray(d_parent)).sum())
    return grew <= len(d_child) / 2


@dataclass
class Pruned:
    after_or: list[int]
    survivors: list[int]
    fallback: bool = False  # Inc removed every node Ext OR kept: the Ext OR set stands


def prune(hier: Hierarchy, sel: Selection) -> Pruned:
    """Extended OR per selected top-level subtree, then Inc (module docstring)."""
    selected = sel.selected
    after_or = []
    for t in sel.general:
        members = [x for x in selected if hier.top[x] == t]
        f = sel.dominant_feature[t]
        keep = extended_or(np.array([sel.dist[x][f] for x in members]))
        after_or += [x for x, k in zip(members, keep) if k]
    survivors = [x for x in after_or
                 if hier.parent[x] < 0 or inc_keeps(sel.dist[x], sel.dist[int(hier.parent[x])])]
    if not survivors:  # Ext OR dropped the top nodes and Inc every child: prune no further than Ext OR
        return Pruned(after_or, list(after_or), True)
    return Pruned(after_or, survivors)


def specific(sel: Selection, survivors: list[int], weights: np.ndarray, n_specific: int = N_SPECIFIC) -> list[int]:
    """The first ``n_specific`` survivors in CombSUM order."""
    if not survivors:
        return []
    D = np.array([sel.dist[x] for x in survivors])
    return [survivors[i] for i in fusion.order(D, weights)[:n_specific]]
