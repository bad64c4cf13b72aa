"""Incremental ingestion without rebuilds: add, delete, local split / merge, boundary reassignment.

* **add**: each new vector goes down the tree to its nearest leaf (greedy descent, as the build assigned
  points) and is upserted with that ``leaf``; node sums/counts follow, so centroids track the data.
* **split** (a leaf past ``split_bound``, or ``GROWTH`` times the size it was clustered at): re-cluster
  only that leaf's points with k-means into pieces of about the mean leaf size, filed as siblings under
  the leaf's parent (leaves stay at the built depth). The paper rebuilds; we never do unless asked.
* **regroup** (after any split or merge): the levels above the leaves are re-clustered from the leaves'
  running sums (:meth:`Tree.regroup`, no store write), so a class the build never saw gets upper-level
  centroids of its own instead of being spread over subtrees placed without it.
* **merge** (a leaf under ``merge_bound``): its points go to their nearest other leaves and the node is
  removed (an internal node left without children is removed too).
* **boundary reassignment** (SPFresh's LIRE idea): after a split or merge, points of the changed leaves
  and of the ``NEIGHBOURS`` leaves nearest to them are re-filed under their nearest leaf among that local
  set, so a boundary that moved does not strand points on the wrong side.

Order of writes: the store first (the truth), then the in-memory tree; ``Router.reconcile`` repairs the
saved state from the store's ``leaf`` payloads if a crash comes between them. (An add sums its points
into the in-memory tree beside the store write, on the router's worker thread, and leaves the tree
counting exactly the parts the store took if a write fails: nothing reaches the saved state before
the store has the points.)
"""
from __future__ import annotations

import numpy as np

from plugin.router.kernels import PARALLEL_MIN, centroid_distances
from plugin.router.recent import points_of
from plugin.router.tree import METRICS, _halve, _split
from plugin.router.spill import SPILL_FIELD, leaf_centroids, spill_leaves
from plugin.errors import HSearchError
from plugin.store.base import Filter, check_ids, check_payloads

NEIGHBOURS = 3
#: a leaf this many times the size it was clustered at is re-clustered (see ``_bounds``)
GROWTH = 2.0


def _dist(metric: str, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, m) distances between rows of x and centroids c, in the router's metric."""
    if metric == "l2":
        return np.sqrt(np.maximum(((x[:, None, :] - c[None]) ** 2).sum(-1), 0))
    if metric == "cosine":
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        return 1 - x @ c.T
    return -(x @ c.T)


def _points_of(router, lids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, leaf) of every stored point in the given leaves; the vectors of points added
    lately come from ``router.recent`` (:mod:`plugin.router.recent`), the rest from the store."""
    ids, vecs, pls = points_of(router.store, router.recent, Filter.of(leaf_in=list(lids)))
    return ids, vecs, np.asarray([p.get("leaf", -1) for p in pls], np.int64)


def _move(router, ids, vecs, old_leaf, new_leaf) -> tuple[int, list[int]]:
    """Re-file points whose leaf changed: store payloads first, then tree sums (one sum per leaf, not per
    point). Returns (points moved, leaves whose counts changed)."""
    tree, store = router.tree, router.store
    moved = np.flatnonzero(old_leaf != new_leaf)
    if len(moved) == 0:
        return 0, []
    for lid in np.unique(new_leaf[moved]):
        sel = moved[new_leaf[moved] == lid]
        store.set_payload(ids[sel], {"leaf": int(lid)})
    out = tree.add_to_leaves(vecs[moved], old_leaf[moved], -1)
    into = tree.add_to_leaves(vecs[moved], new_leaf[moved], +1)
    return len(moved), sorted(set(out) | set(into))


def _nearest_leaves(tree, centroid: np.ndarray, exclude: set, n: int) -> list[int]:
    """The ``n`` leaves nearest ``centroid`` (ids in ``exclude`` left out), over every leaf of the live tree."""
    lids = [x for x in sorted(tree.leaf_node) if x not in exclude]
    if not lids:
        return []
    nodes = np.fromiter((tree.leaf_node[x] for x in lids), np.int64, count=len(lids))
    d = centroid_distances(np.asarray(centroid, np.float64), tree.centroids, nodes, METRICS[tree.metric])
    return [lids[i] for i in np.argsort(d, kind="stable")[:n]]


def reassign_local(router, changed: list[int], known=None) -> tuple[int, list[int]]:
    """LIRE-style: re-file points of ``changed`` leaves and their nearest neighbour leaves to their nearest
    leaf among that local set. ``known``: (ids, vectors, leaf) of every point of the ``changed`` leaves,
    when the caller has them (a split just read them), so only the neighbours are read from the store.
    Returns (points moved, leaves whose counts changed)."""
    tree = router.tree
    changed = [x for x in changed if x in tree.leaf_node]
    if not changed:
        return 0, []
    centre = tree.leaf_centroids(changed).mean(0)
    neigh = _nearest_leaves(tree, centre, set(changed), NEIGHBOURS)
    local = changed + neigh
    if known is None:
        ids, vecs, leaf = _points_of(router, local)
    else:
        more = _points_of(router, neigh) if neigh else (known[0][:0], known[1][:0], known[2][:0])
        ids, vecs, leaf = (np.concatenate([a, b]) for a, b in zip(known, more))
    if len(ids) == 0:
        return 0, []
    d = _dist(tree.metric, vecs, tree.leaf_centroids(local))
    new_leaf = np.asarray(local, np.int64)[np.argmin(d, axis=1)]
    return _move(router, ids, vecs, leaf, new_leaf)


def _mean_leaf_size(tree) -> float:
    return float(tree.counts[0]) / max(tree.n_leaves, 1)


def split_leaf(router, lid: int) -> tuple[list[int], tuple | None]:
    """Re-cluster one leaf into pieces of about the mean leaf size (2 to k of them), filed as *siblings*
    under the leaf's parent (the leaf's node is removed), so leaves stay at the depth the tree was built
    to and routing sees the pieces at the level it saw the leaf. Returns the new leaf ids ([] if it
    cannot split) and the leaf's points as (ids, vectors, new leaf). A root that is a leaf becomes the
    pieces' parent."""
    tree, store = router.tree, router.store
    node = tree.leaf_node[lid]
    ids, vecs, _ = _points_of(router, [lid])
    if len(ids) < 2:
        return [], None
    pieces = int(min(tree.k, max(2, round(len(ids) / max(_mean_leaf_size(tree), 1.0)))))
    # pieces smaller than merge_bound would be merged straight back: fold them into a sibling
    fold = max(int(router.meta.get("min_leaf_size") or 1), int(router.meta["merge_bound"]))
    groups = _split(vecs, pieces, tree.metric, fold, int(router.meta.get("seed", 0)) + node + len(ids),
                    one_thread=True)
    if len(groups) < 2:
        groups = _halve(vecs)
    parent = tree.parent[node] if tree.parent[node] >= 0 else node
    new_nodes, new_leaf = [], np.empty(len(ids), np.int64)
    for g in groups:
        child = tree.add_node(parent, vecs[g].mean(0), is_leaf=True)
        new_nodes.append(child)
        store.set_payload(ids[g], {"leaf": tree.leaf_id[child]})
        # the parent already counts these points: set the child's own totals without touching ancestors
        tree.sums[child] = vecs[g].sum(0, dtype=np.float64)
        tree.counts[child] = len(g)
        tree.born[child] = len(g)
        new_leaf[g] = tree.leaf_id[child]
    tree.retire_leaf(node)
    if parent != node:
        tree.detach(node, prune=False)
    return [tree.leaf_id[c] for c in new_nodes], (ids, vecs, new_leaf)


def merge_leaf(router, lid: int) -> list[int]:
    """Move a small leaf's points to their nearest other leaves and remove it; returns the receiving leaves."""
    tree = router.tree
    node = tree.leaf_node[lid]
    if tree.parent[node] < 0 or tree.n_leaves < 2:
        return []
    ids, vecs, leaf = _points_of(router, [lid])
    targets = _nearest_leaves(tree, tree.centroids[node], {lid}, NEIGHBOURS)
    if len(ids):
        d = _dist(tree.metric, vecs, tree.leaf_centroids(targets))
        new_leaf = np.asarray(targets, np.int64)[np.argmin(d, axis=1)]
        _move(router, ids, vecs, leaf, new_leaf)
    tree.retire_leaf(node)
    tree.add_sum(node, -tree.sums[node].copy(), -int(tree.counts[node]))  # anything left (nothing, normally)
    tree.detach(node)
    return targets


def _bounds(tree, meta, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(split, merge) masks over leaf ``nodes``: split a leaf past ``split_bound``, or one holding at
    least ``GROWTH`` times the points it was clustered at (and twice ``merge_bound``, and above the mean
    leaf size): what lands in one leaf that fast is usually a mode the tree has not seen (a new class),
    which its old centroid and neighbours were never placed for; merge a leaf under ``merge_bound``."""
    count, born = tree.counts[nodes], tree.born[nodes]
    split, merge = meta["split_bound"], meta["merge_bound"]
    grown = (count >= GROWTH * np.maximum(born, merge)) & (count > _mean_leaf_size(tree)) & (count >= 2 * merge)
    return (count > split) | grown, (count < merge) & (tree.n_leaves > 1)


def _out_of_bounds(tree, meta, lids) -> list[int]:
    """The live leaves among ``lids`` that ``_rebalance`` would split or merge now, in their first order:
    one vectorised test of the bounds, so an add touching thousands of leaves does no Python work for
    the ones that stay in bounds (most of them). Leaves a split or merge changes are re-queued one by
    one; a leaf let through here is not re-tested as later splits lower the mean leaf size."""
    lids = np.fromiter(dict.fromkeys(int(t) for t in lids), np.int64)
    nodes = np.fromiter((tree.leaf_node.get(lid, -1) for lid in lids.tolist()), np.int64, count=len(lids))
    lids, nodes = lids[nodes >= 0], nodes[nodes >= 0]
    split, merge = _bounds(tree, meta, nodes)
    return lids[split | merge].tolist()


def _rebalance(router, touched) -> dict:
    """Split leaves past ``split_bound`` or grown ``GROWTH``-fold, merge leaves under ``merge_bound``,
    starting from ``touched`` and re-checking every leaf a split, merge or boundary reassignment changed,
    until all are in bounds; then, if the set of leaves changed, re-cluster the levels above them
    (:meth:`Tree.regroup`) so the upper centroids are placed for the data they now hold."""
    tree, meta = router.tree, router.meta
    splits = merges = moved = 0
    queue = _out_of_bounds(tree, meta, touched)
    guard = 0
    while queue and guard < 10_000:
        guard += 1
        lid = queue.pop(0)
        if lid not in tree.leaf_node:
            continue
        split, merge = (bool(m[0]) for m in _bounds(tree, meta, np.array([tree.leaf_node[lid]])))
        if split:
            new, points = split_leaf(router, lid)
            if new:
                splits += 1
                n_moved, changed = reassign_local(router, new, points)
                moved += n_moved
                queue.extend(new + changed)
        elif merge:
            targets = merge_leaf(router, lid)
            if targets:
                merges += 1
                queue.extend(targets)
    if splits or merges:
        tree.regroup(int(meta.get("seed", 0)))
    return {"splits": splits, "merges": merges, "reassigned": moved}


def _as_stored(tree, vecs: np.ndarray) -> np.ndarray:
    """Vectors as the tree sums them: unit rows under cosine (what the engine stores), as given otherwise."""
    if tree.metric != "cosine":
        return vecs
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def _take_out(tree, records) -> list[int]:
    """Subtract stored records from their leaves' sums/counts; returns the leaves touched."""
    if not records:
        return []
    vecs = _as_stored(tree, np.vstack([r.vector for r in records]))
    lids = np.asarray([int(r.payload.get("leaf", -1)) for r in records], np.int64)
    return tree.add_to_leaves(vecs, lids, -1)


#: rows per engine write in ``router.add`` (the store's own batch): a refused write leaves the parts
#: before it added, in the store and in the tree alike
ADD_PART = 1024


def add_points(router, ids, vectors, payloads=None) -> tuple[dict, tuple | None]:
    """``router.add``'s work: (stats, the next snapshot's rows if they match the tree as left, else None).

    The engine's write holds the GIL (building its points, then the update), so the router's own work
    runs beside it on the router's worker thread, in GIL-free kernels: the first half of the points is
    filed on every core, then the second half is filed on the worker while the engine writes the
    first, and the tree's sums and the next snapshot's rows are made while it writes the second.

    If the store refuses a write, the parts before it stay added (tree, store and recent vectors agree
    on them), the rest are taken back out of the tree, and the error is re-raised without splits or
    merges (the next add or ``reconcile`` does them)."""
    store, tree = router.store, router.tree
    stored = router.prepare_queries(vectors)  # checked; unit rows under cosine, as the engine stores them
    id_arr = check_ids(ids, len(stored))
    payloads = check_payloads(payloads, len(stored))
    if len(np.unique(id_arr)) != len(id_arr):
        raise HSearchError("duplicate ids in one add")  # the tree would count the point twice
    if isinstance(vectors, np.ndarray) and np.may_share_memory(stored, vectors):
        stored = stored.copy()  # kept in router.recent: rows the caller may still change are copied
    # re-upserting an existing id replaces it: its old copy is taken out of its leaf below
    old = store.retrieve(id_arr, with_vectors=True)
    n, flat, worker = len(stored), router.flat, router.worker()
    half = n // 2 if n >= 2 * PARALLEL_MIN else n  # below, the worker's start costs more than it hides
    lids = np.empty(n, np.int64)
    lids[:half] = router.file_rows(stored[:half], flat)
    filing = worker.submit(router.file_rows, stored[half:], flat, True) if half < n else None
    summing, done = None, 0

    # a spilled router files each new point's second leaf too, every part against the same leaf centroids
    spill_centroids = leaf_centroids(flat) if router.meta.get("spill") else None

    def write(stop):
        nonlocal done
        while done < stop:
            part = slice(done, min(done + ADD_PART, stop))
            rows = [{**p, "leaf": int(l)} for p, l in zip(payloads[part], lids[part].tolist())]
            if spill_centroids is not None:
                for row, second in zip(rows, spill_leaves(flat, stored[part], lids[part], spill_centroids).tolist()):
                    if second >= 0:
                        row[SPILL_FIELD] = second
            store.upsert(id_arr[part], stored[part], rows)
            done = part.stop

    try:
        try:
            write(half)
            if filing is not None:
                lids[half:] = filing.result()
            summing = worker.submit(_sum_then_rows, tree, tree.leaf_adder(stored, lids, +1)[0])
            write(n)
        except BaseException:
            for job in (filing, summing):
                if job is not None:
                    job.exception()  # wait for it: the tree is not touched while the worker runs
            # the tree counts exactly what the store took
            if summing is None:
                tree.add_to_leaves(stored[:done], lids[:done], +1)
            elif summing.exception() is None:
                tree.add_to_leaves(stored[done:], lids[done:], -1)
            raise
        rows = summing.result()
    finally:
        router.recent.put(id_arr[:done], stored[:done])
        written = set(id_arr[:done].tolist())
        touched = _take_out(tree, [r for r in old if r.id in written])
    stats = _rebalance(router, np.unique(lids).tolist() + touched)
    if old or stats["splits"] or stats["merges"]:
        rows = None  # the tree changed after the rows were made
    return {"added": n, "replaced": len(old), **stats}, rows


def _sum_then_rows(tree, add_sums):
    """Worker side of :func:`add_points`: the tree's sums, then the snapshot rows of the tree as it now is."""
    add_sums()
    return tree.snapshot_rows(one_thread=True)


def delete_points(router, ids) -> dict:
    store, tree = router.store, router.tree
    recs = store.retrieve(check_ids(ids), with_vectors=True)
    store.delete([r.id for r in recs])
    router.recent.drop([r.id for r in recs])
    stats = _rebalance(router, _take_out(tree, recs))
    return {"deleted": len(recs), **stats}


def reconcile(router) -> dict:
    """Recount every leaf from the store; re-file points whose leaf is unknown (or -1, or missing); then
    split / merge the leaves the repair pushed past their bounds. A full scan: ``Router.open`` calls it
    only when :meth:`Router.check` found a divergence."""
    store, tree = router.store, router.tree
    router.recent.clear()  # the store is the truth, vectors included
    ids, vecs, pls = store.all_vectors(payload_fields=["leaf"])
    leaf = np.asarray([p.get("leaf", -1) for p in pls], np.int64)
    unknown = np.flatnonzero(~np.isin(leaf, tree.leaf_ids()))
    if len(unknown):
        new = router.assign(vecs[unknown])
        for lid in np.unique(new):
            store.set_payload(ids[unknown[new == lid]], {"leaf": int(lid)})
        leaf[unknown] = new
    tree.sums[:] = 0
    tree.counts[:] = 0
    tree.add_to_leaves(_as_stored(tree, vecs), leaf, +1)
    stats = _rebalance(router, tree.leaf_ids().tolist())
    return {"points": len(ids), "refiled": int(len(unknown)), **stats}
