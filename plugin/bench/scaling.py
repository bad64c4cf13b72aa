"""``hsearch bench scaling``: how the router's real routes would spread over a sharded Qdrant (simulated).

No cluster runs here (no Qdrant server, no Docker; qdrant-client's local mode refuses shard keys), so
this replays the real tree's real routes against placements of its leaves on ``S`` shards and counts
what each query would touch. A placement is a (leaves x shards) matrix of point counts ``M`` plus a
membership matrix ``A`` (which shard keys a query must name to reach a leaf); with ``R`` (queries x
leaves, 1 where a query routes to a leaf), ``R @ M`` is the points each shard scores for each query
and ``R @ A > 0`` the shards it touches. Points hashed inside a shard key (Qdrant's own placement
within a key) are spread evenly, i.e. expected counts. Placements:

* ``subtree``: one shard key per top-level subtree (root child); ``S <=`` subtrees: keys packed onto
  shards largest first (LPT greedy); ``S >`` subtrees: each key gets shards in proportion to its size
  (``create_shard_key(..., shards_number=n)``) and a query naming it touches all of them.
* ``balanced``: leaves in depth-first order cut into ``S`` runs of about equal size, each cut moved to
  the highest-level sibling boundary within ``slack`` of a shard's size (siblings stay together as far
  as the balance allows).
* ``random``: each leaf on a random shard (a shard key per shard, leaf -> key by hash).
* ``broadcast``: Qdrant's default auto sharding (points hashed over all shards); every query goes to
  every shard, which scores its share of the routed leaves through the ``leaf`` filter.

Recall of a routed exact search is the share of the exact top-10 whose points lie in the routed leaves
(the engine scores those points exactly), so the routing settings are found without scoring.
:func:`model` turns a record into latency and throughput at 10M-1B points (an extrapolation; see
docs/SCALING.md).

``python -m plugin.bench.scaling md RECORDS.json OUT.md`` rewrites the tables from saved records.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plugin.bench.hkm import read_records  # one JSON-lines reader for every bench's records

SHARD_COUNTS = (4, 8, 16, 32, 64)
PLACEMENTS = ("subtree", "balanced", "random", "broadcast")
#: collection sizes the model extrapolates to
SCALES = (10_000_000, 100_000_000, 1_000_000_000)
#: µs per scored point, ../shared/ENVIRONMENT.md "What qdrant-edge 0.9.0 costs per routed point"
#: (60k x 1280-d, one core): what each engine configuration costs
POINT_US = {"sorted by leaf, exact": 0.42, "is_principal + optimize, exact": 0.18,
            "int8 / TurboQuant + rescore": 0.085}
HEADLINE_POINT_US = 0.18
#: how the routed work grows with the collection (both at fixed leaf size): "fraction" = the routed
#: share of points stays as measured (pessimistic), "leaves" = the number of routed leaves, hence of
#: points scored, stays as measured (optimistic)
BOUNDS = ("fraction", "leaves")
BALANCED_SLACK = 0.1


# ---- the tree as placements see it ---------------------------------------------------------------
@dataclass(frozen=True)
class LeafLayout:
    """The leaves of a tree snapshot: ids (sorted), sizes, ancestor paths, depth-first order."""

    leaf_ids: np.ndarray  # (L,) int64, sorted
    sizes: np.ndarray  # (L,) float64 points per leaf
    paths: np.ndarray  # (L, D) node id of the ancestor at depth 1..D (the leaf itself below a shallow leaf)
    order: np.ndarray  # (L,) leaf indices in depth-first order (every subtree is one run)
    lca_depth: np.ndarray  # (L-1,) depth of the common ancestor of consecutive leaves in that order

    @property
    def top(self) -> np.ndarray:
        """(L,) the top-level subtree (root child) of each leaf."""
        return self.paths[:, 0]


def leaf_layout(flat) -> LeafLayout:
    """A :class:`LeafLayout` of a :class:`~plugin.router.tree.FlatTree` (reachable nodes only)."""
    n = len(flat.leaf_of_node)
    parent = np.full(n, -2, np.int64)
    parent[0] = -1
    frontier = np.array([0])
    while len(frontier):  # breadth-first from the root: unreachable (dead) nodes keep parent -2
        starts, ends = flat.child_offsets[frontier], flat.child_offsets[frontier + 1]
        kids = np.concatenate([flat.children[s:e] for s, e in zip(starts, ends)]).astype(np.int64)
        parent[kids] = np.repeat(frontier, ends - starts)
        frontier = kids
    nodes = np.flatnonzero((flat.leaf_of_node >= 0) & (parent != -2))
    if len(nodes) == 1 and nodes[0] == 0:  # a root-only tree: one leaf, its own subtree
        return LeafLayout(flat.leaf_of_node[nodes].astype(np.int64), flat.leaf_counts[flat.leaf_of_node[nodes]]
                          .astype(np.float64), nodes[:, None], np.zeros(1, np.int64), np.zeros(0, np.int64))
    lids = flat.leaf_of_node[nodes].astype(np.int64)
    sort = np.argsort(lids)
    nodes, lids = nodes[sort], lids[sort]
    depth = flat.depth[nodes].astype(np.int64)
    d_max = int(depth.max())
    paths = np.repeat(nodes[:, None], d_max, axis=1)
    cur = nodes.copy()
    for _ in range(d_max):
        up = flat.depth[cur] >= 1
        paths[np.flatnonzero(up), flat.depth[cur[up]] - 1] = cur[up]
        cur = np.where(up, parent[cur], cur)
    order = np.lexsort(paths.T[::-1])
    eq = paths[order[:-1]] == paths[order[1:]]
    lca = np.cumprod(eq, axis=1).sum(axis=1)
    return LeafLayout(lids, flat.leaf_counts[lids].astype(np.float64), paths, order, lca)


def route_matrix(routes, leaf_ids: np.ndarray) -> np.ndarray:
    """(queries, leaves) float32, 1 where a query's route holds the leaf (``routes``: leaf-id arrays)."""
    lens = np.fromiter((len(r) for r in routes), np.int64, count=len(routes))
    cols = np.searchsorted(leaf_ids, np.concatenate(routes).astype(np.int64)) if lens.sum() else np.zeros(0, int)
    R = np.zeros((len(routes), len(leaf_ids)), np.float32)
    R[np.repeat(np.arange(len(routes)), lens), cols] = 1
    return R


def routed_recall(R: np.ndarray, leaf_ids: np.ndarray, point_leaf: np.ndarray, exact_top: np.ndarray) -> float:
    """Mean recall@k of routed exact search: the share of each exact top-k point lying in a routed leaf.

    ``point_leaf[i]``: leaf id of point ``i``; ``exact_top``: (queries, k) point indices."""
    cols = np.searchsorted(leaf_ids, point_leaf[exact_top])
    return float(np.take_along_axis(R, cols, axis=1).mean())


# ---- placements: (A membership, M points), both (leaves, shards) -------------------------------------
def _one_hot(shard_of_leaf: np.ndarray, sizes: np.ndarray, S: int):
    A = np.zeros((len(sizes), S), bool)
    A[np.arange(len(sizes)), shard_of_leaf] = True
    return A, A * sizes[:, None]


def place_subtree(layout: LeafLayout, S: int, rng=None):
    """One shard key per top-level subtree: LPT-packed onto ``S`` shards, or spread over several."""
    groups, group_of_leaf = np.unique(layout.top, return_inverse=True)
    gsize = np.bincount(group_of_leaf, weights=layout.sizes, minlength=len(groups))
    if S <= len(groups):
        shard_of_group = np.zeros(len(groups), np.int64)
        load = np.zeros(S)
        for g in np.argsort(-gsize, kind="stable"):  # largest first onto the least loaded shard
            s = int(np.argmin(load))
            shard_of_group[g] = s
            load[s] += gsize[g]
        return _one_hot(shard_of_group[group_of_leaf], layout.sizes, S)
    n_shards = np.ones(len(groups), np.int64)
    for _ in range(S - len(groups)):  # next shard to the key with the most points per shard
        n_shards[np.argmax(gsize / n_shards)] += 1
    first = np.concatenate([[0], np.cumsum(n_shards)[:-1]])
    shard = np.arange(S)
    G = (shard[None, :] >= first[:, None]) & (shard[None, :] < (first + n_shards)[:, None])  # (groups, S)
    A = G[group_of_leaf]
    return A, A * (layout.sizes / n_shards[group_of_leaf])[:, None]


def place_balanced(layout: LeafLayout, S: int, rng=None, slack: float = BALANCED_SLACK):
    """Depth-first runs of about ``total / S`` points, cut at the highest-level boundary within ``slack``."""
    L = len(layout.sizes)
    cum = np.cumsum(layout.sizes[layout.order])
    total = cum[-1]
    bounds = cum[:-1]  # position of the boundary after the i-th leaf in depth-first order
    ideal = np.arange(1, S) * total / S
    if L > 1 and S > 1:
        dist = np.abs(bounds[None, :] - ideal[:, None])  # (S-1, L-1)
        ok = dist <= slack * total / S
        rank = np.where(ok, layout.lca_depth[None, :] * (total + 1.0) + dist, np.inf)
        cut = np.where(ok.any(axis=1), rank.argmin(axis=1), dist.argmin(axis=1))
    else:
        cut = np.full(max(S - 1, 0), L, np.int64)
    shard_in_order = np.searchsorted(np.sort(cut), np.arange(L), side="left")
    shard_of_leaf = np.empty(L, np.int64)
    shard_of_leaf[layout.order] = shard_in_order
    return _one_hot(shard_of_leaf, layout.sizes, S)


def place_random(layout: LeafLayout, S: int, rng=None):
    """Each leaf on a uniformly random shard."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return _one_hot(rng.integers(S, size=len(layout.sizes)), layout.sizes, S)


def place_broadcast(layout: LeafLayout, S: int, rng=None):
    """Auto sharding: every shard holds ``1/S`` of every leaf and receives every query."""
    return np.ones((len(layout.sizes), S), bool), np.repeat(layout.sizes[:, None] / S, S, axis=1)


PLACEMENT_FNS = {"subtree": place_subtree, "balanced": place_balanced, "random": place_random,
                 "broadcast": place_broadcast}


# ---- the simulation ------------------------------------------------------------------------------
def _ratio(x: np.ndarray) -> float:
    return float(x.max() / x.mean()) if x.mean() > 0 else 1.0


def placement_record(R: np.ndarray, A: np.ndarray, M: np.ndarray, broadcast: bool) -> dict:
    """What ``S`` shards see for these routes under one placement (per-shard lists feed :func:`model`)."""
    P = R @ M.astype(np.float32)  # (queries, S) points scored
    T = np.ones_like(P, bool) if broadcast else (R @ A.astype(np.float32)) > 0
    touched = T.sum(axis=1)
    top = P.max(axis=1)
    shard_points = M.sum(axis=0)
    req = T.mean(axis=0)  # share of queries each shard receives
    work = P.mean(axis=0)  # points each shard scores per query, on average
    return {"shards_touched_mean": float(touched.mean()), "shards_touched_p95": int(np.percentile(touched, 95, method="higher")),
            "shards_touched_max": int(touched.max()), "touched_frac_mean": float(touched.mean() / P.shape[1]),
            "point_balance": _ratio(shard_points), "request_balance": _ratio(req), "work_balance": _ratio(work),
            "points_per_touched_shard": float(P.sum() / max(T.sum(), 1)),
            "max_shard_points_mean": float(top.mean()), "max_shard_points_p50": float(np.percentile(top, 50)),
            "max_shard_points_p95": float(np.percentile(top, 95)),
            "max_shard_points_p99": float(np.percentile(top, 99)), "points_per_query": float(P.sum(1).mean()),
            "shard_points": shard_points.round(3).tolist(), "shard_request_share": req.round(6).tolist(),
            "shard_points_per_query": work.round(4).tolist()}


def simulate(router, queries, shard_counts=SHARD_COUNTS, placements=PLACEMENTS, mode: str = "relaxed",
             seed: int = 0, **params) -> tuple[list[dict], dict]:
    """Route ``queries`` with the real ``router`` (``mode``, ``params``) and replay the routes on every
    placement and shard count: (one record per (placement, S), stats of the routes themselves)."""
    layout = leaf_layout(router.flat)
    routes = router.route(queries, mode=mode, **params)
    R = route_matrix(routes, layout.leaf_ids)
    ops = R @ layout.sizes.astype(np.float32)
    tops = np.unique(layout.top, return_inverse=True)[1]
    tops_touched = (R @ np.eye(tops.max() + 1, dtype=np.float32)[tops]) > 0
    n_points = float(layout.sizes.sum())
    stats = {"mode": mode, **params, "n_queries": len(R), "n_points": int(n_points), "n_leaves": len(layout.leaf_ids),
             "n_top_subtrees": int(tops.max() + 1), "leaf_size_mean": float(layout.sizes.mean()),
             "leaves_mean": float(R.sum(1).mean()), "leaves_p95": int(np.percentile(R.sum(1), 95, method="higher")),
             "operands_mean": float(ops.mean()), "operands_frac": float(ops.mean() / n_points),
             "top_subtrees_mean": float(tops_touched.sum(1).mean()),
             "top_subtrees_p95": int(np.percentile(tops_touched.sum(1), 95, method="higher"))}
    records = []
    for S in shard_counts:
        for name in placements:
            rng = np.random.default_rng([seed, S])
            A, M = PLACEMENT_FNS[name](layout, S, rng)
            rec = placement_record(R, A, M, broadcast=name == "broadcast")
            records.append({"kind": "placement", "placement": name, "shards": S, **rec})
    return records, stats


def model(rec: dict, n_points_at: int, n_points_measured: int, point_us: float, overhead_ms: float,
          bound: str = "fraction") -> dict:
    """Latency and throughput of one placement record at ``n_points_at`` points (an extrapolation).

    Per touched shard: ``overhead_ms + points x point_us``; a query's latency is its slowest touched
    shard (every touched shard pays the same overhead, so that is the shard scoring the most); each
    shard has one core. ``bound`` says how the scored points grow (:data:`BOUNDS`).
    """
    grow = n_points_at / n_points_measured if bound == "fraction" else 1.0
    us = point_us * grow / 1e3  # ms per measured point
    req, work = np.asarray(rec["shard_request_share"]), np.asarray(rec["shard_points_per_query"])
    shard_ms = req * overhead_ms + work * us  # mean busy ms per query, per shard
    return {"latency_mean_ms": overhead_ms + rec["max_shard_points_mean"] * us,
            "latency_p99_ms": overhead_ms + rec["max_shard_points_p99"] * us,
            "cluster_ms_per_query": float(shard_ms.sum()),
            "qps_hottest_shard": float(1e3 / shard_ms.max()),  # the busiest shard saturates first
            "qps_balanced": float(1e3 * len(shard_ms) / shard_ms.sum())}


# ---- the real run --------------------------------------------------------------------------------
def exact_top(db: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 1000) -> np.ndarray:
    """(queries, k) indices of the exact top-k by inner product (unit vectors: cosine), best first."""
    out = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s:s + chunk] @ db.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, best, axis=1)
    return out


def calibrate_s2(R_of, recall_of, target: float, hi: float = 0.32, tol: float = 1e-3):
    """The smallest relaxed ``s2`` (bisection to ``tol``) whose routed recall@10 reaches ``target``,
    with its recall. ``R_of(s2)`` gives the route matrix, ``recall_of(R)`` its recall."""
    lo = 0.0
    if recall_of(R_of(hi)) < target:
        return hi, recall_of(R_of(hi))
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if recall_of(R_of(mid)) >= target:
            hi = mid
        else:
            lo = mid
    s2 = round(hi, 4)
    return s2, recall_of(R_of(s2))


def fixed_overhead_ms(store, queries, empty_leaf: int, n: int = 300) -> float:
    """Median ms of one exact engine search whose ``leaf`` filter matches no point: what a shard pays
    per request before scoring anything, in process (no network)."""
    from plugin.store.base import Filter

    f = Filter.of(leaf_in=[empty_leaf])
    for q in queries[:20]:
        store.search(q, k=10, filter=f, exact=True)
    times = []
    for q in queries[:n]:
        t = time.perf_counter()
        store.search(q, k=10, filter=f, exact=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def local_mode_sharding() -> dict:
    """What qdrant-client's local mode does with custom sharding (it is all this machine can run)."""
    import warnings

    from qdrant_client import QdrantClient, models

    c = QdrantClient(":memory:")
    out = {}
    try:
        c.create_collection("s", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE),
                            sharding_method=models.ShardingMethod.CUSTOM)
        try:
            c.create_shard_key("s", "top-0")
            out["create_shard_key"] = "accepted"
        except Exception as e:  # noqa: BLE001 - recorded as found
            out["create_shard_key"] = f"{type(e).__name__}: {e}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c.upsert("s", points=[models.PointStruct(id=1, vector=[1.0, 0.0])], shard_key_selector="top-0")
            hits = c.query_points("s", query=[1.0, 0.0], shard_key_selector="top-1").points
        out["query_of_another_shard_key_finds_the_point"] = bool(hits)
    finally:
        c.close()
    return out


def run(dataset: str = "fashion-mnist", encoder_name: str = "mobilenet_v2", device: str = "auto",
        trees=((16, 3),), recalls=(0.95, 0.99), shard_counts=SHARD_COUNTS, n_queries: int = 10000,
        limit: int | None = None, seed: int = 0, log=print) -> list[dict]:
    """Build each tree over the real collection, calibrate s2 per target recall, simulate placements."""
    from plugin.bench.hkm import load_dataset
    from plugin.encoders import create_encoder
    from plugin.router import Router
    from plugin.store.edge import EdgeStore

    enc = create_encoder(encoder_name, device=device)
    dbv, _, qv, _ = load_dataset(dataset, enc, limit, n_queries)
    log(f"# {dataset}: {len(dbv)} database vectors, {len(qv)} queries, {enc.name} {enc.dim}-d")
    t = time.perf_counter()
    top = exact_top(dbv, qv)
    log(f"exact top-10 (numpy): {time.perf_counter() - t:.1f}s")
    workdir = Path(tempfile.mkdtemp(prefix="hsearch-scaling-"))
    store = EdgeStore(workdir / "db", dim=enc.dim)
    store.upsert(np.arange(len(dbv)), dbv, [{"leaf": -1} for _ in range(len(dbv))])
    base = {"dataset": dataset, "encoder": enc.name, "n_db": len(dbv), "n_queries": len(qv)}
    out = [{"kind": "run", **base, "trees": [f"{k}x{l}" for k, l in trees], "recalls": list(recalls),
            "shard_counts": list(shard_counts), "seed": seed, "limit": limit, "scales": list(SCALES),
            "point_us": POINT_US, "local_mode": local_mode_sharding()}]
    try:
        for k, l in trees:
            t = time.perf_counter()
            # the paper's tree (refine=0), as the committed scaling-* results were made before refined leaves
            # became Router.build's default: this keeps `make bench-scaling` reproducing them
            router = Router.build(store, k=k, l=l, seed=seed, save=False, relayout=False, refine=0)
            ids, leaves = _point_leaves(store)
            point_leaf = np.empty(len(dbv), np.int64)
            point_leaf[ids] = leaves
            lids = leaf_layout(router.flat).leaf_ids
            log(f"# tree {k}x{l}: {len(lids)} leaves, build {time.perf_counter() - t:.1f}s")
            if "overhead_ms" not in out[0]:
                out[0]["overhead_ms"] = fixed_overhead_ms(store, qv, empty_leaf=int(lids.max()) + 10**6)
                log(f"engine fixed cost per search (empty filter): {out[0]['overhead_ms']:.3f} ms")

            def R_of(s2):
                return route_matrix(router.route(qv, mode="relaxed", s2=s2), lids)

            def recall_of(R):
                return routed_recall(R, lids, point_leaf, top)

            curve = {s2: recall_of(R_of(s2)) for s2 in (0.02, 0.04, 0.06, 0.08)}
            log(f"recall@10 by s2: " + ", ".join(f"{s}: {r:.4f}" for s, r in curve.items()))
            for target in recalls:
                s2, rec10 = calibrate_s2(R_of, recall_of, target)
                records, stats = simulate(router, qv, shard_counts, mode="relaxed", seed=seed, s2=s2)
                setting = {**base, "k": k, "l": l, "target_recall": target, "s2": s2, "recall_at_10": rec10}
                out.append({"kind": "routes", **setting, **stats,
                            "recall_by_s2": {str(a): b for a, b in curve.items()}})
                log(f"target {target}: s2 {s2} recall@10 {rec10:.4f}, {stats['leaves_mean']:.1f} leaves "
                    f"({stats['operands_frac']:.2%} of points), {stats['top_subtrees_mean']:.2f} top-level subtrees")
                for r in records:
                    out.append({**setting, **r})
                    log(f"  {r['placement']:<9} S={r['shards']:>2}: touched {r['shards_touched_mean']:5.2f} "
                        f"(p95 {r['shards_touched_p95']:.0f}, max {r['shards_touched_max']}), balance points "
                        f"{r['point_balance']:.2f} requests {r['request_balance']:.2f} work {r['work_balance']:.2f}")
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _point_leaves(store) -> tuple[np.ndarray, np.ndarray]:
    ids, leaves = [], []
    for page in store.scroll(with_vectors=False, payload_fields=["leaf"]):
        for r in page:
            ids.append(r.id)
            leaves.append(r.payload["leaf"])
    return np.asarray(ids, np.int64), np.asarray(leaves, np.int64)


# ---- output --------------------------------------------------------------------------------------
def model_rows(records: list[dict], point_us: float = HEADLINE_POINT_US) -> list[dict]:
    """Every (setting, placement, S, scale, bound) through :func:`model` at ``point_us``."""
    run_rec = records[0]
    rows = []
    for r in records:
        if r.get("kind") != "placement":
            continue
        for bound in BOUNDS:
            for n in run_rec["scales"]:
                rows.append({"k": r["k"], "l": r["l"], "target_recall": r["target_recall"], "placement": r["placement"],
                             "shards": r["shards"], "bound": bound, "n_points": n,
                             **model(r, n, r["n_db"], point_us, run_rec["overhead_ms"], bound)})
    return rows


def _n(n: int) -> str:
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def markdown(records: list[dict]) -> str:
    run_rec = records[0]
    routes = [r for r in records if r.get("kind") == "routes"]
    out = [f"### {run_rec['dataset']}: {run_rec['n_db']} database vectors, {run_rec['n_queries']} queries, "
           f"{run_rec['encoder']}", "",
           "Routes (relaxed search; s2 found by bisection for the target recall@10 against exact top-10):", "",
           "| tree | target | s2 | recall@10 | leaves | leaves / query (p95) | points scored | top-level subtrees / "
           "query (p95) |", "|---|---|---|---|---|---|---|---|"]
    for r in routes:
        out.append(f"| {r['k']}x{r['l']} | {r['target_recall']:g} | {r['s2']:g} | {r['recall_at_10']:.4f} | "
                   f"{r['n_leaves']} (mean {r['leaf_size_mean']:.0f} points) | {r['leaves_mean']:.1f} "
                   f"({r['leaves_p95']:.0f}) | {r['operands_frac']:.2%} | {r['top_subtrees_mean']:.2f} "
                   f"({r['top_subtrees_p95']:.0f}) of {r['n_top_subtrees']} |")
    out += ["", "Placements (per query: shards touched; balance = max / mean over shards):", "",
            "| tree | target | placement | S | touched mean | p95 | max | share of shards | points balance | "
            "requests balance | work balance | points / touched shard | busiest shard's points / query (mean, p99) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("kind") == "placement":
            out.append(f"| {r['k']}x{r['l']} | {r['target_recall']:g} | {r['placement']} | {r['shards']} | "
                       f"{r['shards_touched_mean']:.2f} | {r['shards_touched_p95']:.0f} | {r['shards_touched_max']} | "
                       f"{r['touched_frac_mean']:.1%} | {r['point_balance']:.2f} | {r['request_balance']:.2f} | "
                       f"{r['work_balance']:.2f} | {r['points_per_touched_shard']:.0f} | "
                       f"{r['max_shard_points_mean']:.0f}, {r['max_shard_points_p99']:.0f} |")
    rows = model_rows(records)
    out += ["", f"Model (extrapolation, see docs/SCALING.md): {HEADLINE_POINT_US} µs per scored point, "
            f"{run_rec['overhead_ms']:.3f} ms fixed per shard search (measured in process, no network); "
            "p99 latency ms / queries per second (hottest shard, one core per shard):", ""]
    scales = run_rec["scales"]
    tables = {"fraction": (f"Bound `fraction`: the routed share of points stays as measured (pessimistic; scored points "
                           f"grow with the collection).", scales),
              "leaves": ("Bound `leaves`: the routed leaves, hence the points scored, stay as measured (optimistic; "
                         "the same at every size).", scales[:1])}
    for bound, (what, ns) in tables.items():
        head = " | ".join(f"{_n(n)} p99 ms | {_n(n)} q/s" for n in ns) if bound == "fraction" else \
            "mean ms | p99 ms | q/s | q/s if balanced"
        out += [what, "", f"| tree | target | placement | S | {head} |",
                "|---|---|---|---|" + "---|" * (2 * len(ns) if bound == "fraction" else 4)]
        by = {}
        for m in rows:
            if m["bound"] == bound and m["n_points"] in ns:
                by.setdefault((m["k"], m["l"], m["target_recall"], m["placement"], m["shards"]), {})[m["n_points"]] = m
        for (k, l, tr, pl, S), ms in by.items():
            if bound == "fraction":
                cells = " | ".join(f"{ms[n]['latency_p99_ms']:.3g} | {ms[n]['qps_hottest_shard']:.3g}" for n in ns)
            else:
                m = ms[ns[0]]
                cells = (f"{m['latency_mean_ms']:.3g} | {m['latency_p99_ms']:.3g} | {m['qps_hottest_shard']:.3g} | "
                         f"{m['qps_balanced']:.3g}")
            out.append(f"| {k}x{l} | {tr:g} | {pl} | {S} | {cells} |")
        out.append("")
    return "\n".join(out)


PLACEMENT_STYLE = {"subtree": ("C0", "o"), "balanced": ("C1", "s"), "random": ("C2", "^"), "broadcast": ("C3", "x")}


def plot(records: list[dict], path: str) -> None:
    """Shards touched, work balance and modelled throughput at 1B points vs shard count, per placement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_rec = records[0]
    recs = [r for r in records if r.get("kind") == "placement"]
    trees = sorted({(r["k"], r["l"]) for r in recs}, key=lambda t: (-t[0], t[1]))
    targets = sorted({r["target_recall"] for r in recs})
    k, l = trees[0]
    n_big = run_rec["scales"][-1]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    for pl, (color, marker) in PLACEMENT_STYLE.items():
        for ti, target in enumerate(targets):
            rs = sorted((r for r in recs if r["placement"] == pl and (r["k"], r["l"]) == (k, l)
                         and r["target_recall"] == target), key=lambda r: r["shards"])
            if not rs:
                continue
            S = [r["shards"] for r in rs]
            ls = "-" if ti == 0 else "--"
            lab = f"{pl}, recall {target:g}"
            axes[0].plot(S, [r["shards_touched_mean"] for r in rs], ls, color=color, marker=marker, label=lab)
            axes[1].plot(S, [r["work_balance"] for r in rs], ls, color=color, marker=marker, label=lab)
            for ax, bound in ((axes[2], "fraction"), (axes[3], "leaves")):
                ax.plot(S, [model(r, n_big, r["n_db"], HEADLINE_POINT_US, run_rec["overhead_ms"], bound)
                            ["qps_hottest_shard"] for r in rs], ls, color=color, marker=marker, label=lab)
    titles = ["mean shards touched per query", "work balance (busiest / mean shard)",
              f"model at {_n(n_big)}: q/s, routed share as measured", "model, any size: q/s, routed leaves as at 60k"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["shards"] for r in recs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("shards S")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log", base=2)
    axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=6.5)
    fig.suptitle(f"{run_rec['dataset']} {run_rec['n_db']} points, tree {k}x{l}, {run_rec['n_queries']} real routes "
                 f"(relaxed search), placements simulated; model {HEADLINE_POINT_US} µs/point, "
                 f"{run_rec['overhead_ms']:.3f} ms per shard search", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    from plugin.errors import HSearchError

    try:
        trees = tuple(tuple(int(x) for x in t.lower().split("x")) for t in args.tree.split(","))
        recalls = tuple(float(x) for x in args.recall.split(","))
        shards = tuple(int(x) for x in args.shards.split(","))
    except ValueError:
        raise HSearchError(f"--tree takes KxL[,KxL], --recall numbers, --shards integers; got "
                           f"{args.tree!r}, {args.recall!r}, {args.shards!r}") from None
    if any(not 0 < r <= 1 for r in recalls) or any(s < 1 for s in shards):
        raise HSearchError(f"--recall values must lie in (0, 1] and --shards be >= 1; got {recalls}, {shards}")
    records = run(args.dataset, args.encoder, args.device, trees, recalls, shards, args.queries, args.limit, args.seed)
    for path, write in ((args.json, lambda p: Path(p).write_text("\n".join(json.dumps(r) for r in records) + "\n")),
                        (args.md, lambda p: Path(p).write_text(markdown(records))),
                        (args.plot, lambda p: plot(records, p))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write(path)
    return 0


if __name__ == "__main__":  # python -m plugin.bench.scaling md RECORDS.json OUT.md
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "md":
        raise SystemExit("usage: python -m plugin.bench.scaling md RECORDS.json OUT.md")
    Path(sys.argv[3]).write_text(markdown(read_records(sys.argv[2])))
