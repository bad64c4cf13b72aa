"""Hierarchical k-means tree (hkm-tree-retrieval §3.1): an editable build-time form and the flat arrays
the jitted search walks (pynndescent style).

``Tree`` is the editable form (grown by splits, shrunk by merges during incremental ingestion): per
node its parent, children, depth, running vector sum and count (so centroids follow the data), and the
stable *leaf id* written into each point's ``leaf`` payload. ``Tree.flatten()`` gives a
:class:`FlatTree` — centroids plus CSR child lists — that :mod:`plugin.router.kernels` searches.

Build choices where the paper is silent:

* k-means is faiss' (``faiss.Kmeans``; spherical for cosine), 20 iterations, trained on at most 1024
  points per centroid: measured ~20x faster than scikit-learn's KMeans on 60k x 1280 with the same
  objective. Empty clusters are dropped.
* ``l`` counts levels including the root (paper: ``k^(l-1)`` leaves). A node with fewer than ``k``
  points, or that k-means cannot split, stays a leaf early.
* ``max_leaf_size`` (balanced splitting): a leaf at depth ``l`` still larger than this is split further,
  so leaves can sit at different depths; the kernels handle any depth.
* ``min_leaf_size``: clusters smaller than this are folded into their nearest sibling cluster.
* Distances: ``cosine`` = 1 - cos(q, centroid) (centroids renormalised), ``l2`` = Euclidean, ``dot`` = -q.c.
* ``refine`` (:func:`refine_leaves`): after the top-down build, a few flat Lloyd iterations over *all*
  leaf centroids re-file each point under its nearest leaf. Top-down k-means fixes a point's branch at
  the first level, so points near a top-level boundary sit in a leaf that is not their nearest; on 60k
  Fashion-MNIST the refined leaves reach the same recall@10 scoring fewer points (the ``refine`` rows
  of docs/results/hkm-fashion-mnist.md). The tree's structure stays; every node's sum, count and
  centroid is recomputed from the new leaves.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from plugin.errors import RouterError

METRICS = {"cosine": 0, "l2": 1, "dot": 2}


@dataclass(frozen=True)
class FlatTree:
    """An immutable snapshot of the tree: what the kernels and a search read.

    Node ``i``'s children are ``children[child_offsets[i]:child_offsets[i+1]]``; ``leaf_of_node[i]`` is
    its leaf id or -1; node 0 is the root. ``n_leaves`` is derived from *these* arrays, so a kernel that
    sizes its output by it can never write past a row, whatever the live tree does meanwhile; the
    router swaps in a new snapshot (one attribute assignment) after every change. Arrays are read-only.
    """

    centroids: np.ndarray  # (n_nodes, dim) float32 (unit rows for cosine)
    child_offsets: np.ndarray  # (n_nodes + 1,) int64
    children: np.ndarray  # (n_edges,) int32
    leaf_of_node: np.ndarray  # (n_nodes,) int32
    depth: np.ndarray  # (n_nodes,) int32, root 0
    leaf_counts: np.ndarray  # (next_leaf_id,) int64: points per leaf id, 0 for retired ids
    metric: int
    next_leaf_id: int
    n_leaves: int
    n_points: int
    #: the centroids as int8 codes: row ``i`` is ``codes[i] * code_scale[i]`` (symmetric, per row), what
    #: probe search routes on: a quarter of the bytes a query reads (a routed query reads hundreds of
    #: centroid rows), same recall (docs/results/anatomy-fashion-mnist.md has both kernels' times)
    codes: np.ndarray  # (n_nodes, dim) int8
    code_scale: np.ndarray  # (n_nodes,) float32
    sqnorm: np.ndarray  # (n_nodes,) float32: |centroid|^2 of the float rows (for Euclidean distances)
    ones: np.ndarray  # (n_nodes,) float32: the scale of the float rows
    #: ``leaf_counts`` as Python ints: a routed search's stats add up a few dozen of them per query,
    #: for which a Python sum needs no NumPy call (fancy index, sum, conversion)
    leaf_sizes: tuple

    @property
    def leaf_ids(self) -> np.ndarray:
        return np.sort(self.leaf_of_node[self.leaf_of_node >= 0]).astype(np.int64)

    def rows(self, quantized: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, scale, sqnorm)`` for :func:`plugin.router.kernels.probe_batch`: the int8 codes, or the
        float centroids (exact: what filing a new point to its nearest leaf uses)."""
        return (self.codes, self.code_scale, self.sqnorm) if quantized else (self.centroids, self.ones, self.sqnorm)


def int8_codes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 codes of float rows: ``rows ~= codes * scale[:, None]``, error at most
    half a step (``max|row| / 254``) per component. A zero row gets scale 1 and zero codes.
    (:func:`kernels.int8_rows`, one pass per row.)"""
    from plugin.router.kernels import int8_rows

    return int8_rows(np.ascontiguousarray(rows, np.float32))


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with room for at least ``n`` rows (capacity doubles, so adding nodes is amortised O(1))."""
    if len(a) >= n:
        return a
    out = np.zeros((max(n, 2 * len(a), 8),) + a.shape[1:], a.dtype)
    out[:len(a)] = a
    return out


class Tree:
    """The editable tree (build, splits, merges): per node its parent, children, depth, running vector sum
    and count (so centroids follow the data) and leaf id; ``leaf_node`` maps live leaf ids to nodes.

    Node arrays keep spare capacity (``add_node`` is amortised O(1); it used to copy every array per
    node, which made builds with ``max_leaf_size`` quadratic). Merges leave unreachable nodes behind;
    ``compact()`` drops them, keeping leaf ids, which are stable for the life of the collection.
    """

    def __init__(self, dim: int, metric: str, k: int, l: int):
        self.dim, self.metric, self.k, self.l = dim, metric, k, l
        self.parent: list[int] = []
        self.children: list[list[int]] = []
        self.depth: list[int] = []
        self.leaf_id: list[int] = []
        self._sums = np.zeros((0, dim), np.float64)
        self._counts = np.zeros(0, np.int64)
        self._centroids = np.zeros((0, dim), np.float32)
        self._born = np.zeros(0, np.int64)
        self.leaf_node: dict[int, int] = {}  # leaf id -> node
        self.next_leaf_id = 0
        #: whether some node may be unreachable from the root (set by ``detach`` and ``regroup``, cleared
        #: by ``compact``), so that a publish after a plain add skips compact's walk over every node
        self.unreachable = True

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def sums(self) -> np.ndarray:  # (n_nodes, dim) float64, writable view
        return self._sums[:self.n_nodes]

    @property
    def counts(self) -> np.ndarray:  # (n_nodes,) int64, writable view
        return self._counts[:self.n_nodes]

    @property
    def centroids(self) -> np.ndarray:  # (n_nodes, dim) float32, last non-empty mean
        return self._centroids[:self.n_nodes]

    @property
    def born(self) -> np.ndarray:  # (n_nodes,) int64, writable view: a leaf's size when it was last clustered
        return self._born[:self.n_nodes]

    # ---- editing ------------------------------------------------------------------------------
    def add_node(self, parent: int, centroid: np.ndarray, is_leaf: bool) -> int:
        node = self.n_nodes
        self._sums = _grown(self._sums, node + 1)
        self._counts = _grown(self._counts, node + 1)
        self._centroids = _grown(self._centroids, node + 1)
        self._born = _grown(self._born, node + 1)
        self._sums[node] = 0
        self._counts[node] = 0
        self._born[node] = 0
        self._centroids[node] = np.asarray(centroid, np.float32)
        self.parent.append(parent)
        self.children.append([])
        self.depth.append(0 if parent < 0 else self.depth[parent] + 1)
        self.leaf_id.append(-1)
        if parent >= 0:
            self.children[parent].append(node)
        if is_leaf:
            self.make_leaf(node)
        return node

    def make_leaf(self, node: int) -> int:
        lid = self.next_leaf_id
        self.next_leaf_id += 1
        self.leaf_id[node] = lid
        self.leaf_node[lid] = node
        return lid

    def retire_leaf(self, node: int) -> None:
        """The node stops being a leaf (it was split, or merged away); its id is never reused."""
        lid = self.leaf_id[node]
        if lid >= 0:
            del self.leaf_node[lid]
            self.leaf_id[node] = -1

    def detach(self, node: int, prune: bool = True) -> None:
        """Remove ``node`` from its parent's children; with ``prune``, parents left without children go
        too (never the root). Detached nodes are unreachable until ``compact`` drops them."""
        self.unreachable = True
        parent = self.parent[node]
        while parent >= 0:
            self.children[parent].remove(node)
            if not prune or self.children[parent] or self.parent[parent] < 0:
                return
            node, parent = parent, self.parent[parent]

    def path(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parent[node]
        return out

    def add_sum(self, node: int, s: np.ndarray, count: int) -> None:
        """Add a vector sum of ``count`` points (negative to remove) to ``node`` and all its ancestors."""
        for n in self.path(node):
            self._sums[n] += s
            self._counts[n] += count
            if self._counts[n] > 0:
                self._centroids[n] = (self._sums[n] / self._counts[n]).astype(np.float32)

    def add_vectors(self, node: int, vecs: np.ndarray, sign: int = 1) -> None:
        """Add (sign=1) or remove (sign=-1) vectors to ``node`` and all its ancestors."""
        if len(vecs):
            self.add_sum(node, vecs.sum(axis=0, dtype=np.float64) * sign, sign * len(vecs))

    def add_to_leaves(self, vecs: np.ndarray, lids: np.ndarray, sign: int = 1) -> list[int]:
        """Vectorised :meth:`add_vectors` for points of many leaves (``sign=-1``: take them out), each added
        to its leaf and every ancestor by :func:`kernels.add_up_tree`. Leaf ids the tree does not know
        are ignored; returns the known leaves touched, sorted."""
        add, touched = self.leaf_adder(vecs, lids, sign)
        add()
        return touched

    def leaf_adder(self, vecs: np.ndarray, lids: np.ndarray, sign: int = 1) -> tuple:
        """(``add``, leaves touched): :meth:`add_to_leaves` with every Python step done now and the
        kernel call left in ``add()``, which needs the GIL only to start (``router.add`` runs it on a
        worker beside the engine's write, which holds the GIL). The tree must not change in between."""
        lids = np.asarray(lids, np.int64)
        if len(lids) == 0:
            return (lambda: None), []
        get = self.leaf_node.get
        nodes = np.fromiter((get(lid, -1) for lid in lids.tolist()), np.int64, count=len(lids))
        return self._adder(vecs, np.ones(len(lids), np.int64), nodes, sign), np.unique(lids[nodes >= 0]).tolist()

    def add_leaf_sums(self, lids: np.ndarray, sums: np.ndarray, sizes: np.ndarray, sign: int = 1) -> None:
        """Add per-leaf vector sums and point counts (``sign=-1``: remove them) to the live leaves ``lids``
        and every ancestor; centroids of the nodes touched follow (:func:`kernels.add_up_tree`)."""
        nodes = np.fromiter((self.leaf_node[lid] for lid in np.asarray(lids).tolist()), np.int64, count=len(lids))
        if len(nodes):
            self._adder(np.asarray(sums, np.float64), np.asarray(sizes, np.int64), nodes, sign)()

    def _adder(self, rows, weights, nodes, sign):
        """The :func:`kernels.add_up_tree` call for these rows, its arguments made now (the tree must not
        change before it runs)."""
        from plugin.router.kernels import add_up_tree

        n = self.n_nodes
        return functools.partial(add_up_tree, np.ascontiguousarray(rows), weights, nodes,
                                 np.asarray(self.parent, np.int64), self._sums[:n], self._counts[:n],
                                 self._centroids[:n], int(sign))

    def compact(self) -> bool:
        """Drop nodes no longer reachable from the root (left by merges); node ids are renumbered, leaf
        ids kept. Returns whether anything was dropped."""
        if not self.unreachable:
            return False
        self.unreachable = False
        order, stack = [], [0] if self.n_nodes else []
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(self.children[node]))
        if len(order) == self.n_nodes:
            return False
        order.sort()  # keep parents before children, as they were created
        new_of = {old: new for new, old in enumerate(order)}
        idx = np.asarray(order, np.int64)
        self._sums, self._counts, self._centroids = self._sums[idx], self._counts[idx], self._centroids[idx]
        self._born = self._born[idx]
        self.parent = [new_of[self.parent[o]] if self.parent[o] >= 0 else -1 for o in order]
        self.children = [[new_of[c] for c in self.children[o]] for o in order]
        self.depth = [self.depth[o] for o in order]
        self.leaf_id = [self.leaf_id[o] for o in order]
        self.leaf_node = {lid: n for n, lid in enumerate(self.leaf_id) if lid >= 0}
        return True

    def regroup(self, seed: int = 0) -> bool:
        """Re-cluster the levels above the leaves from the leaves' running sums: top-down k-means of the
        leaf means weighted by their counts (what ``build_tree``'s k-means over the leaves' points
        optimises when a leaf's points stay together), to the tree's ``l`` levels.

        Why: a greedy descent files new points under upper-level centroids that were placed without
        them, so a class the build never saw ends up spread over several top-level subtrees, which
        routing prunes (measured in docs/results/router-drift.md). Leaves, their ids, sums and points
        stay; nothing moves in the store. Old internal nodes become unreachable (``compact`` drops
        them); leaves a build put below level ``l`` (``max_leaf_size``) come back to it. Returns whether
        the tree has internal levels to regroup.
        """
        if self.n_nodes == 0 or self.leaf_id[0] >= 0 or not self.leaf_node:
            return False
        leaves = np.asarray([self.leaf_node[x] for x in self.leaf_ids()], np.int64)
        means = self.centroids[leaves].astype(np.float32)  # last non-empty mean: defined for empty leaves
        sums, weights = self.sums[leaves], np.maximum(self.counts[leaves], 1)
        self.children[0] = []
        self.unreachable = True  # the old internal nodes
        stack = [(0, np.arange(len(leaves)))]
        while stack:
            parent, idx = stack.pop()
            groups = []
            if self.depth[parent] + 2 < self.l and len(idx) > self.k:  # children would not be leaves yet
                labels, _ = kmeans(means[idx], self.k, self.metric, seed + len(idx), weights=weights[idx],
                                   one_thread=True)
                groups = [idx[labels == c] for c in np.unique(labels)]
            if len(groups) < 2:
                for i in idx:
                    self.parent[leaves[i]] = parent
                    self.children[parent].append(int(leaves[i]))
                continue
            for g in groups:
                node = self.add_node(parent, means[g[0]], is_leaf=False)
                self._sums[node] = sums[g].sum(0)
                self._counts[node] = self.counts[leaves[g]].sum()
                self._centroids[node] = (self._sums[node] / max(self._counts[node], 1)).astype(np.float32)
                stack.append((node, g))
        stack = [0]
        while stack:  # leaves moved up or down: depths from the root
            node = stack.pop()
            for c in self.children[node]:
                self.depth[c] = self.depth[node] + 1
                stack.append(c)
        return True

    # ---- views --------------------------------------------------------------------------------
    @property
    def n_leaves(self) -> int:
        return len(self.leaf_node)

    def leaf_ids(self) -> np.ndarray:
        return np.fromiter(sorted(self.leaf_node), np.int64)

    def leaf_counts(self) -> np.ndarray:
        """Points per leaf id (indexed by leaf id; retired ids count 0)."""
        out = np.zeros(self.next_leaf_id, np.int64)
        lid = np.asarray(self.leaf_id, np.int64)
        is_leaf = lid >= 0
        out[lid[is_leaf]] = self._counts[:self.n_nodes][is_leaf]
        return out

    def leaf_centroids(self, lids) -> np.ndarray:
        return self.centroids[[self.leaf_node[int(x)] for x in lids]]

    def flatten(self, rows=None) -> FlatTree:
        """A new immutable snapshot (copies: later edits of the tree never show through). ``rows``: what
        :meth:`snapshot_rows` returns for the tree as it is now, when the caller made it already."""
        offsets, kids = self._children_csr()
        cents, sqnorm, codes, scale = self.snapshot_rows() if rows is None else rows
        leaf_of_node = np.asarray(self.leaf_id, np.int32)
        extra = {"codes": codes, "code_scale": scale, "sqnorm": sqnorm, "ones": np.ones(len(cents), np.float32)}
        arrays = [cents, offsets, kids, leaf_of_node, np.asarray(self.depth, np.int32), self.leaf_counts()]
        for a in arrays + list(extra.values()):
            a.setflags(write=False)
        extra["leaf_sizes"] = tuple(arrays[-1].tolist())
        return FlatTree(*arrays, metric=METRICS[self.metric], next_leaf_id=self.next_leaf_id,
                        n_leaves=int((leaf_of_node >= 0).sum()),
                        n_points=int(self._counts[0]) if self.n_nodes else 0, **extra)

    def snapshot_rows(self, one_thread: bool = False) -> tuple:
        """The snapshot's centroid arrays (:func:`kernels.snapshot_rows`: rows, squared norms, int8 codes,
        scales). ``one_thread``: the serial kernel, which releases the GIL."""
        from plugin.router.kernels import snapshot_rows, snapshot_rows_serial

        cents, unit = np.ascontiguousarray(self.centroids, np.float32), self.metric == "cosine"
        return snapshot_rows_serial(cents, unit) if one_thread else snapshot_rows(cents, unit)

    def to_arrays(self) -> dict:
        """The state to save. Sums are not saved: every node holding points has centroid = sums / counts
        (``add_up_tree`` and ``refine`` keep it so), so loading takes sums = centroid x count. That halves
        each save (the float32 centroids are saved exactly, so routing after a load is bit-identical),
        and the rounding is the float32 centroid's (7 digits of a leaf's sum), as float32 sums had."""
        return {"parent": np.asarray(self.parent, np.int32), "depth": np.asarray(self.depth, np.int32),
                "leaf_id": np.asarray(self.leaf_id, np.int32), "counts": self.counts,
                "centroids": self.centroids, "born": self.born,
                **dict(zip(("child_offsets", "children"), self._children_csr()))}

    def _children_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """The children lists as CSR arrays (int64 offsets, int32 children): node ``i``'s children are
        ``children[offsets[i]:offsets[i + 1]]``; the snapshot and the state file hold them so."""
        offsets = np.zeros(self.n_nodes + 1, np.int64)
        offsets[1:] = np.cumsum([len(c) for c in self.children])
        kids = np.fromiter(itertools.chain.from_iterable(self.children), np.int32, count=int(offsets[-1]))
        return offsets, kids

    @classmethod
    def from_arrays(cls, dim: int, metric: str, k: int, l: int, next_leaf_id: int, a: dict) -> "Tree":
        t = cls(dim=dim, metric=metric, k=k, l=l)
        t.parent = a["parent"].tolist()
        t.depth = a["depth"].tolist()
        t.leaf_id = a["leaf_id"].tolist()
        off, ch = a["child_offsets"], a["children"]
        t.children = [ch[off[i]:off[i + 1]].tolist() for i in range(len(t.parent))]
        t._counts = a["counts"].astype(np.int64)
        t._centroids = a["centroids"].astype(np.float32)
        # states saved before sums were derived from the centroids hold them
        t._sums = a["sums"].astype(np.float64) if "sums" in a else t._centroids.astype(np.float64) * t._counts[:, None]
        t._born = a["born"].astype(np.int64) if "born" in a else t._counts.copy()  # older state files
        t.leaf_node = {lid: n for n, lid in enumerate(t.leaf_id) if lid >= 0}
        t.next_leaf_id = next_leaf_id
        return t


def kmeans(x: np.ndarray, k: int, metric: str, seed: int = 0, niter: int = 20,
           weights: np.ndarray | None = None, one_thread: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), centroids (k, dim)) with faiss; cosine uses spherical k-means. ``weights``: one per
    row (a row standing for that many points). ``one_thread``: train on one OpenMP thread (the small
    k-means of incremental maintenance: 10-20x faster than two threads on a busy 2-core machine,
    measured in docs/results/router-drift.md); faiss' thread setting is process-wide and is restored."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=(metric == "cosine"),
                      min_points_per_centroid=1, max_points_per_centroid=1024, verbose=False)
    threads = faiss.omp_get_max_threads()
    if one_thread:
        faiss.omp_set_num_threads(1)
    try:
        km.train(x, weights=None if weights is None else np.ascontiguousarray(weights, np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    if metric == "l2":
        _, labels = km.index.search(x, 1)
    else:  # nearest by inner product against (unit, for spherical) centroids
        labels = np.argmax(x @ km.centroids.T, axis=1)[:, None]
    return labels[:, 0].astype(np.int64), km.centroids


def _split(x: np.ndarray, k: int, metric: str, min_size: int, seed: int, one_thread: bool = False) -> list[np.ndarray]:
    """Index groups of a k-means split of ``x``; groups under ``min_size`` fold into the nearest group."""
    labels, cents = kmeans(x, k, metric, seed, one_thread=one_thread)
    groups = {c: np.flatnonzero(labels == c) for c in range(len(cents))}
    groups = {c: g for c, g in groups.items() if len(g)}
    if min_size > 1:
        while len(groups) > 1:
            small = min(groups, key=lambda c: len(groups[c]))
            if len(groups[small]) >= min_size:
                break
            others = [c for c in groups if c != small]
            d = ((cents[others][None, :, :] - cents[small][None, None, :]) ** 2).sum(-1)[0]
            groups[others[int(np.argmin(d))]] = np.concatenate([groups[others[int(np.argmin(d))]], groups.pop(small)])
    return [np.sort(g) for g in groups.values()]


def _halve(vecs: np.ndarray) -> list[np.ndarray]:
    """Two halves split at the median of the first principal direction: the fallback when k-means puts
    nearly everything in one cluster (near-duplicate images do that), so a leaf past ``split_bound``
    always splits, into halves no smaller than ``merge_bound`` (the bounds keep split >= 2 x merge)."""
    centred = vecs - vecs.mean(0)
    if len(centred) < centred.shape[1]:
        # the projections on the first principal direction are s1 * u1 (X v1 = s1 u1): u1, the top
        # eigenvector of the n x n Gram matrix, orders the points the same way, at a ninth of a full SVD's
        # time for a leaf of 320 points x 1280-d (10 vs 88 ms, measured)
        proj = np.linalg.eigh(centred @ centred.T)[1][:, -1]
    else:
        proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(proj, kind="stable")
    half = len(order) // 2
    return [np.sort(order[:half]), np.sort(order[half:])]


def build_tree(x: np.ndarray, k: int = 3, l: int = 4, metric: str = "cosine", max_leaf_size: int | None = None,
               min_leaf_size: int | None = None, seed: int = 0, progress=None,
               refine: int = 0) -> tuple[Tree, np.ndarray]:
    """Build the tree over ``x`` (n, dim), then ``refine`` flat Lloyd iterations over its leaves
    (:func:`refine_leaves`). Returns (tree, leaf id of each row)."""
    n, dim = x.shape
    check_build_params(n, k, l, metric, max_leaf_size, min_leaf_size)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    tree = Tree(dim=dim, metric=metric, k=k, l=l)
    assign = np.full(n, -1, np.int64)
    root = tree.add_node(-1, x.mean(0), is_leaf=False)
    stack = [(root, np.arange(n))]
    min_size = int(min_leaf_size or 1)
    while stack:
        node, idx = stack.pop()
        depth = tree.depth[node] + 1  # paper levels are 1-based
        wants = depth < l or (max_leaf_size is not None and len(idx) > max_leaf_size)
        groups = _split(x[idx], k, metric, min_size, seed + node) if wants and len(idx) >= max(k, 2) else []
        if len(groups) < 2 and max_leaf_size is not None and len(idx) > max_leaf_size:
            groups = _halve(x[idx])  # k-means could not split it; halves are >= min_leaf_size by the bounds
        if len(groups) < 2:
            lid = tree.make_leaf(node)
            assign[idx] = lid
            tree.add_vectors(node, x[idx])
            tree.born[node] = len(idx)
            if progress is not None:
                progress(len(idx))
            continue
        for g in groups:
            child = tree.add_node(node, x[idx[g]].mean(0), is_leaf=False)
            stack.append((child, idx[g]))
        # children are pushed in order; pop order does not matter for correctness
    if refine:
        assign = refine_leaves(tree, x, assign, refine)
    return tree, assign


#: Rows per block when every point is compared with every leaf centroid (bounds the (rows, leaves) matrix).
REFINE_BLOCK = 4096


def nearest_centroid(x: np.ndarray, cents: np.ndarray, metric: str) -> np.ndarray:
    """Index of the nearest row of ``cents`` for every row of ``x`` under ``metric`` (BLAS, in blocks)."""
    out = np.empty(len(x), np.int64)
    c = np.ascontiguousarray(cents, np.float32)
    half_sq = 0.5 * np.einsum("ij,ij->i", c, c) if metric == "l2" else None
    for s in range(0, len(x), REFINE_BLOCK):
        sim = np.asarray(x[s:s + REFINE_BLOCK], np.float32) @ c.T
        if half_sq is not None:  # argmin |x - c|^2 = argmax x.c - |c|^2 / 2
            sim -= half_sq
        out[s:s + REFINE_BLOCK] = np.argmax(sim, axis=1)
    return out


def refine_leaves(tree: Tree, x: np.ndarray, assign: np.ndarray, iters: int) -> np.ndarray:
    """Re-file every point under its nearest leaf centroid (all leaves, not only its branch's), recompute
    the leaf means, ``iters`` times or until nothing moves; then every node's sum, count and centroid
    from the new leaves. ``x`` as the build saw it (unit rows for cosine). Returns the new leaf ids.

    Why flat iterations: the top-down build never lets a point change branch, and a k-means tree's
    leaves are measurably worse partitions than a flat k-means of as many cells (the same recall@10
    needs more points). Initialised from the tree, a few Lloyd steps keep the leaves' number and
    ids. A leaf that ends up empty stays, with its last centroid, for later points (maintenance
    folds it when the next ``add`` touches it).
    """
    lids = tree.leaf_ids()
    nodes = np.asarray([tree.leaf_node[int(v)] for v in lids], np.int64)
    cur = np.searchsorted(lids, assign)
    cents = tree.centroids[nodes].astype(np.float32)

    def leaf_sums(cur):
        """Per-leaf float64 sums through a sparse (leaf x point) product over blocks of rows: never a
        float64 copy of every vector (10 GB at a million 1280-d points)."""
        from scipy.sparse import csr_matrix

        counts = np.bincount(cur, minlength=len(lids))
        member = csr_matrix((np.ones(len(cur)), (cur, np.arange(len(cur)))), shape=(len(lids), len(cur)))
        sums = np.zeros((len(lids), x.shape[1]), np.float64)
        for s in range(0, len(cur), REFINE_BLOCK * 16):  # float64 sums, a block of rows converted at a time
            sums += member[:, s:s + REFINE_BLOCK * 16] @ np.asarray(x[s:s + REFINE_BLOCK * 16], np.float64)
        return sums, counts

    sums = counts = None  # of ``cur``, once a move made them stale
    for _ in range(int(iters)):
        c = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12) if tree.metric == "cosine" \
            else cents
        new = nearest_centroid(x, c, tree.metric)
        if np.array_equal(new, cur):
            break
        cur = new
        sums, counts = leaf_sums(cur)
        filled = counts > 0
        cents[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    if sums is None:
        sums, counts = leaf_sums(cur)
    tree.sums[:] = 0
    tree.counts[:] = 0
    tree.centroids[nodes] = cents
    tree.born[nodes] = counts
    filled = counts > 0
    tree.add_leaf_sums(lids[filled], sums[filled], counts[filled])
    return lids[cur]


def check_build_params(n: int, k: int, l: int, metric: str, max_leaf_size=None, min_leaf_size=None) -> None:
    if metric not in METRICS:
        raise RouterError(f"unknown metric '{metric}', expected one of {sorted(METRICS)}")
    if int(k) != k or k < 2:
        raise RouterError(f"branching factor k must be an integer >= 2, got {k}")
    if int(l) != l or l < 1:
        raise RouterError(f"tree height l must be an integer >= 1, got {l}")
    if n == 0:
        raise RouterError("cannot build a router over an empty collection: ingest images first")
    if k ** (l - 1) > n:
        raise RouterError(f"k={k}, l={l} asks for {k ** (l - 1)} leaves but the collection has only {n} points: "
                          "lower k or l")
    if max_leaf_size is not None and max_leaf_size < 1:
        raise RouterError(f"max_leaf_size must be >= 1, got {max_leaf_size}")
    if min_leaf_size is not None and max_leaf_size is not None and min_leaf_size * 2 > max_leaf_size:
        raise RouterError(f"min_leaf_size ({min_leaf_size}) must be at most half of max_leaf_size ({max_leaf_size}), "
                          "or a split could produce leaves that must merge again")
