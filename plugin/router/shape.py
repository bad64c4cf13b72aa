"""The router's tree shape (``k``, ``l``, ``max_leaf_size``) chosen from a cost model instead of by hand.

A routed query costs routing (centroid distances in the numba kernel, ``dim`` multiply-adds each) plus
engine scoring (points scored, a MatchAny value per probed leaf, a fixed cost per request). Which shape
is cheapest at a recall target depends on how many leaves and centroids that target needs, which only
routing real queries through a real tree tells. So :func:`choose_shape` builds every candidate tree on a
seeded subsample, routes held-out collection points with relaxed search over an ``s2`` sweep, finds per
shape the cheapest ``s2`` reaching the target, and prices it with :func:`cost_model` whose constants
:func:`measure_costs` timed on this machine (cached per machine and dimension).

Scaling from the subsample (``m`` points) to the collection (``n``): the tree keeps its topology (same
``k``, ``l``, leaf count; ``max_leaf_size`` scaled by ``m / n``), so the routed *fraction*, the probed
leaves and the centroid evaluations are taken as measured. Recall is measured against the
``round(k_nn * m / n)`` nearest subsample points: in a uniform subsample they fill about the ball the
``k_nn`` nearest of all ``n`` fill, which is what recall@``k_nn`` on the full collection asks the routed
leaves to cover. How well this predicts is measured in docs/results/shape-fashion-mnist.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from plugin.errors import RouterError
from plugin.router import kernels
from plugin.router.modes import route
from plugin.router.tree import METRICS, build_tree, check_build_params

#: Fewest vectors to sample a tree and held-out queries from.
MIN_POINTS = 400
#: Relaxed ``s2`` values swept per shape (1 - cos scale; the last keeps every node under any metric);
#: the cheapest passing value is then refined by bisection.
S2_GRID = tuple(np.round(np.arange(0.0, 0.1001, 0.005), 4)) + (0.12, 0.14, 0.17, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0, 2.5, 1e30)
BISECT_STEPS = 5
COSTS_VERSION = 2


@dataclass(frozen=True)
class Costs:
    """Per-query cost constants in microseconds, measured by :func:`measure_costs` for one ``dim``."""

    dim: int
    route_fixed_us: float  # one query through the routing call (dispatch, per-query arrays)
    route_madd_us: float  # one multiply-add of a centroid distance (a centroid costs ``dim`` of them)
    engine_fixed_us: float  # one store request (building it in Python, the engine's setup, the hits)
    engine_point_us: float  # one scored point in the routed layout (int8 scan, float rescoring)
    engine_leaf_us: float  # one more leaf id in the MatchAny filter
    router_fixed_us: float = 0.0  # Router.search's own work around routing and the store call
    info: dict = field(default_factory=dict, compare=False)  # provenance: machine, versions, fit


def cost_model(costs: Costs, n: int, dim: int, fraction: float, probed_leaves: float, evaluations: float) -> dict:
    """Predicted per-query time of routed search, by term (µs) and in total (``ms``).

    ``fraction``: share of the ``n`` points the probed leaves hold; ``probed_leaves``: leaves in the
    filter; ``evaluations``: centroid distances the routing computes (:func:`kernels.route_work`).
    """
    if costs.dim != dim:
        raise RouterError(f"the cost constants were measured for {costs.dim}-d vectors, not {dim}-d: "
                          f"measure_costs({dim})")
    terms = {"route_fixed_us": costs.route_fixed_us,
             "route_centroids_us": costs.route_madd_us * dim * evaluations,
             "engine_fixed_us": costs.engine_fixed_us,
             "engine_points_us": costs.engine_point_us * fraction * n,
             "engine_leaves_us": costs.engine_leaf_us * probed_leaves,
             "router_fixed_us": costs.router_fixed_us}
    return {**terms, "ms": sum(terms.values()) / 1e3}


# ---- calibration --------------------------------------------------------------------------------
def _machine_key(dim: int) -> str:
    from importlib.metadata import version

    from plugin.router import router as router_mod

    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    parts = [platform.node(), platform.machine(), cpu, os.cpu_count(), dim, version("numba"),
             version("qdrant-edge-py"), getattr(router_mod, "OVERSAMPLING", None), COSTS_VERSION]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _best_of(fn, repeats: int) -> float:
    """Least CPU seconds (all of this process' threads) ``fn`` took over ``repeats`` runs: on a shared
    machine wall time mostly measures the other processes, CPU time what the call costs."""
    best = math.inf
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _star(dim: int, n_children: int, rng) -> tuple:
    """A root with ``n_children`` leaf children: routing one query evaluates exactly ``n_children``."""
    cents = rng.standard_normal((n_children + 1, dim)).astype(np.float32)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    offsets = np.full(n_children + 2, n_children, np.int64)
    offsets[0] = 0
    children = np.arange(1, n_children + 1, dtype=np.int32)
    leaf_of_node = np.r_[-1, np.arange(n_children)].astype(np.int32)
    return cents, offsets, children, leaf_of_node


def _time_routing(dim: int, rng, repeats: int = 5) -> tuple[float, float, list]:
    """(per-call µs, per-multiply-add µs, the points fitted): the kernel over star trees of growing
    width (64 queries a call, for the slope), and one-query calls (what ``Router.search`` makes)."""
    Q = rng.standard_normal((64, dim)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    rows = []
    for c in (64, 256, 1024, 4096):
        tree = _star(dim, c, rng)
        args = (*tree, 0, kernels.RELAXED, -math.inf, 0.0, 1)
        kernels.route_batch(Q[:1], *args)  # compile / warm caches
        rows.append((c, _best_of(lambda: kernels.route_batch(Q, *args), repeats) / len(Q) * 1e6))
    c, t = np.array(rows).T
    slope, _ = np.polyfit(c, t, 1)
    small = _star(dim, 64, rng)
    args = (*small, 0, kernels.RELAXED, -math.inf, 0.0, 1)

    def one_at_a_time():
        for b in range(len(Q)):
            route(_Flat(*small), Q[b:b + 1], "relaxed", {"s2": 0.0})

    per_call = _best_of(one_at_a_time, repeats) / len(Q) * 1e6
    return max(per_call - 64 * slope, 0.0), slope / dim, rows


@dataclass(frozen=True)
class _Flat:
    """The FlatTree fields ``modes.route`` reads, for a calibration star tree."""

    centroids: np.ndarray
    child_offsets: np.ndarray
    children: np.ndarray
    leaf_of_node: np.ndarray
    metric: int = 0

    @property
    def n_leaves(self) -> int:
        return int((self.leaf_of_node >= 0).sum())


#: Calibration store: (leaves, points each). Small and large leaves, so points and leaves vary apart.
CAL_LEAVES = ((64, 32), (28, 512))
#: Probes timed: (small leaves, large leaves) in the filter.
CAL_PROBES = ((1, 0), (16, 0), (64, 0), (0, 1), (0, 2), (0, 6), (0, 14), (0, 28), (16, 4), (64, 14))


def _time_engine(dim: int, distance: str, vectors, rng, n_queries: int = 20, repeats: int = 3) -> tuple:
    """(fixed µs, per-point µs, per-leaf µs, router µs, rows): filtered exact searches on a scratch
    embedded store in the routed layout (what ``Router.build`` leaves: ``cluster_by``), one query a call,
    as routed search makes them; least squares of time on [1, points, leaves]; then
    :func:`_router_overhead` on the same store."""
    from plugin.router.router import OVERSAMPLING, UNFILED
    from plugin.store.base import Filter
    from plugin.store.edge import EdgeStore

    n_points = sum(a * b for a, b in CAL_LEAVES)
    if vectors is None or len(vectors) < n_points:
        vectors = rng.standard_normal((n_points, dim)).astype(np.float32)
    vectors = np.ascontiguousarray(vectors[:n_points], np.float32)
    leaf = np.concatenate([np.full(size, i0 + j) for i0, (cnt, size) in zip((0, CAL_LEAVES[0][0]), CAL_LEAVES)
                           for j in range(cnt)])
    leaf = leaf[rng.permutation(len(leaf))]
    small, large = np.arange(CAL_LEAVES[0][0]), CAL_LEAVES[0][0] + np.arange(CAL_LEAVES[1][0])
    Q = vectors[rng.choice(len(vectors), n_queries, replace=False)] + 0.01 * rng.standard_normal((n_queries, dim),
                                                                                                  dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hsearch-costs-") as tmp:
        store = EdgeStore(Path(tmp) / "cal", dim=dim, distance=distance)
        try:
            store.upsert(np.arange(len(vectors)), vectors, [{"leaf": int(x)} for x in leaf])
            store.ensure_partition_indexes()
            store.cluster_by("leaf")
            for ns, nl in CAL_PROBES:
                lids = tuple(int(x) for x in np.r_[small[:ns], large[:nl]]) + (UNFILED,)
                f = Filter(leaf_in=lids)
                store.search(Q[0], 10, filter=f, exact=True, oversampling=OVERSAMPLING)  # warm
                per_q = [_best_of(lambda q=q: store.search(q, 10, filter=f, exact=True, oversampling=OVERSAMPLING),
                                  repeats) for q in Q]
                rows.append((ns * CAL_LEAVES[0][1] + nl * CAL_LEAVES[1][1], ns + nl, float(np.median(per_q)) * 1e6))
            overhead = _router_overhead(store, Q, repeats)
        finally:
            store.close()
    pts, lvs, t = np.array(rows).T
    coef, *_ = np.linalg.lstsq(np.c_[np.ones_like(pts), pts, lvs], t, rcond=None)
    fixed, per_point, per_leaf = (float(x) for x in coef)
    return max(fixed, 0.0), max(per_point, 0.0), max(per_leaf, 0.0), overhead, rows


def _router_overhead(store, Q, repeats: int) -> float:
    """µs ``Router.search`` takes beyond its routing call and its store request (the same filter, timed
    alone): preparing the query, resolving the mode, building the filter, the stats. A real router is
    built over the scratch store for it (its leaf payloads replace the designed ones, timed before)."""
    from plugin.router.router import OVERSAMPLING, UNFILED, Router
    from plugin.store.base import Filter

    router = Router.build(store, k=8, l=2, save=False, seed=0)
    diffs = []
    for q in Q:
        lv = router.route(q[None], mode="relaxed", s2=0.0)[0]
        f = Filter(leaf_in=tuple(int(x) for x in lv) + (UNFILED,))
        router.search(q, 10, mode="relaxed", s2=0.0)  # warm
        whole = _best_of(lambda: router.search(q, 10, mode="relaxed", s2=0.0), repeats)
        alone = _best_of(lambda: store.search(q, 10, filter=f, exact=True, oversampling=OVERSAMPLING), repeats)
        routing = _best_of(lambda: router.route(q[None], mode="relaxed", s2=0.0), repeats)
        diffs.append(whole - alone - routing)
    return max(float(np.median(diffs)) * 1e6, 0.0)


def measure_costs(store_or_dim, refresh: bool = False, seed: int = 0) -> Costs:
    """The cost constants of this machine for vectors of a store's dimension (or of ``dim``), timed once
    and cached under ``cache_dir("shape")`` keyed by machine, dimension and library versions.

    Routing: the numba kernel over star trees of 64-4096 centroids (slope per multiply-add) and
    one-query routing calls (intercept). Engine: one-query filtered exact searches on a scratch
    embedded store in the routed layout (int8 copy, rescoring), over 10 probes of 32-16k points and
    1-92 leaves, fitted as fixed + per point + per leaf; then the router's own per-query work (a real
    router over that store, search minus its routing and store calls). A store contributes its dimension, distance
    and up to 16k of its vectors; its own layout before a build is not the one routed search reads.
    Timings are CPU time, best of repeats, so a busy machine inflates them less than wall time would.
    """
    from plugin.config import cache_dir

    store = None if isinstance(store_or_dim, (int, np.integer)) else store_or_dim
    dim = int(store_or_dim if store is None else store.dim)
    if dim < 1:
        raise RouterError(f"measure_costs needs a dimension >= 1, got {dim}")
    path = cache_dir("shape") / f"costs-{_machine_key(dim)}.json"
    if path.is_file() and not refresh:
        d = json.loads(path.read_text())
        return Costs(**d)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    route_fixed, route_madd, route_rows = _time_routing(dim, rng)
    distance, vectors = "cosine", None
    if store is not None:
        distance = store.distance
        need = sum(a * b for a, b in CAL_LEAVES)
        if store.count() >= need:
            vectors = next(iter(store.scroll(batch_size=need, with_vectors=True)), [])
            vectors = np.asarray([r.vector for r in vectors], np.float32)
    fixed, per_point, per_leaf, overhead, engine_rows = _time_engine(dim, distance, vectors, rng)
    costs = Costs(dim, route_fixed, route_madd, fixed, per_point, per_leaf, overhead, info={
        "machine": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 1),
        "route_rows (centroids, us/query)": route_rows,
        "engine_rows (points, leaves, us/query)": engine_rows,
        "engine_vectors": "store sample" if vectors is not None else "random"})
    from plugin.fsutil import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(asdict(costs), indent=1).encode())
    return costs


# ---- choosing -----------------------------------------------------------------------------------
def default_candidates(n: int) -> list[tuple[int, int, None]]:
    """k in {4, 8, 16, 32, 64}, l in {2, 3, 4}, with k^(l-1) leaves between n/2000 and n/20 (mean leaf
    size 20-2000 points)."""
    out = [(k, l, None) for k in (4, 8, 16, 32, 64) for l in (2, 3, 4) if n / 2000 <= k ** (l - 1) <= n / 20]
    return out or [(4, 2, None)]


def _leaf_recall(leaves: list, assign: np.ndarray, truth: np.ndarray, n_ids: int) -> np.ndarray:
    """Per query: the share of its true neighbours (rows of the subsample) that lie in its routed leaves."""
    out = np.empty(len(truth))
    mask = np.zeros(n_ids, bool)
    for b, lv in enumerate(leaves):
        mask[lv] = True
        out[b] = mask[assign[truth[b]]].mean()
        mask[lv] = False
    return out


def _operands(flat, Q, truth, assign, s2: float) -> dict:
    """Recall, fraction, probed leaves and centroid evaluations (means over queries) of relaxed ``s2``."""
    leaves, _ = route(flat, Q, "relaxed", {"s2": float(s2)})
    evals, _ = kernels.route_work_batch(Q, flat.centroids, flat.child_offsets, flat.children, flat.leaf_of_node,
                                        flat.metric, kernels.RELAXED, -math.inf, float(s2))
    points = np.array([flat.leaf_counts[lv].sum() for lv in leaves])
    return {"s2": float(s2), "recall": float(_leaf_recall(leaves, assign, truth, flat.next_leaf_id).mean()),
            "fraction": float(points.mean() / flat.n_points),
            "probed_leaves": float(np.mean([len(lv) for lv in leaves])), "evaluations": float(evals.mean())}


def _cheapest_s2(flat, Q, truth, assign, recall: float, price) -> dict:
    """The cheapest swept ``s2`` whose mean recall reaches ``recall``, refined by bisection below it."""
    rows = [_operands(flat, Q, truth, assign, s) for s in S2_GRID]
    ok = [r for r in rows if r["recall"] >= recall]
    best = min(ok, key=price)
    below = [r for r in rows if r["s2"] < best["s2"]]
    lo = below[-1]["s2"] if below else best["s2"]
    hi = best["s2"]
    for _ in range(BISECT_STEPS if lo < hi else 0):
        mid = (lo + hi) / 2 if hi < 1e29 else lo * 2 + 0.1
        r = _operands(flat, Q, truth, assign, mid)
        if r["recall"] >= recall:
            hi = mid
            if price(r) <= price(best):
                best = r
        else:
            lo = mid
    return best


def choose_shape(vectors, recall: float = 0.95, candidates=None, sample: int = 20000, queries: int = 300,
                 seed: int = 0, metric: str = "cosine", costs: Costs | None = None, k_nn: int = 10,
                 n: int | None = None) -> tuple[tuple[int, int, int | None], dict]:
    """The candidate shape ``(k, l, max_leaf_size)`` with the lowest predicted per-query time at mean
    recall@``k_nn`` >= ``recall`` (relaxed search), and stats with every candidate's prediction.

    ``vectors``: the collection (or a sample of it; ``n`` is then the collection's size). ``queries``
    collection points are held out as queries, up to ``sample`` others build each candidate tree.
    ``candidates``: ``(k, l)`` or ``(k, l, max_leaf_size)`` tuples (default :func:`default_candidates`).
    ``costs``: from :func:`measure_costs` (measured, or read from its cache, when not given).
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.number):
        raise RouterError(f"choose_shape needs a 2-d array of vectors (n, dim), got shape {x.shape}")
    if not (isinstance(recall, (int, float)) and 0 < recall <= 1):
        raise RouterError(f"recall target must be in (0, 1], got {recall}")
    if len(x) < MIN_POINTS:
        raise RouterError(f"choose_shape needs at least {MIN_POINTS} vectors to sample trees and held-out "
                          f"queries from, got {len(x)}: pick k and l by hand for a collection this small")
    if metric not in METRICS:
        raise RouterError(f"unknown metric '{metric}', expected one of {sorted(METRICS)}")
    x = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(x).all():
        raise RouterError("choose_shape: vectors hold NaN or infinite values")
    n_full = int(n or len(x))
    dim = x.shape[1]
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise RouterError("choose_shape: a zero vector has no direction under cosine")
        x = x / norms
    costs = costs or measure_costs(dim)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(x))
    n_q = min(int(queries), len(x) // 4)
    Q, sub = x[pick[:n_q]], x[np.sort(pick[n_q:n_q + int(sample)])]
    m = len(sub)
    k_sub = max(1, round(k_nn * m / n_full))
    truth = _exact_top(sub, Q, metric, k_sub)
    cands = [tuple(c) + (None,) * (3 - len(c)) for c in (candidates or default_candidates(n_full))]
    rows = []
    for k, l, mls in cands:
        row = {"k": int(k), "l": int(l), "max_leaf_size": mls}
        try:
            check_build_params(n_full, k, l, metric, mls)
            mls_sub = None if mls is None else max(1, round(mls * m / n_full))
            t0 = time.perf_counter()
            with _one_faiss_thread():
                tree, assign = build_tree(sub, k, l, metric, mls_sub, None, seed)
            flat = tree.flatten()
            row["build_s"] = round(time.perf_counter() - t0, 2)

            def price(r, flat=flat):
                return cost_model(costs, n_full, dim, r["fraction"], r["probed_leaves"], r["evaluations"])["ms"]

            best = _cheapest_s2(flat, Q, truth, assign, recall, price)
            row.update(leaves=flat.n_leaves, leaf_size=round(n_full / flat.n_leaves, 1), **best,
                       points=round(best["fraction"] * n_full, 1),
                       predicted=cost_model(costs, n_full, dim, best["fraction"], best["probed_leaves"],
                                            best["evaluations"]))
            row["predicted_ms"] = row["predicted"]["ms"]
        except RouterError as e:
            row["error"] = str(e)
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise RouterError("no candidate shape could be built: " + "; ".join(r["error"] for r in rows))
    best = min(ok, key=lambda r: r["predicted_ms"])
    stats = {"n": n_full, "dim": dim, "metric": metric, "sample": m, "queries": n_q, "recall_target": recall,
             "k_nn": k_nn, "k_nn_sample": k_sub, "seed": seed, "costs": asdict(costs), "candidates": rows,
             "chosen": {k: best[k] for k in ("k", "l", "max_leaf_size", "s2", "predicted_ms")},
             "assumption": f"same topology on {m} of {n_full} points: routed fraction, probed leaves and centroid "
                           f"evaluations as measured; recall@{k_nn} of the collection estimated by recall@{k_sub} "
                           "of the subsample"}
    return (best["k"], best["l"], best["max_leaf_size"]), stats


@contextmanager
def _one_faiss_thread():
    """Sample trees are built on one OpenMP thread (small k-means: many times faster than two threads on
    a busy 2-core machine, see ``tree.kmeans``' ``one_thread``); faiss' setting is process-wide, restored."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _exact_top(db: np.ndarray, Q: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Rows of ``db`` nearest each query (numpy brute force), (B, k); ``db``/``Q`` unit rows for cosine."""
    if metric == "l2":
        d = (Q ** 2).sum(1)[:, None] - 2 * Q @ db.T + (db ** 2).sum(1)[None]
    else:
        d = -(Q @ db.T)
    k = min(k, db.shape[0])
    top = np.argpartition(d, k - 1, axis=1)[:, :k]
    return top
