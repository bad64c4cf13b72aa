"""Search mode ``target``: score, per query, just enough of the tree for a mean recall@10 target.

    router.calibrate()                                   # once per build (or `hsearch calibrate`)
    hits = router.search(vec, mode="target", recall=0.95)

Why per query: a fixed relaxed ``s2`` spends the same distance margin on every query, but queries
differ. Some sit deep inside one cluster and find their ten neighbours in the first leaf, others sit
between clusters and need many. Quake (OSDI 2025) estimates each query's recall from its distances to
the partition centroids; Li et al. (SIGMOD 2020) learn per query how many partitions to search with
gradient-boosted trees over features such as the distances to the nearest centroids. This mode follows
both, and makes one choice of its own:

1. **Candidates, ranked.** The probe descent (mode ``probe``'s kernel, on the int8 codes of the
   centroids) with a generous band ``s2_wide`` on internal nodes (0.07 by default, probe's setting for
   recall 0.99), keeping the ``max_candidates`` (128) nearest leaves met, nearest first, with their
   distances: one kernel call. (Format 1 routed relaxed at s2 0.12 on the float centroids and ranked
   the leaves in a second pass over them: two passes where this is one. The per-query routing time of
   this mode is ``route_ms`` in ``docs/results/target-fashion-mnist.json``.)
2. **The value of each leaf.** A gradient-boosted regressor (scikit-learn's
   ``GradientBoostingRegressor``) predicts for every (query, candidate leaf) the share of the query's
   true top-10 that lies in that leaf. Its features are known before anything is scored: the leaf's rank,
   its distance, the gaps to the best leaf and between the best few, the leaf's size, how many points
   lie in better-ranked leaves, and how many candidates there are. Predicting per leaf instead of one
   prefix length per query (Li et al.) lets the choice weigh a leaf's size: **a leaf is scored when its
   predicted recall per scored point is at least λ** (the best leaf always is). For known gains this is
   the optimal fractional knapsack for "fewest points at a given mean recall", and it may skip a large,
   unpromising leaf while scoring a small one ranked after it.
3. **One global correction.** λ is the only knob. On a calibration split (queries the regressor did not
   see), the mean recall of the selection is a step function of λ, computed offline: a routed exact
   search finds a true neighbour exactly when its leaf is scored, so no store search is needed. The curve
   (λ, mean recall, mean points) is stored; a target reads λ off it by interpolation.

The trees are exported to arrays (public ``tree_`` attributes; ``init="zero"``, so the prediction is
the sum of the trees) and evaluated by a numba kernel: no pickle on disk and no scikit-learn call per
query. Each tree is padded to a complete tree of the forest's depth and stored heap-ordered (node
``i``'s children at ``2i+1``, ``2i+2``), so a prediction is exactly ``depth`` steps per tree with the
branch on the feature turned into index arithmetic: scoring every candidate of a query is most of
this mode's routing, where the node-chasing form walked each candidate's trees as a chain of
dependent loads.

Calibration queries are points sampled from the collection (each excluded from its own ground
truth) or vectors the caller gives. The calibration lives in ``router.target.npz`` beside the router
state (atomic write), keyed by ``router_id``: a rebuild invalidates it, and so does a collection that
grew or shrank by more than :data:`MAX_DRIFT` since. Either, or no calibration at all, is a clear error
naming ``hsearch calibrate``; calibrating lazily inside a search would stall it for a minute.
``python -m plugin.bench.target`` (:func:`evaluate_target`) measures it against relaxed search at equal
recall and writes ``docs/results/target-fashion-mnist.json``.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from plugin.errors import RouterError
from plugin.fsutil import atomic_write_bytes
from plugin.router import kernels
from plugin.router.modes import register_mode

CALIBRATION_FILE = "router.target.npz"
FORMAT_VERSION = 2  # 2: probe-kernel candidates, heap-ordered trees
#: a calibration is refused once the collection has grown or shrunk by more than this share since
MAX_DRIFT = 0.10
TOP = 10  # recall@10
N_FEATURES = 10


def calibration_path(store) -> Path:
    return Path(store.state_dir()) / CALIBRATION_FILE


# ---- candidates and features ------------------------------------------------------------------
def ranked_candidates(flat, Q: np.ndarray, s2_wide: float, max_candidates: int):
    """Candidate leaves per query in rank order: (leaf ids (B, M), distances (B, M), sizes (B, M), counts (B,)),
    padded with -1 / inf / 0: the probe descent within ``s2_wide`` on internal nodes, the
    ``max_candidates`` nearest leaves met."""
    leaves, dist, counts = kernels.probe_ranked_batch(Q, *flat.rows(quantized=True), flat.child_offsets,
                                                      flat.children, flat.leaf_of_node, flat.metric,
                                                      int(max_candidates), float(s2_wide))
    sizes = np.where(leaves >= 0, flat.leaf_counts[np.maximum(leaves, 0)], 0).astype(np.float64)
    return leaves, dist, sizes, counts


@numba.njit(cache=True)
def _candidate_features(dist, sizes, n, j, before, x):
    """Fill ``x`` with candidate ``j``'s features (one query's rank-ordered ``dist`` / ``sizes``, ``n`` of
    them; ``before``: points in better-ranked candidates)."""
    d0 = dist[0]
    x[0] = j
    x[1] = dist[j]
    x[2] = d0
    x[3] = dist[j] - d0
    x[4] = (dist[j] - d0) / (abs(d0) + 1e-6)
    x[5] = np.log1p(sizes[j])
    x[6] = np.log1p(before)
    x[7] = dist[min(1, n - 1)] - d0
    x[8] = dist[min(4, n - 1)] - d0
    x[9] = n


@numba.njit(cache=True)
def leaf_features(dist, sizes, counts):
    """(B, M, N_FEATURES) features of every candidate, from its rank-ordered distances and sizes only."""
    B, M = dist.shape
    X = np.zeros((B, M, N_FEATURES))
    for b in range(B):
        before = 0.0
        for j in range(counts[b]):
            _candidate_features(dist[b], sizes[b], counts[b], j, before, X[b, j])
            before += sizes[b, j]
    return X


# ---- the regressor as heap-ordered arrays -----------------------------------------------------
def forest_arrays(model) -> dict:
    """A fitted ``GradientBoostingRegressor(init="zero")`` as complete heap-ordered trees of the forest's
    depth D: ``feature`` / ``threshold`` (T, 2^D - 1) for the internal slots, ``value`` (T, 2^D) for the
    leaves (scaled by the learning rate), for :func:`forest_predict`. A leaf of scikit-learn's tree above
    depth D fills its whole subtree: its slots test feature 0 against +inf (always left) and every leaf
    slot under it carries its value."""
    ests = [est.tree_ for est in model.estimators_[:, 0]]
    depth = max([t.max_depth for t in ests] + [0])
    n_inner = 2 ** depth - 1
    feature = np.zeros((len(ests), n_inner), np.int64)
    threshold = np.full((len(ests), n_inner), np.inf)
    value = np.zeros((len(ests), n_inner + 1))
    for i, t in enumerate(ests):
        stack = [(0, 0)]  # (scikit-learn node, heap slot)
        while stack:
            node, slot = stack.pop()
            if slot >= n_inner:
                value[i, slot - n_inner] = t.value[node, 0, 0] * model.learning_rate
            elif t.children_left[node] < 0:  # a leaf above depth D: both children are the same leaf
                stack += [(node, 2 * slot + 1), (node, 2 * slot + 2)]
            else:
                feature[i, slot], threshold[i, slot] = t.feature[node], t.threshold[node]
                stack += [(t.children_left[node], 2 * slot + 1), (t.children_right[node], 2 * slot + 2)]
    return {"feature": feature, "threshold": threshold, "value": value}


@numba.njit(cache=True)
def _tree_sum(x, feature, threshold, value):
    n_trees, n_inner = feature.shape
    acc = 0.0
    for t in range(n_trees):
        node = 0
        while node < n_inner:  # exactly D steps; right when x > t (scikit-learn: left if x <= t)
            node = 2 * node + 1 + np.int64(x[feature[t, node]] > threshold[t, node])
        acc += value[t, node - n_inner]
    return acc


@numba.njit(cache=True)
def forest_predict(X, feature, threshold, value):
    """Sum of the trees' outputs for every row of ``X`` (n, F)."""
    out = np.zeros(X.shape[0])
    for i in range(X.shape[0]):
        out[i] = _tree_sum(X[i], feature, threshold, value)
    return out


@numba.njit(cache=True)
def select_by_value(gain, sizes, counts, lam):
    """Mask (B, M): candidates whose predicted recall per point is >= ``lam``; rank 0 always."""
    B, M = gain.shape
    keep = np.zeros((B, M), np.bool_)
    for b in range(B):
        for j in range(counts[b]):
            keep[b, j] = j == 0 or gain[b, j] >= lam * max(sizes[b, j], 1.0)
    return keep


@numba.njit(cache=True)
def choose_leaves(dist, sizes, counts, feature, threshold, value, lam):
    """The online rule in one pass: features, predicted gain, selection. Returns (keep (B, M), predicted
    recall of the kept candidates (B,)); the same as leaf_features + forest_predict + select_by_value.
    Per query the trees run over all its candidates at once, tree by tree: one tree's walks for different
    candidates do not depend on each other, so the CPU overlaps them, where one candidate's walk through
    all trees is a chain of dependent loads."""
    B, M = dist.shape
    n_trees, n_inner = feature.shape
    keep = np.zeros((B, M), np.bool_)
    predicted = np.zeros(B)
    X = np.empty((M, N_FEATURES))
    g = np.empty(M)
    for b in range(B):
        n = counts[b]
        before = 0.0
        for j in range(n):
            _candidate_features(dist[b], sizes[b], n, j, before, X[j])
            before += sizes[b, j]
            g[j] = 0.0
        for t in range(n_trees):
            for j in range(n):
                node = 0
                while node < n_inner:
                    node = 2 * node + 1 + np.int64(X[j, feature[t, node]] > threshold[t, node])
                g[j] += value[t, node - n_inner]
        for j in range(n):
            gj = max(g[j], 0.0)
            if j == 0 or gj >= lam * max(sizes[b, j], 1.0):
                keep[b, j] = True
                predicted[b] += gj
    return keep, np.minimum(predicted, 1.0)


# ---- calibration ------------------------------------------------------------------------------
@dataclass
class Calibration:
    router_id: str
    n_points: int
    s2_wide: float
    max_candidates: int
    forest: dict
    lam: np.ndarray  # decreasing λ grid
    recall: np.ndarray  # mean recall on the calibration split at each λ (non-decreasing)
    points: np.ndarray  # mean points scored there
    stats: dict = field(default_factory=dict)
    _lams: dict = field(default_factory=dict, repr=False, compare=False)  # target -> λ, read once per target

    @property
    def max_recall(self) -> float:
        return float(self.recall[-1])

    def lam_for(self, target: float) -> float:
        """λ whose calibration-split mean recall is ``target`` (interpolated in log λ)."""
        lam = self._lams.get(target)
        if lam is None:
            lam = self._lams[target] = self._lam_for(target)
        return lam

    def _lam_for(self, target: float) -> float:
        if not 0.0 < target <= 1.0 or not math.isfinite(target):
            raise RouterError(f"recall target must be in (0, 1], got {target}")
        if target > self.max_recall + 1e-12:
            raise RouterError(
                f"recall target {target} is above what this router was calibrated for ({self.max_recall:.4f}, "
                f"every candidate leaf at s2_wide={self.s2_wide}, max_candidates={self.max_candidates}): "
                "ask for less, or recalibrate with a larger s2_wide / max_candidates")
        if target <= self.recall[0]:
            return float(self.lam[0])
        i = int(np.searchsorted(self.recall, target))  # recall[i-1] < target <= recall[i]
        r0, r1 = self.recall[i - 1], self.recall[i]
        w = 1.0 if r1 == r0 else (target - r0) / (r1 - r0)
        return float(np.exp((1 - w) * np.log(self.lam[i - 1]) + w * np.log(self.lam[i])))

    def predict(self, X: np.ndarray) -> np.ndarray:
        f = self.forest
        return np.maximum(forest_predict(X, f["feature"], f["threshold"], f["value"]), 0.0)

    def plan(self, flat, Q: np.ndarray, target: float):
        """Leaf ids to score per query and the predicted recall of each choice."""
        lam = self.lam_for(target)
        leaves, dist, sizes, counts = ranked_candidates(flat, Q, self.s2_wide, self.max_candidates)
        f = self.forest
        keep, predicted = choose_leaves(dist, sizes, counts, f["feature"], f["threshold"], f["value"], lam)
        return [leaves[b][keep[b]] for b in range(len(Q))], predicted

    def _gain(self, dist, sizes, counts) -> np.ndarray:
        B, M = dist.shape
        X = leaf_features(dist, sizes, counts)
        valid = np.arange(M)[None, :] < counts[:, None]
        gain = np.zeros((B, M))
        gain[valid] = self.predict(X[valid])
        return gain


def exact_top(vecs: np.ndarray, Q: np.ndarray, metric: str, k: int = TOP, exclude=None) -> np.ndarray:
    """Row indices of each query's exact top-``k`` among ``vecs`` (``exclude[b]``: a row to skip)."""
    out = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), 256):
        q = Q[s:s + 256]
        if metric == "l2":
            sc = 2 * q @ vecs.T - (vecs * vecs).sum(1)[None]
        else:
            sc = q @ vecs.T
        if exclude is not None:
            sc[np.arange(len(q)), exclude[s:s + 256]] = -np.inf
        part = np.argpartition(-sc, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, 1), axis=1)
        out[s:s + 256] = np.take_along_axis(part, order, 1)
    return out


def _leaf_map(router):
    ids, vecs, pls = router.store.all_vectors(payload_fields=["leaf"])
    leaf = np.asarray([int(p.get("leaf", -1)) for p in pls], np.int64)
    return ids, vecs, leaf


def _shares(gt_leaf: np.ndarray, leaves: np.ndarray, counts) -> tuple[np.ndarray, np.ndarray]:
    """(share of each query's top-10 in each candidate (B, M), share in unfiled points (B,))."""
    y = (gt_leaf[:, None, :] == leaves[:, :, None]).sum(2) / gt_leaf.shape[1]
    y[np.arange(leaves.shape[1])[None, :] >= np.asarray(counts)[:, None]] = 0
    return y, (gt_leaf < 0).mean(1)


S2_WIDE, MAX_CANDIDATES = 0.07, 128  # the candidates' descent band and count (see the module docstring)


def calibrate(router, queries=None, n_queries: int = 2000, s2_wide: float = S2_WIDE,
              max_candidates: int = MAX_CANDIDATES, fit_share: float = 0.6, n_estimators: int = 60,
              max_depth: int = 4, seed: int = 0, save: bool = True) -> Calibration:
    """Fit the per-leaf recall regressor and the λ curve for mode ``target``; save it beside the router.

    ``queries``: calibration vectors (e.g. held-out images); None samples ``n_queries`` points of the
    collection itself, each excluded from its own ground truth. ``fit_share`` of them train the
    regressor, the rest give the λ curve. ``s2_wide`` / ``max_candidates`` bound the candidates, and so
    the highest recall that can be asked for.
    """
    from sklearn.ensemble import GradientBoostingRegressor

    if not 0 < fit_share < 1:
        raise RouterError(f"fit_share must be in (0, 1), got {fit_share}")
    if not (math.isfinite(s2_wide) and s2_wide >= 0) or max_candidates < 1:
        raise RouterError(f"s2_wide must be >= 0 and max_candidates >= 1, got {s2_wide}, {max_candidates}")
    t0 = time.perf_counter()
    ids, vecs, leaf = _leaf_map(router)
    metric = router.tree.metric
    if metric == "cosine":
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    if queries is None:
        if len(ids) < 2 * TOP:
            raise RouterError(f"calibration needs at least {2 * TOP} points, the collection holds {len(ids)}")
        rows = rng.choice(len(ids), size=min(n_queries, len(ids)), replace=False)
        Q, exclude = np.ascontiguousarray(vecs[rows], np.float32), rows
    else:
        Q, exclude = router.prepare_queries(queries), None
    if len(Q) < 20:
        raise RouterError(f"calibration needs at least 20 queries, got {len(Q)}")
    gt_leaf = leaf[exact_top(vecs, Q, metric, TOP, exclude)]
    t_gt = time.perf_counter()
    flat = router.flat
    leaves, dist, sizes, counts = ranked_candidates(flat, Q, s2_wide, max_candidates)
    y, unfiled = _shares(gt_leaf, leaves, counts)
    X = leaf_features(dist, sizes, counts)
    valid = np.arange(leaves.shape[1])[None, :] < counts[:, None]
    order = rng.permutation(len(Q))
    n_fit = int(round(fit_share * len(Q)))
    fit, cal = order[:n_fit], order[n_fit:]
    model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=0.1,
                                      subsample=0.7, init="zero", random_state=seed)
    model.fit(X[fit][valid[fit]], y[fit][valid[fit]])
    t_fit = time.perf_counter()
    c = Calibration(router.meta["router_id"], int(flat.n_points), float(s2_wide), int(max_candidates),
                    forest_arrays(model), np.zeros(0), np.zeros(0), np.zeros(0))
    gain = c._gain(dist[cal], sizes[cal], counts[cal])
    c.lam, c.recall, c.points = _curve(gain, sizes[cal], counts[cal], y[cal], unfiled[cal])
    c.stats = {"queries": len(Q), "fit_queries": len(fit), "curve_queries": len(cal),
               "source": "collection sample" if queries is None else "given", "mean_candidates":
               float(counts.mean()), "max_recall": c.max_recall, "ground_truth_s": round(t_gt - t0, 2),
               "fit_s": round(t_fit - t_gt, 2), "total_s": round(time.perf_counter() - t0, 2),
               "n_estimators": n_estimators, "max_depth": max_depth, "seed": seed}
    if save:
        save_calibration(router.store, c)
    _CACHE.pop(router, None)
    return c


def _curve(gain, sizes, counts, y, unfiled, n_grid: int = 600):
    """(λ grid, decreasing; mean recall; mean points) of the selection rule on labelled queries."""
    value = gain / np.maximum(sizes, 1.0)
    pos = value[(value > 0) & (np.arange(gain.shape[1])[None, :] < counts[:, None])]
    hi = float(pos.max()) * 1.01 if len(pos) else 1.0
    lo = float(pos.min()) if len(pos) else 1e-12
    lam = np.concatenate([np.geomspace(hi, max(lo, hi * 1e-12), n_grid), [0.0]])
    recall, points = np.empty(len(lam)), np.empty(len(lam))
    for i, l in enumerate(lam):
        keep = select_by_value(gain, sizes, counts, l)
        recall[i] = ((y * keep).sum(1) + unfiled).mean()
        points[i] = (sizes * keep).sum(1).mean()
    lam[-1] = lam[-2] * 1e-3  # λ = 0 (every candidate) as a positive number for log interpolation
    return lam, np.maximum.accumulate(recall), points


def save_calibration(store, c: Calibration) -> None:
    meta = {"format": FORMAT_VERSION, "router_id": c.router_id, "n_points": c.n_points, "s2_wide": c.s2_wide,
            "max_candidates": c.max_candidates, "stats": c.stats}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.asarray(json.dumps(meta)), lam=c.lam, recall=c.recall, points=c.points,
             **{f"forest_{k}": v for k, v in c.forest.items()})
    atomic_write_bytes(calibration_path(store), buf.getvalue())


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # router -> (path, file mtime, Calibration)


def load_calibration(router) -> Calibration:
    """The router's calibration, refused when missing, unreadable, from another build, or stale. Read
    once per router and file version: each search costs one ``stat`` of the file."""
    hit = _CACHE.get(router)
    path = hit[0] if hit is not None else str(calibration_path(router.store))  # a Path costs µs per search
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        raise RouterError(f"mode 'target' needs a recall calibration of this router: {_hint(router)}") from None
    if hit is not None and hit[1] == mtime:
        c = hit[2]
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                forest = {k[len("forest_"):]: z[k] for k in z.files if k.startswith("forest_")}
                c = Calibration(meta["router_id"], int(meta["n_points"]), float(meta["s2_wide"]),
                                int(meta["max_candidates"]), forest, z["lam"], z["recall"], z["points"],
                                meta.get("stats", {}))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')}, expected {FORMAT_VERSION}")
        except Exception as e:
            raise RouterError(f"recall calibration {path} is unreadable ({e}): {_hint(router)}") from None
        _CACHE[router] = (path, mtime, c)
    if c.router_id != router.meta.get("router_id"):
        raise RouterError(f"the recall calibration belongs to an earlier build of this router: {_hint(router)}")
    n = router.flat.n_points
    if abs(n - c.n_points) > MAX_DRIFT * max(c.n_points, 1):
        raise RouterError(f"the collection changed from {c.n_points} to {n} points since the recall calibration: "
                          f"{_hint(router)}")
    return c


def _hint(router) -> str:
    return f"run `hsearch calibrate --collection {router.store.name}` (router.calibrate())"


@register_mode("target", recall=0.95)
def target(ctx, Q, recall=0.95):
    """Per query, the leaves worth scoring for a mean recall@10 target (calibrated: `hsearch calibrate`)."""
    from plugin.router.modes import Plan, Probe

    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < recall <= 1.0 \
            or not math.isfinite(recall):
        raise RouterError(f"mode 'target': recall must be a number in (0, 1], got {recall!r}")
    if ctx.router is None:
        raise RouterError("mode 'target' needs the router's calibration: use router.search, not route()")
    c = load_calibration(ctx.router)
    chosen, predicted = c.plan(ctx.flat, Q, float(recall))
    return Plan([Probe(b, leaves=chosen[b]) for b in range(len(Q))],
                info=[{"predicted_recall": float(p)} for p in predicted])


# ---- measurement ------------------------------------------------------------------------------
def _recall(found_ids: list, truth: np.ndarray) -> np.ndarray:
    return np.asarray([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found_ids, truth)])


def evaluate_target(router, train_queries, test_queries, exact_top10=None, targets=(0.9, 0.95, 0.99),
                    **calibrate_params) -> dict:
    """Calibrate on ``train_queries`` (saved, as :func:`calibrate` does), then per target: held-out mean
    recall@10 and points scored of mode ``target``, beside the cheapest relaxed ``s2`` reaching the same
    mean recall (bisection on ``s2``, routing only; a routed exact search finds a true neighbour exactly
    when its leaf is scored), then measured by a real search at that ``s2``.

    ``exact_top10``: the test queries' exact top-10 point ids (None: computed from the stored vectors).
    """
    Qt = router.prepare_queries(test_queries)
    ids, vecs, leaf = _leaf_map(router)
    if exact_top10 is None:
        v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12) \
            if router.tree.metric == "cosine" else vecs
        exact_top10 = ids[exact_top(v, Qt, router.tree.metric, TOP)]
    truth = np.asarray(exact_top10)[:, :TOP]
    leaf_of_id = dict(zip(ids.tolist(), leaf.tolist()))
    truth_leaf = np.vectorize(lambda i: leaf_of_id.get(int(i), -2))(truth)
    cal = calibrate(router, train_queries, **calibrate_params)
    n = router.flat.n_points

    def routed_recall(s2):
        routes = router.route(Qt, mode="relaxed", s2=s2)
        rec = np.mean([np.isin(t, r).mean() + (t == -1).mean() for t, r in zip(truth_leaf, routes)])
        return rec

    def searched(mode, **p):
        t = time.perf_counter()
        res = router.search_batch(Qt, k=TOP, mode=mode, **p)
        wall = (time.perf_counter() - t) * 1e3 / len(Qt)
        rec = _recall([[h.id for h in r] for r in res], truth)
        ops = np.asarray([r.stats["operands"] for r in res], float)
        return rec, ops, wall, res

    rows = []
    for tgt in targets:
        rec, ops, wall, res = searched("target", recall=tgt)
        achieved = float(rec.mean())
        lo, hi = 0.0, cal.s2_wide
        while routed_recall(hi) < achieved and hi < 4.0:
            hi *= 2
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if routed_recall(mid) >= achieved else (mid, hi)
        r_rec, r_ops, r_wall, _ = searched("relaxed", s2=hi)
        rows.append({
            "target": tgt, "recall": round(achieved, 4),
            "recall_se": round(float(rec.std(ddof=1) / math.sqrt(len(rec))), 4),
            "off_target": round(achieved - tgt, 4),
            "points": round(float(ops.mean()), 1), "points_frac": round(float(ops.mean()) / n, 5),
            "points_p90": float(np.percentile(ops, 90)),
            "predicted_recall": round(float(np.mean([r.stats["predicted_recall"] for r in res])), 4),
            "route_ms": round(float(np.mean([r.stats["route_ms"] for r in res])), 4), "wall_ms": round(wall, 3),
            "relaxed_s2": round(hi, 5), "relaxed_recall": round(float(r_rec.mean()), 4),
            "relaxed_points": round(float(r_ops.mean()), 1), "relaxed_wall_ms": round(r_wall, 3),
            "points_saved": round(1 - float(ops.mean()) / float(r_ops.mean()), 4)})
    return {"targets": rows, "stats": {"calibration": cal.stats, "s2_wide": cal.s2_wide,
                                       "max_candidates": cal.max_candidates, "test_queries": len(Qt),
                                       "points": int(n), "leaves": int(router.flat.n_leaves),
                                       "router": {k: router.meta[k] for k in ("k", "l", "metric")}}}
