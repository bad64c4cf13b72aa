"""``Router``: the hierarchical k-means router in front of a store (hkm-tree-retrieval).

    router = Router.build(store, k=3, l=4)          # offline: tree over the collection, leaf payloads
    hits = router.search(vec, k=10, mode="auto")    # online: kernels pick leaves, the store scores them
    hits = router.search(vec, within="n02084071")   # only points under a WordNet synset (dogs)
    hits.stats -> {"operands": ..., "leaves": [...], "ms": ...}
    router.add(ids, vectors, payloads)              # incremental: route, upsert, split/merge locally

The store scores only the chosen leaves with an exact search filtered on the ``leaf`` payload index
(the engine's filtered HNSW loses recall on a filter unrelated to its graph). The store's ``leaf``
payloads are the truth; the tree is derived, saved atomically beside the collection and checked
against the store (one facet of ``leaf``) whenever it is opened.

Concurrency: routing reads one immutable :class:`~plugin.router.tree.FlatTree` snapshot, swapped in
whole after every change, so it needs no lock. Searches share a readers-writer lock while the store
scores; add / delete / reconcile take it alone, so a search never pairs one moment's routing with
another moment's payloads, and searches never wait for each other.
"""
from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from plugin.errors import BadVectorError, EmptyCollectionError, RouterError
from plugin.router import maintenance
from plugin.router.kernels import nearest_leaf_batch, probe_batch, probe_many, unit_rows
from plugin.router.modes import BUILTIN_MODULES, ModeContext, as_plan, get_mode, leaf_routes, route
from plugin.router.parts import RemoteRoute, RoutedParts, leaf_lists, route_rows
from plugin.router.recent import RecentVectors
from plugin.router.rwlock import RWLock
from plugin.router.spill import write_spills
from plugin.router.state import commit_staged, load_committed, save_state, staged_path, state_path
from plugin.router.tree import Tree, build_tree, check_build_params
from plugin.store.base import Filter, check_vectors

STORE_METRIC = {"cosine": "cosine", "euclid": "l2", "dot": "dot"}
#: Leaf id every point carries before a router files it (ingested before a build, or upserted around
#: the router). Routed searches always score these too, so such points are never skipped silently.
UNFILED = -1
#: Facet page size when comparing per-leaf counts with the store (more than any tree has leaves).
FACET_LIMIT = 1_000_000
#: Routed probes score the int8 copy and rescore ``OVERSAMPLING * k`` candidates with floats, where the
#: store is in the routed layout (``Store.cluster_by``); recall and cost against float scoring of the
#: same leaves are in docs/results/hkm-fashion-mnist.md (the levers rows, int8 x1.5 / x2 / x3).
#: ``router.oversampling = None`` scores floats. The factor's speed effect is below this VM's spread: in
#: an order-rotated scratch A/B (60k Fashion-MNIST, 1000 queries, 9 rounds) the medians were 0.295 /
#: 0.251 / 0.303 ms at x1.5 / x2 / x3 (16x3 probe nprobe=32 s2=0.05) and 0.698 / 0.700 / 0.687 (32x3
#: nprobe=48 s2=0.07), each factor's rounds spanning 30% or more; x1.5 lost up to 0.0004 of recall@10
#: there and in the levers rows, x3 gained nothing over x2. So 2, the recall of x3 at no measured cost.
OVERSAMPLING = 2.0
#: Flat Lloyd iterations over the leaves after a build (``Router.build(refine=)``); what they buy is in
#: the ``refine`` rows of docs/results/hkm-fashion-mnist.md.
REFINE_ITERS = 4
#: Band of the descent that files new points in a refined tree (``Router.assign``): 0.03 reaches the
#: nearest leaf centroid for most points at a fraction of a full scan of the leaves.
FILE_S2 = 0.03


class SearchResult(list):
    """A list of :class:`~plugin.store.Hit` that also carries ``stats`` (operands, leaves, timings)."""

    def __init__(self, hits, stats: dict):
        super().__init__(hits)
        self.stats = stats


class Router:
    def __init__(self, store, tree: Tree, meta: dict, owns_store: bool = False):
        self.store, self.tree, self.meta = store, tree, meta
        self._owns_store = owns_store
        self._lock = RWLock()
        self.flat = tree.flatten()
        self.oversampling = meta.get("oversampling", OVERSAMPLING)
        #: rows of recently added points, read back by splits instead of the store (``RecentVectors(0)``: off)
        self.recent = RecentVectors()
        self._worker = None  # router.add's worker thread (maintenance.add_points), started at the first add

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, store, k: int | str = 3, l: int = 4, metric: str | None = None, max_leaf_size: int | None = None,
              min_leaf_size: int | None = None, split_bound: int | None = None, merge_bound: int | None = None,
              seed: int = 0, save: bool = True, relayout: bool = True, shape_recall: float = 0.95,
              refine: int = REFINE_ITERS, spill: bool = False) -> "Router":
        """Cluster every point of ``store`` into a k-means tree and write each point's ``leaf`` payload.

        Crash-safe: the new state is staged (``router.next.npz``) while the old ``router.npz`` stays;
        the commit point is the collection metadata naming the new build, after every payload is
        written. A crash before it leaves the old router usable (its open finds the half-written
        payloads by their unknown leaf ids and re-files them); a crash after it leaves the new one.
        New leaf ids start above every id the collection ever used, so the two never mix.

        ``relayout`` rewrites an embedded store sorted by leaf (``Store.cluster_by``); see
        ``EdgeStore.cluster_by`` for what it measured. Points added later are appended; a rebuild
        re-sorts them.

        ``refine``: flat Lloyd iterations over all leaves after the top-down build
        (:func:`plugin.router.tree.refine_leaves`; 0 keeps the paper's tree as built).

        ``spill``: also file every point under a second leaf (SOAR's rule) in an integer ``spill``
        payload, so that ``search(..., spill=True)`` can score the routed leaves' spilled points too
        (:mod:`plugin.router.spill`: what it buys, and why spills may go stale but never wrong).

        ``k="auto"``: ``k``, ``l`` (and ``max_leaf_size``, unless given) are chosen by
        :func:`plugin.router.shape.choose_shape` for the lowest predicted query time at mean recall@10
        ``shape_recall`` under relaxed search; ``build_stats["shape"]`` holds every candidate's prediction
        and ``meta["shape"]`` the chosen ``s2``.
        """
        metric = metric or STORE_METRIC[store.distance]
        auto = isinstance(k, str)
        if auto and k != "auto":
            raise RouterError(f"k must be an integer >= 2 or 'auto', got {k!r}")
        if int(refine) != refine or refine < 0:
            raise RouterError(f"refine must be an integer >= 0, got {refine!r}")
        # explicit maintenance bounds hold from the start: the build splits / folds leaves to them
        max_leaf_size = max_leaf_size or split_bound
        min_leaf_size = min_leaf_size or merge_bound
        n = store.count()
        check_build_params(n, 2 if auto else k, 1 if auto else l, metric, max_leaf_size, min_leaf_size)
        store.ensure_partition_indexes()
        t0 = time.perf_counter()
        ids, vecs, _ = store.all_vectors()
        t_read = time.perf_counter() - t0
        shape = None
        if auto:
            from plugin.router.shape import choose_shape, measure_costs

            (k, l, chosen_max), shape = choose_shape(vecs, recall=shape_recall, metric=metric, seed=seed,
                                                     costs=measure_costs(store))
            max_leaf_size = max_leaf_size or chosen_max
            check_build_params(n, k, l, metric, max_leaf_size, min_leaf_size)
        tree, assign = build_tree(vecs, k, l, metric, max_leaf_size, min_leaf_size, seed, refine=int(refine))
        base = _next_free_leaf_id(store)
        if base:
            tree = _shift_leaf_ids(tree, base)
            assign = assign + base
        sizes = tree.counts[[tree.leaf_node[x] for x in tree.leaf_ids()]]
        mean = float(sizes.mean())
        meta = {"router_id": uuid.uuid4().hex, "collection": store.name, "dim": store.dim, "metric": metric,
                "k": k, "l": l, "refine": int(refine), "max_leaf_size": max_leaf_size, "min_leaf_size": min_leaf_size, "seed": seed,
                "split_bound": int(split_bound or max_leaf_size or max(2 * mean, 1.25 * sizes.max(), 2 * k)),
                "merge_bound": int(merge_bound or min_leaf_size or max(1, mean // 8)),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "n_points_built": n, "spill": bool(spill)}
        if shape is not None:
            meta["shape"] = {**shape["chosen"], "recall_target": shape_recall}
        if meta["merge_bound"] * 2 > meta["split_bound"]:
            raise RouterError(f"merge_bound {meta['merge_bound']} must be at most half of split_bound "
                              f"{meta['split_bound']}")
        router = cls(store, tree, meta)
        store.update_meta(leaf_id_high=tree.next_leaf_id)  # taken, even if this build never commits
        if save:
            router._save_to(staged_path(store))
        t1 = time.perf_counter()
        order = np.argsort(assign, kind="stable")
        bounds = np.flatnonzero(np.diff(assign[order])) + 1
        for grp in np.split(order, bounds):
            store.set_payload(ids[grp], {"leaf": int(assign[grp[0]])})
        if spill:  # before the relayout, which carries every payload into the new layout
            write_spills(store, router.flat, ids, vecs, assign)
        store.flush()
        t2 = time.perf_counter()
        if relayout:  # leaf-contiguous storage: routed searches read each leaf sequentially
            store.cluster_by("leaf")
        store.update_meta(router_id=meta["router_id"])  # the commit point
        if save:
            commit_staged(store)
        router.build_stats = {"read_s": t_read, "cluster_s": t1 - t0 - t_read, "payload_s": t2 - t1,
                              "relayout_s": time.perf_counter() - t2, "total_s": time.perf_counter() - t0}
        if shape is not None:
            router.build_stats["shape"] = shape
        return router

    @classmethod
    def open(cls, store_or_path, reconcile: bool = True) -> "Router":
        """Open the router of a collection (a store object, or an embedded collection's directory).

        The saved tree is checked against the store (:meth:`check`: one facet of ``leaf``, not a scan)
        and repaired (:meth:`reconcile`) when they disagree, e.g. after a crash between a store write
        and a state save. ``reconcile=False`` opens as saved (for inspection).
        """
        owns = False
        store = store_or_path
        if isinstance(store_or_path, (str, os.PathLike)):
            from plugin.store.edge import EdgeStore

            store, owns = EdgeStore(store_or_path), True
        meta, arrays = load_committed(store)
        if meta["dim"] != store.dim:
            raise RouterError(f"router was built for {meta['dim']}-d vectors, the collection holds {store.dim}-d")
        tree = Tree.from_arrays(meta["dim"], meta["metric"], meta["k"], meta["l"], meta["next_leaf_id"], arrays)
        router = cls(store, tree, meta, owns_store=owns)
        store.ensure_partition_indexes()  # collections from older versions lack the `wnid` index
        if reconcile and not router.check()["consistent"]:
            router.reconcile()
        return router

    @staticmethod
    def exists(store) -> bool:
        want = store.get_meta().get("router_id")
        return bool(want) and (state_path(store).is_file() or staged_path(store).is_file())

    def save(self) -> None:
        with self._lock.write():
            self._save_to(state_path(self.store))
            if int(self.store.get_meta().get("leaf_id_high", 0)) < self.tree.next_leaf_id:
                self.store.update_meta(leaf_id_high=self.tree.next_leaf_id)

    def _save_to(self, path) -> None:
        meta = {**self.meta, "next_leaf_id": self.tree.next_leaf_id, "n_points": int(self.flat.n_points)}
        save_state(path, meta, self.tree.to_arrays())

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
        if self._owns_store:
            self.store.close()

    def worker(self) -> ThreadPoolExecutor:
        """One thread kept for this router's adds (``maintenance.add_points``): starting a new thread per
        add took 1.7 ms (0.010 s over the six adds of the ingest bench's +10% growth, profiled)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsearch-add")
        return self._worker

    def _publish(self, rows=None) -> None:
        """After the tree changed (write lock held): drop dead nodes, swap in a new snapshot. ``rows``: the
        snapshot's centroid arrays (:func:`kernels.snapshot_rows`) made from the tree as it is now, when an
        add computed them beside its last engine write."""
        if self.tree.compact():
            rows = None  # renumbered nodes
        self.flat = self.tree.flatten(rows)

    @property
    def leaf_counts(self) -> np.ndarray:
        return self.flat.leaf_counts

    # ---- search -------------------------------------------------------------------------------
    def prepare_queries(self, vecs) -> np.ndarray:
        """Queries as a C-contiguous float32 (N, dim) array, unit rows under cosine; a
        :class:`BadVectorError` for a wrong shape, NaN, inf or (cosine) a zero vector. A float32 batch
        of the right shape is checked by its norms alone (:func:`kernels.unit_rows`, one call)."""
        dim = self.store.dim
        if self.tree.metric != "cosine":
            return check_vectors(vecs, dim)
        trusted = isinstance(vecs, np.ndarray) and vecs.dtype == np.float32 and vecs.ndim == 2 \
            and vecs.shape[1] == dim
        q, bad = unit_rows(vecs if trusted else check_vectors(vecs, dim))
        if bad >= 0:
            check_vectors(vecs, dim)  # raises for NaN or inf
            raise BadVectorError("a zero vector has no direction: cosine search needs a non-zero query")
        return q

    def route(self, vecs, mode: str = "auto", **params) -> list[np.ndarray] | None:
        """Leaf ids each query of a tree mode would score (None = all), without scoring. Lock-free."""
        return route(self.flat, self.prepare_queries(vecs), mode, params)[0]

    def search(self, vec, k: int = 10, mode: str = "auto", within=None, filter: Filter | None = None,
               probs=None, classes=None, with_payload: bool = True, spill: bool = False,
               **params) -> SearchResult:
        q = np.asarray(vec)
        if q.ndim != 1:
            raise RouterError(f"search takes one vector (use search_batch for several), got shape {q.shape}")
        p = None if probs is None else np.asarray(probs)[None]
        return self.search_batch(q[None], k, mode, within=within, filter=filter, probs=p, classes=classes,
                                 with_payload=with_payload, spill=spill, **params)[0]

    def search_batch(self, vecs, k: int = 10, mode: str = "auto", within=None, filter: Filter | None = None,
                     probs=None, classes=None, with_payload: bool = True, spill: bool = False,
                     **params) -> list[SearchResult]:
        """Top-``k`` per query under a search mode, optionally restricted to WordNet subtrees.

        ``within``: a wnid or a list of wnids; only points whose ``synsets`` payload holds one of them
        (the point's class or any ancestor) are returned. ``filter``: any :class:`Filter` in the store's
        terms, ANDed with the rest. Routing and the restriction combine as leaf ∈ L AND synsets ∋ s.
        When a routed probe returns fewer than its ``k`` hits under a restriction (a subtree that is
        small, or lies mostly outside the routed leaves), it is re-scored over the whole restriction
        without routing: a filter that selects few points is already cheap to score exactly (measured
        in ENVIRONMENT.md: 0.9 ms for 5% of 100k points), and a user asking for "dogs" expects k dogs
        when the collection has them. ``stats["widened"]`` says when that happened. An unknown wnid is
        an error; a subtree with no points gives no hits.

        ``probs`` / ``classes``: the queries' class probabilities (B, C) and the wnids of their columns,
        for modes that reason about the query's class (see ``plugin.semantics``).

        ``with_payload=False``: hits carry ids and scores only, which saves the payload read (one
        ``retrieve`` of the hits, ~0.03 ms a query). Modes that merge sub-searches read payloads anyway.

        ``spill=True`` (a router built with ``spill=True``): the routed leaves' spilled points are scored
        too (:mod:`plugin.router.spill`), in every mode that routes; worth it for high recall only.
        ``stats["operands"]`` still counts the points filed under the routed leaves. Under a restriction
        whose own filter names leaves, the two leaf lists intersect on ``leaf`` alone.
        """
        m = get_mode(mode)
        used = m.resolve(params)
        spill = bool(spill)
        if spill and not self.meta.get("spill"):
            raise RouterError("spill=True needs a router built with spill=True (`hsearch build --spill`): this "
                              "one files each point under one leaf")
        restrict = restriction(within, filter)
        Q = self.prepare_queries(vecs)
        if k < 1:
            raise RouterError(f"k must be >= 1, got {k}")
        if probs is not None:
            probs = check_probs(probs, len(Q), classes)
        if len(Q) == 0:  # checked like any batch (shape, mode, parameters); nothing to route or score
            return []
        with self._lock.read():
            flat = self.flat
            n = flat.n_points
            if n == 0 and self.store.count() == 0:
                raise EmptyCollectionError(f"collection '{self.store.name}' is empty")
            t0 = time.perf_counter()
            shared = self.store.scores_on_replicas(len(Q))
            ctx = ModeContext(flat, self.store, self, probs, None if classes is None else tuple(classes),
                              one_thread=shared)
            if shared and m.rowwise and restrict is None and probs is None:
                # scored in chunks shared with read replicas: each chunk is routed when the store takes it
                return self._search_in_parts(m, ctx, Q, k, used, with_payload, t0, spill)
            routed = m.fn(ctx, Q, **used)
            t1 = time.perf_counter()
            simple = leaf_routes(routed, len(Q)) if restrict is None else None
            if simple is not None:
                # leaf ids per query (a tree mode's, or target's one probe each) and nothing else to score:
                # one store call, no probes or groups. At one query per call our Python is what separates
                # router.search from the layers it calls (docs/results/anatomy-fashion-mnist.md), so this
                # path does as little as it can.
                routes, info = simple
                ids, leaves, operands = zip(*[leaf_lists(lv, flat.leaf_sizes, UNFILED) for lv in routes])
                hits = self.store.search_leaves(Q, k, leaves, oversampling=self.oversampling,
                                                with_payload=with_payload, spill=spill)
                timing = _timing(t0, t1, time.perf_counter(), len(Q))
                return _tree_results(mode, used, n, hits, ids, operands, timing, info, spill)
            plan = as_plan(routed, len(Q))
            probe_hits, widened = self._run_probes(Q, plan.probes, k, restrict,
                                                   with_payload or plan.merge is not None, spill)
            t2 = time.perf_counter()
        B = len(Q)
        timing = _timing(t0, t1, t2, B)
        per_query: list[list[int]] = [[] for _ in range(B)]
        for i, p in enumerate(plan.probes):
            per_query[p.query].append(i)
        out = []
        for b in range(B):
            mine = per_query[b]
            lists = [probe_hits[i] for i in mine]
            if plan.merge is not None:
                hits = plan.merge(b, lists, k)
            elif len(lists) == 1:
                hits = lists[0]
            else:
                hits = _union_by_score(lists, k)
            routed = [plan.probes[i].leaves for i in mine if plan.probes[i].leaves is not None]
            # one probe's leaves are distinct already (the common case: a tree mode); several may overlap
            lids = np.sort(routed[0]) if len(routed) == 1 else np.unique(np.concatenate(routed)) if routed else None
            everything = any(plan.probes[i].leaves is None and plan.probes[i].operands is None for i in mine)
            hinted = sum(plan.probes[i].operands or 0 for i in mine)
            operands = n if everything else hinted + (int(flat.leaf_counts[lids].sum()) if lids is not None else 0)
            leaves = [] if lids is None or everything else lids.tolist()
            out.append(SearchResult(hits, _stats(mode, used, _as_list(within), operands, n, leaves,
                                                 any(widened[i] for i in mine), timing,
                                                 n_leaves=flat.n_leaves if everything else None,
                                                 info=plan.info[b] if plan.info else None, spill=spill)))
        return out

    def _search_in_parts(self, m, ctx, Q, k: int, used: dict, with_payload: bool, t0: float,
                         spill: bool = False) -> list:
        """A tree mode's batch routed a part at a time as the store's chunks take it
        (:mod:`plugin.router.parts`); the same hits and stats as routing it whole."""
        flat = ctx.flat
        remote = RemoteRoute(flat, route_rows, (m.name, used, UNFILED)) if m.fn.__module__ in BUILTIN_MODULES \
            else None
        parts = RoutedParts(lambda a, b: m.fn(ctx, Q[a:b], **used), len(Q), flat.leaf_sizes, UNFILED, remote)
        hits = self.store.search_leaves(Q, k, parts, oversampling=self.oversampling, with_payload=with_payload,
                                        spill=spill)
        parts.fill()  # every row, should a store have left one unsliced
        t2 = time.perf_counter()  # route_ms: every process's routing (a replica's included), score_ms the rest
        timing = _timing(t0, min(t0 + parts.seconds, t2), t2, len(Q))
        return _tree_results(m.name, used, flat.n_points, hits, parts.ids, parts.operands, timing, spill=spill)

    def _run_probes(self, Q, probes, k: int, restrict, with_payload: bool = True,
                    spill: bool = False) -> tuple[list, list[bool]]:
        """Score every probe (one store batch per distinct k and kind: routed probes score the int8 copy
        with ``self.oversampling``, the others floats); re-score restricted probes that came back short
        without their leaf routing."""
        filters = [_and(p.filter, restrict) for p in probes]
        hits: list = [None] * len(probes)
        # one store batch per (k, kind); kind: routed with no other condition (the store builds the leaf
        # condition itself: the common case, and the one where our per-query work shows), routed under
        # a filter, or unrouted
        groups: dict[tuple[int, str], list[int]] = {}
        for i, p in enumerate(probes):
            kind = "unrouted" if p.leaves is None else "leaves" if filters[i] is None else "filtered"
            groups.setdefault((int(p.k or k), kind), []).append(i)
        for (kk, kind), idx in groups.items():
            rows = [probes[i].query for i in idx]
            Qg = Q if len(rows) == len(Q) and rows == list(range(len(Q))) else Q[rows]
            if kind == "leaves":
                res = self.store.search_leaves(Qg, kk, [np.append(probes[i].leaves, UNFILED) for i in idx],
                                               oversampling=self.oversampling, with_payload=with_payload,
                                               spill=spill)
            else:
                fs = [filters[i] if kind == "unrouted" else
                      _and(Filter(leaf_in=tuple(probes[i].leaves.tolist()) + (UNFILED,), spill=spill), filters[i])
                      for i in idx]
                res = self.store.search_batch(Qg, kk, filter=fs, exact=True, with_payload=with_payload,
                                              oversampling=self.oversampling if kind == "filtered" else None)
            for i, h in zip(idx, res):
                hits[i] = h
        widened = [p.leaves is not None and (p.filter is not None or restrict is not None)
                   and len(hits[i]) < int(p.k or k) for i, p in enumerate(probes)]
        for i, p in enumerate(probes):
            if not widened[i]:
                continue
            hits[i] = self.store.search_batch(Q[p.query:p.query + 1], int(p.k or k),
                                              filter=_and(p.filter, restrict), exact=True,
                                              with_payload=with_payload)[0]
        return hits, widened

    def calibrate(self, queries=None, **params):
        """Calibrate search mode ``target`` (:func:`plugin.router.target.calibrate`); saved beside the state."""
        from plugin.router.target import calibrate

        return calibrate(self, queries, **params)

    # ---- incremental --------------------------------------------------------------------------
    def add(self, ids, vectors, payloads=None, save: bool = False) -> dict:
        """Route new points to their nearest leaf and upsert them; split/merge leaves that cross bounds."""
        with self._lock.write():
            rows = None
            try:
                stats, rows = maintenance.add_points(self, ids, vectors, payloads)
                return stats
            finally:
                self._publish(rows)
                if save:
                    self.save()

    def delete(self, ids, save: bool = False) -> dict:
        with self._lock.write():
            try:
                return maintenance.delete_points(self, ids)
            finally:
                self._publish()
                if save:
                    self.save()

    def check(self) -> dict:
        """Compare the tree's per-leaf counts with the store's (one facet on ``leaf``, no scan).

        Divergence that matters: points under a leaf id the tree does not know (they would be skipped by
        routing), leaves whose counts differ (a split, merge or move the saved state missed), points
        without a ``leaf`` at all. Not caught: a re-upserted point that stayed in its leaf with a new
        vector (its leaf's centroid drifts until the next reconcile; no point is lost).
        """
        with self._lock.read():
            flat = self.flat
            stored = {int(v): int(c) for v, c in self.store.facet("leaf", limit=FACET_LIMIT).items()}
            total = self.store.count()
        known = set(flat.leaf_ids.tolist())
        unknown = {lid: c for lid, c in stored.items() if lid not in known and c}
        differ = {lid: (int(flat.leaf_counts[lid]), stored.get(lid, 0)) for lid in known
                  if int(flat.leaf_counts[lid]) != stored.get(lid, 0)}
        no_leaf = total - sum(stored.values())
        return {"consistent": not unknown and not differ and no_leaf == 0 and flat.n_points == total,
                "unknown_leaves": unknown, "count_mismatch": differ, "without_leaf": no_leaf,
                "points_store": total, "points_tree": flat.n_points}

    def reconcile(self) -> dict:
        """Make the tree agree with the store: re-file points of unknown leaves, recount every leaf from
        the stored vectors, split/merge leaves the repair pushed past their bounds, save."""
        with self._lock.write():
            try:
                stats = maintenance.reconcile(self)
            finally:
                self._publish()
            self.save()
            return stats

    def assign(self, vecs) -> np.ndarray:
        """Leaf id a vector is filed under: the nearest leaf centroid among the leaves a relaxed descent
        (``FILE_S2``) reaches. A refined build files each point under its nearest leaf, not under the
        greedy path's (``refine``), so new points are filed the same way. Lock-free: one snapshot."""
        return self.file_rows(self.prepare_queries(vecs), self.flat)

    def file_rows(self, q: np.ndarray, flat, one_thread: bool = False) -> np.ndarray:
        """:meth:`assign` for rows :meth:`prepare_queries` made, on snapshot ``flat``. ``one_thread``: the
        serial kernels, which release the GIL (``router.add`` files its next part on a worker thread
        beside the engine's write, leaving it the other core)."""
        f = flat
        if not self.meta.get("refine"):  # the paper's tree: the leaf of the greedy path, as the build filed
            return nearest_leaf_batch(q, f.centroids, f.child_offsets, f.children, f.leaf_of_node, f.metric)
        args = (q, *f.rows(quantized=False), f.child_offsets, f.children, f.leaf_of_node, f.metric, 1, FILE_S2)
        out, _ = probe_batch(*args) if one_thread else probe_many(*args)
        return out[:, 0]

    def describe(self) -> dict:
        f = self.flat
        lids = f.leaf_ids
        sizes = f.leaf_counts[lids] if len(lids) else np.zeros(1, np.int64)
        depths = f.depth[f.leaf_of_node >= 0] + 1
        return {"k": self.meta["k"], "l": self.meta["l"], "metric": self.tree.metric, "leaves": int(len(lids)),
                "points": int(f.n_points), "leaf_size_min": int(sizes.min()),
                "leaf_size_mean": round(float(sizes.mean()), 1), "leaf_size_max": int(sizes.max()),
                "depth_min": int(depths.min(initial=0) if len(depths) else 0),
                "depth_max": int(depths.max(initial=0)),
                "split_bound": self.meta["split_bound"], "merge_bound": self.meta["merge_bound"],
                "spill": bool(self.meta.get("spill")), "built": self.meta["built"]}


def _timing(t0: float, t1: float, t2: float, n_queries: int) -> dict:
    """Per-query routing, scoring and total ms of a batch timed at t0 (start), t1 (routed), t2 (scored)."""
    return {"route_ms": (t1 - t0) * 1e3 / n_queries, "score_ms": (t2 - t1) * 1e3 / n_queries,
            "ms": (t2 - t0) * 1e3 / n_queries}


def _tree_results(mode: str, used: dict, n_points: int, hits: list, ids: list, operands: list,
                  timing: dict, info: list | None = None, spill: bool = False) -> list:
    """Results of leaf routes with nothing else scored: per query its hits, sorted leaf ids, operands
    (and the mode's ``info``)."""
    return [SearchResult(h, _stats(mode, used, None, ops, n_points, lids, False, timing,
                                   info=None if info is None else info[b], spill=spill))
            for b, (h, lids, ops) in enumerate(zip(hits, ids, operands))]


def _stats(mode: str, used: dict, within, operands: int, n_points: int, leaves: list, widened: bool,
           timing: dict, n_leaves: int | None = None, info: dict | None = None, spill: bool = False) -> dict:
    """A result's ``stats``, the same keys on every path; ``n_leaves`` defaults to ``len(leaves)``."""
    return {"mode": mode, **used, "within": within, "operands": operands,
            "operands_frac": operands / max(n_points, 1), "n_leaves": len(leaves) if n_leaves is None else n_leaves,
            "leaves": leaves, "widened": widened, "spill": spill, **(info or {}), **timing}


def _as_list(within) -> list[str] | None:
    if within is None:
        return None
    return [within] if isinstance(within, str) else [str(w) for w in within]


def restriction(within, filter: Filter | None = None) -> Filter | None:
    """``within`` (validated wnids) AND ``filter`` as one :class:`Filter`, or None (also for stores
    searched without a router). A synset condition in ``filter`` and ``within`` must both hold."""
    wnids = _as_list(within)
    if wnids is not None:
        from plugin.taxonomy import synsets_of

        if not wnids:
            raise RouterError("within= needs at least one wnid")
        synsets_of(wnids)  # UnknownSynsetError names the bad ones
    if filter is not None and not isinstance(filter, Filter):
        raise RouterError(f"filter must be a plugin.store.Filter, got {type(filter).__name__}")
    if wnids is None:
        return filter
    return Filter.both(filter, Filter.of(synsets_any=wnids))


def _and(a: Filter | None, b: Filter | None) -> Filter | None:
    """Both filters at once (:meth:`Filter.both`): leaves intersect, synset restrictions all hold."""
    return Filter.both(a, b)


def _union_by_score(lists: list, k: int) -> list:
    best: dict = {}
    for hits in lists:
        for h in hits:
            if h.id not in best or h.score > best[h.id].score:
                best[h.id] = h
    return sorted(best.values(), key=lambda h: -h.score)[:k]


def check_probs(probs, n_queries: int, classes) -> np.ndarray:
    """Class probabilities (B, C): finite, non-negative, rows summing to 1, one column per class."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] != n_queries:
        raise RouterError(f"probs must be ({n_queries}, C), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise RouterError("probs must be finite and non-negative")
    if not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise RouterError(f"probs rows must sum to 1 (got {p.sum(1)[:3]}...)")
    if classes is None or len(classes) != p.shape[1]:
        raise RouterError(f"probs has {p.shape[1]} columns: give classes= with that many wnids")
    return p


def _next_free_leaf_id(store) -> int:
    """Above every leaf id this collection has used: the recorded high-water mark, and any id a point
    still carries (a split that never reached a saved state)."""
    high = int(store.get_meta().get("leaf_id_high", 0))
    used = [int(v) for v in store.facet("leaf", limit=FACET_LIMIT)]
    return max([high] + [v + 1 for v in used if v >= 0])


def _shift_leaf_ids(tree: Tree, base: int) -> Tree:
    tree.leaf_id = [x + base if x >= 0 else -1 for x in tree.leaf_id]
    tree.leaf_node = {lid + base: node for lid, node in tree.leaf_node.items()}
    tree.next_leaf_id += base
    return tree
