"""The online step of hkm-tree-retrieval §3.2 as small ``@numba.njit`` kernels over :class:`FlatTree` arrays.

Level by level, the candidates are the children of the nodes kept at the previous level; a selection
rule keeps some of them; kept leaves are output, kept internal nodes are expanded next. Leaves may sit
at different depths (balanced splitting, incremental splits), which the paper's fixed-height tree
never has: a leaf is output at whatever level it is kept.

Selection rules (``d`` = distances of this level's candidates to the query):

* intensive (mode 0): only ``argmin d`` — one path, one leaf.
* relaxed (mode 1), paper eqs. 2-5: keep ``i`` if ``d_i <= s1`` (absolute) or ``d_i - min d <= s2``
  (relative to the best node). The best node is always kept.
* auto (mode 2), eqs. 6-8: sort ``d``, find the largest gap between neighbours, keep everything up to the
  node before it (``s1`` = that node's distance). One candidate is kept as is.
* probe (:func:`probe_one`, not in the paper): the relaxed band on internal nodes only; of all leaves
  met on the way, the ``nprobe`` nearest are output: a count of leaves, like faiss' ``nprobe``, where
  relaxed keeps a distance band at the leaves too.

Only these loops are jitted; building, flattening and scoring stay in Python/NumPy/Qdrant.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

INTENSIVE, RELAXED, AUTO = 0, 1, 2
#: batches at least this large are routed on every core (``*_batch_parallel``); below, the threads'
#: start costs more than it saves
PARALLEL_MIN = 64
# numba's fallback threading layer (workqueue, where neither TBB nor OpenMP loads) aborts the process when
# two threads launch parallel kernels at once; searches run concurrently, so launches take turns
_PARALLEL_LOCK = threading.Lock()


@numba.njit(cache=True)
def unit_rows(Q):
    """``Q``'s rows scaled to unit length (float32), and the first row whose squared norm is not a
    positive finite number (NaN or inf in it, or all zeros), -1 if none: the router's query check and
    normalisation in one call where NumPy took four. At one query per call such fixed steps, not the
    arithmetic, are what ``router.search`` adds to the layers it calls (the whole-search and layer rows
    of docs/results/anatomy-fashion-mnist.md). The norm is summed in float64 without fastmath, so a NaN
    is never assumed away; rows after a bad one are left unwritten."""
    B, D = Q.shape
    out = np.empty((B, D), np.float32)
    for b in range(B):
        s = 0.0
        for j in range(D):
            x = np.float64(Q[b, j])
            s += x * x
        if not (s > 0.0 and s < np.inf):
            return out, b
        inv = 1.0 / np.sqrt(s)
        for j in range(D):
            out[b, j] = Q[b, j] * inv
    return out, -1


@numba.njit(cache=True, fastmath=True)
def node_distance(q, centroids, node, metric):
    """metric 0: 1 - cos (unit centroids, unit query); 1: Euclidean; 2: negative inner product."""
    acc = 0.0
    if metric == 1:
        for j in range(q.shape[0]):
            t = q[j] - centroids[node, j]
            acc += t * t
        return np.sqrt(acc)
    for j in range(q.shape[0]):
        acc += q[j] * centroids[node, j]
    return 1.0 - acc if metric == 0 else -acc


@numba.njit(cache=True)
def select(d, mode, s1, s2, keep):
    """Fill boolean ``keep`` for candidate distances ``d`` under a selection rule."""
    n = d.shape[0]
    best = 0
    for i in range(1, n):
        if d[i] < d[best]:
            best = i
    for i in range(n):
        keep[i] = False
    keep[best] = True
    if mode == RELAXED:
        for i in range(n):
            if d[i] <= s1 or d[i] - d[best] <= s2:
                keep[i] = True
    elif mode == AUTO and n > 1:
        order = np.argsort(d)
        gap_at, gap = 0, -1.0
        for j in range(n - 1):
            g = d[order[j + 1]] - d[order[j]]
            if g > gap:
                gap, gap_at = g, j
        threshold = d[order[gap_at]]
        for i in range(n):
            if d[i] <= threshold:
                keep[i] = True


@numba.njit(cache=True)
def walk(q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, out):
    """The level-by-level walk for query ``q``: kept leaves go to ``out`` (not written when ``out`` is
    empty); returns (leaves kept, centroid distances evaluated). The evaluations are what the shape
    cost model (``plugin.router.shape``) prices."""
    write = out.shape[0] > 0
    n_out = 0
    n_eval = 0
    if leaf_of_node[0] >= 0:  # a single-leaf tree
        if write:
            out[0] = leaf_of_node[0]
        return 1, 0
    frontier = np.empty(centroids.shape[0], np.int64)
    nxt = np.empty(centroids.shape[0], np.int64)
    frontier[0] = 0
    n_front = 1
    cand = np.empty(centroids.shape[0], np.int64)
    d = np.empty(centroids.shape[0], np.float64)
    keep = np.empty(centroids.shape[0], np.bool_)
    while n_front > 0:
        n_cand = 0
        for f in range(n_front):
            node = frontier[f]
            for e in range(child_offsets[node], child_offsets[node + 1]):
                c = children[e]
                cand[n_cand] = c
                d[n_cand] = node_distance(q, centroids, c, metric)
                n_cand += 1
        n_eval += n_cand
        if n_cand == 0:
            break
        select(d[:n_cand], mode, s1, s2, keep[:n_cand])
        n_next = 0
        for i in range(n_cand):
            if keep[i]:
                c = cand[i]
                if leaf_of_node[c] >= 0:
                    if write:
                        out[n_out] = leaf_of_node[c]
                    n_out += 1
                elif child_offsets[c + 1] > child_offsets[c]:
                    nxt[n_next] = c
                    n_next += 1
        for i in range(n_next):
            frontier[i] = nxt[i]
        n_front = n_next
    return n_out, n_eval


@numba.njit(cache=True)
def route_one(q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, out):
    """Leaf ids chosen for query ``q`` are written to ``out``; returns how many."""
    return walk(q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, out)[0]


@numba.njit(cache=True)
def route_batch(Q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, max_leaves):
    """Route every row of ``Q``: returns (leaf ids (B, max_leaves), counts (B,))."""
    B = Q.shape[0]
    out = np.full((B, max_leaves), -1, np.int64)
    counts = np.zeros(B, np.int64)
    for b in range(B):
        counts[b] = route_one(Q[b], centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, out[b])
    return out, counts


@numba.njit(cache=True, parallel=True)
def route_batch_parallel(Q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, max_leaves):
    """:func:`route_batch` with the queries spread over numba's threads (same results)."""
    B = Q.shape[0]
    out = np.full((B, max_leaves), -1, np.int64)
    counts = np.zeros(B, np.int64)
    for b in numba.prange(B):
        counts[b] = route_one(Q[b], centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2, out[b])
    return out, counts


def _on_every_core(serial, parallel, Q, args, one_thread: bool = False):
    """``parallel(Q, *args)`` for a batch of at least :data:`PARALLEL_MIN` queries on more than one
    thread (one launch at a time), ``serial(Q, *args)`` otherwise or when ``one_thread``.

    ``one_thread``: the other cores are taken, by read replicas scoring this batch. After a parallel
    kernel returns, its OpenMP threads spin waiting for the next one (libgomp's default wait policy),
    and that spin took a replica's core: on 60k Fashion-MNIST, batches of 100 through one replica ran
    at the speed of this process alone (median 3394 against 3480 q/s in a scratch A/B; 4069 against
    4000 in the batch rows of the run on 75054d1), and at 1.25x it with routing on one thread (4972
    against 3985; 6278 against 5270 in the batch rows of the run on 0579237), which costs about 10 us
    a query more than routing on two."""
    if one_thread or len(Q) < PARALLEL_MIN or numba.get_num_threads() < 2:
        return serial(Q, *args)
    with _PARALLEL_LOCK:
        return parallel(Q, *args)


def route_many(Q, *args, one_thread: bool = False):
    """:func:`route_batch`, on every core for a batch of at least :data:`PARALLEL_MIN` queries unless
    ``one_thread`` (:func:`_on_every_core`)."""
    return _on_every_core(route_batch, route_batch_parallel, Q, args, one_thread)


@numba.njit(cache=True, fastmath=True)
def centroid_distances(q, centroids, nodes, metric):
    """Distances from ``q`` to the centroid rows ``nodes`` of the live tree's (not unit) centroids: metric 0
    1 - q.c / |c|, 1 Euclidean, 2 -q.c, as ``maintenance._dist``. One pass over the rows it reads, where
    NumPy copied the rows, then normalised the copy: a split's neighbour search over every leaf."""
    out = np.empty(nodes.shape[0])
    for i in range(nodes.shape[0]):
        node = nodes[i]
        if metric == 1:
            sq = 0.0
            for j in range(q.shape[0]):
                t = q[j] - np.float64(centroids[node, j])
                sq += t * t
            out[i] = np.sqrt(sq)
            continue
        dot, cc = 0.0, 0.0
        for j in range(q.shape[0]):
            c = np.float64(centroids[node, j])
            dot += q[j] * c
            cc += c * c  # only cosine divides by it; summed in the same pass
        out[i] = 1.0 - dot / max(np.sqrt(cc), 1e-12) if metric == 0 else -dot
    return out


@numba.njit(cache=True, nogil=True)
def add_up_tree(rows, weights, nodes, parent, sums, counts, centroids, sign):
    """Add (``sign`` +1) or take out (-1) each row of ``rows`` (a vector, or the sum of ``weights[i]``
    vectors) at node ``nodes[i]`` (-1: skipped) and at every ancestor (``parent``): float64 ``sums``,
    ``counts``; then the float32 ``centroids`` (means) of the nodes touched that still hold points.
    Maintenance's tree update in one pass, where NumPy made a float64 copy of the rows, a per-leaf
    ``reduceat``, a sparse (ancestor x leaf) product and fancy-indexed updates: the largest part of
    ``router.add`` that was ours and not the engine's (the ingest rows of docs/results/hkm-fashion-mnist.md
    time the whole ``router.add``). Without the GIL: ``router.add`` runs it beside the engine's upsert.
    (Splitting the columns over two threads measured no faster: 5 ms per 1000 rows either way.)"""
    touched = np.zeros(sums.shape[0], np.bool_)
    dim = rows.shape[1]
    for i in range(rows.shape[0]):
        node = nodes[i]
        while node >= 0:
            for j in range(dim):
                sums[node, j] += sign * np.float64(rows[i, j])
            counts[node] += sign * weights[i]
            touched[node] = True
            node = parent[node]
    for node in range(sums.shape[0]):
        if touched[node] and counts[node] > 0:
            for j in range(dim):
                centroids[node, j] = np.float32(sums[node, j] / counts[node])
    return touched


def snapshot_rows(centroids, normalise):
    """A snapshot's centroid arrays in one pass per row: the float32 rows (unit length when
    ``normalise``, as cosine routing wants; a zero row stays zero), their squared norms, and their int8
    codes and scales (as :func:`int8_rows`). NumPy took a copy, a norm, a division, five temporaries for
    the codes and an ``einsum``; this runs at every publish, so at every ``router.add``: on every core
    (rows are independent) for at least :data:`PARALLEL_MIN` rows."""
    return _on_every_core(snapshot_rows_serial, snapshot_rows_parallel, centroids, (normalise,))


@numba.njit(cache=True, nogil=True)
def snapshot_rows_serial(centroids, normalise):
    rows, sqnorm, codes, scale = _snapshot_arrays(centroids)
    for i in range(centroids.shape[0]):
        _snapshot_row(centroids, i, normalise, rows, sqnorm, codes, scale)
    return rows, sqnorm, codes, scale


@numba.njit(cache=True, parallel=True)
def snapshot_rows_parallel(centroids, normalise):
    rows, sqnorm, codes, scale = _snapshot_arrays(centroids)
    for i in numba.prange(centroids.shape[0]):
        _snapshot_row(centroids, i, normalise, rows, sqnorm, codes, scale)
    return rows, sqnorm, codes, scale


@numba.njit(cache=True)
def _snapshot_arrays(centroids):
    n, dim = centroids.shape
    return (np.empty((n, dim), np.float32), np.empty(n, np.float32), np.empty((n, dim), np.int8),
            np.empty(n, np.float32))


@numba.njit(cache=True, fastmath=True)
def _snapshot_row(centroids, i, normalise, rows, sqnorm, codes, scale):
    dim = centroids.shape[1]
    inv = np.float32(1.0)
    if normalise:
        acc = np.float32(0.0)
        for j in range(dim):
            acc += centroids[i, j] * centroids[i, j]
        inv = np.float32(1.0) / max(np.sqrt(acc), np.float32(1e-12))
    sq = np.float32(0.0)
    for j in range(dim):
        v = centroids[i, j] * inv if normalise else centroids[i, j]
        rows[i, j] = v
        sq += v * v
    sqnorm[i] = sq
    _int8_row(rows, i, codes, scale)


@numba.njit(cache=True)
def int8_rows(rows):
    """Symmetric per-row int8 codes of float32 rows, ``rows ~= codes * scale[:, None]`` (see
    ``tree.int8_codes``), in one pass per row where NumPy's abs / max / divide / rint / clip made five
    temporaries; it runs at every snapshot publish, so at every ``router.add``."""
    n, dim = rows.shape
    codes = np.empty((n, dim), np.int8)
    scale = np.empty(n, np.float32)
    for i in range(n):
        _int8_row(rows, i, codes, scale)
    return codes, scale


@numba.njit(cache=True)
def _int8_row(rows, i, codes, scale):
    dim = rows.shape[1]
    peak = np.float32(0.0)
    for j in range(dim):
        peak = max(peak, abs(rows[i, j]))
    s = peak / np.float32(127.0) if peak > 0 else np.float32(1.0)
    scale[i] = s
    for j in range(dim):
        c = np.rint(rows[i, j] / s)
        codes[i, j] = np.int8(min(max(c, -127.0), 127.0))


@numba.njit(cache=True)
def nearest_leaf(q, centroids, child_offsets, children, leaf_of_node, metric):
    """Greedy descent (one node per level): the leaf a new point is filed under."""
    node = 0
    while leaf_of_node[node] < 0:
        best, best_d = -1, np.inf
        for e in range(child_offsets[node], child_offsets[node + 1]):
            c = children[e]
            dd = node_distance(q, centroids, c, metric)
            if dd < best_d:
                best, best_d = c, dd
        if best < 0:
            return -1
        node = best
    return leaf_of_node[node]


@numba.njit(cache=True, nogil=True)
def nearest_leaf_batch(Q, centroids, child_offsets, children, leaf_of_node, metric):
    out = np.empty(Q.shape[0], np.int64)
    for b in range(Q.shape[0]):
        out[b] = nearest_leaf(Q[b], centroids, child_offsets, children, leaf_of_node, metric)
    return out


@numba.njit(cache=True)
def route_work(q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2):
    """What :func:`route_one` does for ``q``, counted: (centroid distances evaluated, leaves output)."""
    n_out, n_eval = walk(q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2,
                         np.empty(0, np.int64))
    return n_eval, n_out


@numba.njit(cache=True)
def route_work_batch(Q, centroids, child_offsets, children, leaf_of_node, metric, mode, s1, s2):
    """:func:`route_work` per row of ``Q``: (evaluations (B,), leaves (B,))."""
    evals = np.zeros(Q.shape[0], np.int64)
    leaves = np.zeros(Q.shape[0], np.int64)
    for b in range(Q.shape[0]):
        evals[b], leaves[b] = route_work(Q[b], centroids, child_offsets, children, leaf_of_node, metric,
                                         mode, s1, s2)
    return evals, leaves


@numba.njit(cache=True, fastmath=True)
def row_distance(q, qq, rows, scale, sqnorm, node, metric):
    """The distance of :func:`node_distance` with node ``node``'s centroid given as
    ``rows[node] * scale[node]`` (and its squared norm ``sqnorm[node]``, for Euclidean): ``rows`` is the
    float32 centroids with a scale of 1, or their int8 codes (:attr:`FlatTree.codes`). Numba compiles one
    version per dtype of ``rows``. The dot product accumulates in float32 (vectorised; the float64
    accumulator of ``node_distance`` made the int8 kernel slower than the float one); ``qq`` is
    ``|q|^2``."""
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * rows[node, j]
    dot = acc * scale[node]
    if metric == 1:
        return np.sqrt(max(qq - 2.0 * dot + sqnorm[node], 0.0))
    return 1.0 - dot if metric == 0 else -dot


@numba.njit(cache=True)
def probe_one(q, rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe, s2, out, out_d):
    """Descend keeping the internal nodes within ``s2`` of each level's nearest internal node (the
    relaxed rule, eq. 3, applied to internal nodes only); every leaf met on the way is a candidate, and
    the ``nprobe`` nearest candidates are written to ``out``, nearest first, and their distances to
    ``out_d`` unless it is empty. Returns (how many, centroids evaluated). Centroids as in
    :func:`row_distance` (float rows, or int8 codes)."""
    if leaf_of_node[0] >= 0:
        out[0] = leaf_of_node[0]
        if out_d.shape[0] > 0:
            qq = 0.0
            for j in range(q.shape[0]):
                qq += q[j] * q[j]
            out_d[0] = row_distance(q, qq, rows, scale, sqnorm, 0, metric)
        return 1, 0
    qq = 0.0
    for j in range(q.shape[0]):
        qq += q[j] * q[j]
    n_nodes = rows.shape[0]
    frontier = np.empty(n_nodes, np.int64)
    cand = np.empty(n_nodes, np.int64)
    d = np.empty(n_nodes, np.float64)
    found = np.empty(n_nodes, np.int64)
    found_d = np.empty(n_nodes, np.float64)
    frontier[0] = 0
    n_front, n_found, n_eval = 1, 0, 0
    while n_front > 0:
        n_cand = 0
        best = np.inf
        for f in range(n_front):
            node = frontier[f]
            n_eval += child_offsets[node + 1] - child_offsets[node]
            for e in range(child_offsets[node], child_offsets[node + 1]):
                c = children[e]
                dc = row_distance(q, qq, rows, scale, sqnorm, c, metric)
                if leaf_of_node[c] >= 0:
                    found[n_found] = leaf_of_node[c]
                    found_d[n_found] = dc
                    n_found += 1
                elif child_offsets[c + 1] > child_offsets[c]:
                    cand[n_cand] = c
                    d[n_cand] = dc
                    n_cand += 1
                    best = min(best, dc)
        n_front = 0
        for j in range(n_cand):
            if d[j] - best <= s2:
                frontier[n_front] = cand[j]
                n_front += 1
    n_out = min(nprobe, n_found)
    order = np.argsort(found_d[:n_found])
    for j in range(n_out):
        out[j] = found[order[j]]
    if out_d.shape[0] > 0:
        for j in range(n_out):
            out_d[j] = found_d[order[j]]
    return n_out, n_eval


@numba.njit(cache=True, nogil=True)
def probe_batch(Q, rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe, s2):
    """:func:`probe_one` per row of ``Q``: returns (leaf ids (B, nprobe), counts (B,))."""
    B = Q.shape[0]
    out = np.full((B, max(nprobe, 1)), -1, np.int64)
    counts = np.zeros(B, np.int64)
    no_d = np.empty(0)
    for b in range(B):
        counts[b] = probe_one(Q[b], rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe,
                              s2, out[b], no_d)[0]
    return out, counts


@numba.njit(cache=True)
def probe_ranked_batch(Q, rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe, s2):
    """:func:`probe_batch` with the distances: (leaf ids (B, nprobe), distances (B, nprobe), counts (B,)),
    nearest first, padded with -1 / inf. Mode ``target`` ranks its candidate leaves with it."""
    B = Q.shape[0]
    out = np.full((B, max(nprobe, 1)), -1, np.int64)
    dist = np.full((B, max(nprobe, 1)), np.inf)
    counts = np.zeros(B, np.int64)
    for b in range(B):
        counts[b] = probe_one(Q[b], rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe,
                              s2, out[b], dist[b])[0]
    return out, dist, counts


@numba.njit(cache=True)
def probe_work_batch(Q, rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe, s2):
    """Centroids :func:`probe_one` evaluates for each row of ``Q`` (B,): what a probe route costs, counted
    (``plugin.bench.anatomy`` sets it beside the engine's cost per scored point)."""
    B = Q.shape[0]
    out = np.empty(max(nprobe, 1), np.int64)
    evals = np.zeros(B, np.int64)
    no_d = np.empty(0)
    for b in range(B):
        evals[b] = probe_one(Q[b], rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe,
                             s2, out, no_d)[1]
    return evals


@numba.njit(cache=True, parallel=True)
def probe_batch_parallel(Q, rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe, s2):
    """:func:`probe_batch` with the queries spread over numba's threads (same results)."""
    B = Q.shape[0]
    out = np.full((B, max(nprobe, 1)), -1, np.int64)
    counts = np.zeros(B, np.int64)
    no_d = np.empty(0)
    for b in numba.prange(B):
        counts[b] = probe_one(Q[b], rows, scale, sqnorm, child_offsets, children, leaf_of_node, metric, nprobe,
                              s2, out[b], no_d)[0]
    return out, counts


def probe_many(Q, *args, one_thread: bool = False):
    """:func:`probe_batch`, on every core for a batch of at least :data:`PARALLEL_MIN` queries unless
    ``one_thread``, when read replicas hold the other cores (:func:`_on_every_core`)."""
    return _on_every_core(probe_batch, probe_batch_parallel, Q, args, one_thread)
