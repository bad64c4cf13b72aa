"""Spilling (SOAR, Sun et al., NeurIPS 2023): each point is also filed under a second leaf, in an integer
``spill`` payload beside its ``leaf``, so that a routed search asked to (``router.search(...,
spill=True)``, a router built with ``Router.build(..., spill=True)``) scores the points whose ``leaf``
*or* ``spill`` is a routed leaf: a query whose true neighbours sit just across a leaf boundary finds
them in fewer leaves.

What it buys was measured before it was built (``make bench-spill``, docs/results/spill-fashion-mnist.md,
60k Fashion-MNIST): for recall@10 >= 0.99 a query scores 0.62x the points, and in the engine the 32x3
tree's query took 0.78x the time (0.91x on 16x3); at 0.95 it buys nothing and the wider filter costs
(1.17x on 32x3), so it is a per-search choice for high recall, and a spilled collection searched
without it costs what an unspilled one does. In the product path (the ``+spill`` rows of
docs/results/hkm-fashion-mnist.md, run on 9d8158c) the cheapest spilled row reaching 0.99 took 1.26x
(8x4) to 1.45x (32x3) the cheapest unspilled one's time in the sweep, and re-timed, the best spilled
16x3 row took 0.458 ms against the unspilled row's 0.379: the spilled points lie outside the layout's
leaf order, so each costs the engine more than a co-located one. Hence off by default.

Design choices:

* A separate field, not an array ``leaf``: ``leaf`` stays the single truth that every maintenance path
  reads and that ``Router.check`` counts; the routed layout co-locates points by ``leaf`` alone (its
  principal index), and ``spill`` has a plain integer index.
* Its cost: the build and every ``router.add`` of a spilled router compare each point with every leaf
  centroid (one matrix product, then SOAR's rule among the nearest), and the build writes one payload
  update per spill value; both are several times the unspilled work (the filing descent reads a few
  hundred centroids), which a router built without spilling never pays.
* Spills may go stale, never wrong: leaf ids are never reused, so a ``spill`` naming a leaf that a later
  split or merge retired matches no route and only costs the point its second chance; its ``leaf``
  still finds it. ``router.add`` files a new point's spill with its leaf; splits and merges do not
  re-spill the points they move (a rebuild does).
* SOAR's rule: among the :data:`SOAR_CANDIDATES` nearest other leaves, the ``c'`` minimising
  ``||r'||^2 + lam * <r, r'>^2 / ||r||^2`` (``r = x - c``, ``r' = x - c'``, ``lam = 1``): a second leaf
  whose residual is orthogonal to the first's, so a query the first leaf misrepresents is unlikely to
  be misrepresented by both. On our trees it beat the nearest other leaf at 0.99 on 32x3 (0.62x
  against 0.70x the points; level on 16x3).
"""
from __future__ import annotations

import numpy as np

from plugin.router.tree import METRICS

#: Other leaves a point's SOAR second leaf is picked among (nearest first); the rule's cost term only
#: ever prefers a near one, so looking further changes nothing measurable and costs a matrix pass each.
SOAR_CANDIDATES = 8
SPILL_FIELD = "spill"


def leaf_centroids(flat) -> tuple[np.ndarray, np.ndarray]:
    """(C, live): leaf ``i``'s centroid in row ``i`` of ``C`` (rows of retired ids are zero), ``live[i]``
    whether leaf id ``i`` is in the tree."""
    nodes = np.flatnonzero(flat.leaf_of_node >= 0)
    ids = flat.leaf_of_node[nodes]
    C = np.zeros((flat.next_leaf_id, flat.centroids.shape[1]), np.float32)
    C[ids] = flat.centroids[nodes]
    live = np.zeros(flat.next_leaf_id, bool)
    live[ids] = True
    return C, live


def second_leaves(X: np.ndarray, C: np.ndarray, live: np.ndarray, primary: np.ndarray, rule: str = "soar",
                  lam: float = 1.0, chunk: int = 8192, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Each row's second leaf under ``rule`` (``"nearest"`` or ``"soar"``) and its boundary gap (the
    primary leaf's similarity minus the nearest other leaf's; small = near the boundary). ``X``: the rows
    as the router routes them (unit rows under cosine), ``C``: leaf centroids by leaf id, ``primary``:
    each row's leaf id. Nearness is the router's: the inner product under cosine and dot, the (negated)
    squared Euclidean distance under l2."""
    if rule not in ("nearest", "soar"):
        raise ValueError(f"rule must be 'nearest' or 'soar', got {rule!r}")
    if live.sum() < 2:
        raise ValueError("a second leaf needs a tree of at least two leaves")
    second = np.empty(len(X), np.int64)
    gap = np.empty(len(X), np.float32)
    c_sq = (C * C).sum(1) if metric == "l2" else None
    for s in range(0, len(X), chunk):
        x, p = X[s:s + chunk], primary[s:s + chunk]
        rows = np.arange(len(x))
        sim = x @ C.T
        if c_sq is not None:
            sim = 2 * sim - c_sq  # -||x - c||^2 + ||x||^2: the same order
        sim[:, ~live] = -np.inf
        own = sim[rows, p].copy()
        sim[rows, p] = -np.inf
        m = min(SOAR_CANDIDATES, int(live.sum()) - 1)
        near = np.argpartition(-sim, m - 1, axis=1)[:, :m]
        near = np.take_along_axis(near, np.argsort(-np.take_along_axis(sim, near, 1), axis=1), 1)
        gap[s:s + chunk] = own - sim[rows, near[:, 0]]
        if rule == "nearest":
            second[s:s + chunk] = near[:, 0]
            continue
        r = x - C[p]
        rn2 = np.maximum((r * r).sum(1), 1e-12)
        cost = np.empty(near.shape, np.float64)
        for j in range(m):
            rp = x - C[near[:, j]]
            cost[:, j] = (rp * rp).sum(1) + lam * (r * rp).sum(1) ** 2 / rn2
        second[s:s + chunk] = near[rows, cost.argmin(1)]
    return second, gap


def spill_leaves(flat, X: np.ndarray, primary: np.ndarray, centroids=None) -> np.ndarray:
    """The ``spill`` payload of rows ``X`` filed under leaf ids ``primary`` in the tree ``flat``: each row's
    SOAR second leaf, or -1 (no spill) when the tree has a single leaf. ``centroids``: ``flat``'s
    :func:`leaf_centroids`, when the caller files several parts against the same snapshot."""
    primary = np.asarray(primary, np.int64)
    C, live = leaf_centroids(flat) if centroids is None else centroids
    if len(X) == 0 or live.sum() < 2:
        return np.full(len(X), -1, np.int64)
    metric = "l2" if flat.metric == METRICS["l2"] else "cosine"  # cosine and dot: nearest by inner product
    return second_leaves(np.asarray(X, np.float32), C, live, primary, "soar", metric=metric)[0]


def write_spills(store, flat, ids: np.ndarray, vecs: np.ndarray, primary: np.ndarray) -> None:
    """Each point's SOAR second leaf as its ``spill`` payload (indexed), one ``set_payload`` per value:
    what ``Router.build(spill=True)`` writes, before its relayout carries every payload along.
    ``vecs`` as stored (made unit rows here under cosine), ``primary`` each point's leaf id."""
    store.create_payload_index(SPILL_FIELD, "integer")
    X = np.asarray(vecs, np.float32)
    if flat.metric == METRICS["cosine"]:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    second = spill_leaves(flat, X, primary)
    order = np.argsort(second, kind="stable")
    bounds = np.flatnonzero(np.diff(second[order])) + 1
    for grp in np.split(order, bounds):
        if len(grp) and second[grp[0]] >= 0:
            store.set_payload(ids[grp], {SPILL_FIELD: int(second[grp[0]])})
