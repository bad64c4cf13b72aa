"""Information-loss agglomerative clustering of one synset's images (paper §3.2, eqs. 1-4, Fig. 3).

Every image starts as its own cluster, represented by itself. Each step merges the two clusters whose
**representative images** are nearest (eq. 2 distance, ties to the lowest cluster slots); the merged
cluster's representative is its member nearest its mean (eq. 3). Merging continues until one cluster
is left, recording the loss of information ``I_t`` after every merge. The **proportional reduction in
error** of merge t is ``PRE_t = (I_t - I_{t-1}) / I_{t-1}``; the clustering kept is the one just before
the merge with the largest PRE (the iteration "just before the one with maximum PRE"). Singletons left
at that point are the "remaining images": each joins the cluster whose representative is nearest.

Where the paper is vague or inconsistent, the choices made here (tests/test_signatures_clustering.py
checks each on a case small enough to follow by hand):

* **Loss of a cluster**: ``InfoLoss_i = sum_{c in C_i} D[rep_i][c]`` with eq. 1's diagonal
  ``D[P][P] = 1``: a cluster's own representative counts 1, so a singleton loses 1 and a cluster of
  identical images loses 1, never 0.
* **Loss of a clustering**: ``I = sum_i (|C_i| / N) * InfoLoss_i``, i.e. eq. 4 *without* its logarithm.
  Eq. 4 as printed is ``sum_i x_i log x_i`` with ``x_i = (|C_i| / N) InfoLoss_i``; ``x log x`` is negative
  below 1 and positive above, so I starts at ``-log N`` (all singletons), rises through 0 and the ratio
  ``PRE = dI / I`` explodes at that crossing whatever the data: the stop would be an artefact of the
  sign change. Without the log, I starts at 1 (the diagonal convention above: ``N * (1/N) * 1``), stays
  positive, grows as merges add distance, and PRE is well defined at every step.
* **No information lost** (every PRE <= 0, e.g. identical images): nothing to separate, so all images
  form one cluster.
* **Ties**: a merged cluster's members are listed the lower slot's first; eq. 3's representative is
  the first member within a relative 1e-12 of the least distance to the mean (a cluster of two is
  always a tie; round-off must not decide it). Equal merge distances go to the lowest slots.
* **Leftovers**: at the stop, a singleton is a "remaining image" when some cluster has at least 2
  members; otherwise (2 images, or images all far apart) every singleton stays a cluster. Representatives
  are recomputed (eq. 3) once the leftovers are in.

Quadratic memory (the ``N x N`` distance matrix) and up to cubic time: callers bound N with a seeded
sample (``plugin.signatures.signatures``) and file the rest with :func:`assign_nearest`. The merge loop
is one ``@numba.njit`` kernel with a nearest-neighbour cache (measured cost: docs/results/semantics-*).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from plugin.signatures.blocks import Blocks

#: Relative tolerance under which two distances count as tied (eq. 3's representative: the earlier member).
TIE = 1e-12


@numba.njit(cache=True)
def _rep_of(X, sums, size, head, nxt, c, starts, stops, w):
    """Eq. 3: the member of cluster ``c`` nearest its mean (distance: weighted sum of block norms)."""
    best, best_d = -1, np.inf
    i = head[c]
    while i >= 0:
        d = 0.0
        for f in range(starts.shape[0]):
            acc = 0.0
            for j in range(starts[f], stops[f]):
                t = sums[c, j] / size[c] - X[i, j]
                acc += t * t
            d += w[f] * np.sqrt(acc)
        if best < 0 or d < best_d - TIE * (1.0 + best_d):  # exact ties (two members are always equidistant from
            best, best_d = i, d                # their mean) go to the earlier member, not to round-off
        i = nxt[i]
    return best


@numba.njit(cache=True)
def _loss_of(D, head, nxt, rep):
    acc = 1.0  # eq. 1: D[rep][rep] = 1
    i = head
    while i >= 0:
        if i != rep:
            acc += D[rep, i]
        i = nxt[i]
    return acc


@numba.njit(cache=True)
def agglomerate(X, D, starts, stops, w):
    """Merge down to one cluster. Returns ``merges`` (N-1, 2): slot ``a`` absorbs slot ``b`` at step t+1,
    and ``I`` (N,): the loss of information before any merge (``I[0] = 1``) and after each merge."""
    n = X.shape[0]
    dim = X.shape[1]
    sums = np.zeros((n, dim))
    for i in range(n):
        for j in range(dim):
            sums[i, j] = X[i, j]
    size = np.ones(n)
    head = np.arange(n)
    tail = np.arange(n)
    nxt = -np.ones(n, np.int64)
    rep = np.arange(n)
    loss = np.ones(n)
    active = np.ones(n, np.bool_)
    nn = -np.ones(n, np.int64)
    nnd = np.full(n, np.inf)
    for a in range(n):
        for b in range(n):
            if b != a and D[a, b] < nnd[a]:
                nn[a], nnd[a] = b, D[a, b]
    merges = np.empty((max(n - 1, 0), 2), np.int64)
    I = np.empty(n)
    I[0] = 1.0  # N singletons, each (1/N) * 1
    total = 0.0
    for t in range(n - 1):
        a = -1
        best = np.inf
        for c in range(n):
            if active[c] and nnd[c] < best:
                best, a = nnd[c], c
        b = nn[a]
        if b < a:
            a, b = b, a
        before = size[a] / n * loss[a] + size[b] / n * loss[b]
        nxt[tail[a]] = head[b]
        tail[a] = tail[b]
        size[a] += size[b]
        for j in range(dim):
            sums[a, j] += sums[b, j]
        active[b] = False
        rep[a] = _rep_of(X, sums, size, head, nxt, a, starts, stops, w)
        loss[a] = _loss_of(D, head[a], nxt, rep[a])
        total += size[a] / n * loss[a] - before
        I[t + 1] = 1.0 + total
        merges[t, 0], merges[t, 1] = a, b
        # nearest-neighbour cache: a's representative moved, b is gone
        nn[a], nnd[a] = -1, np.inf
        for c in range(n):
            if active[c] and c != a:
                d = D[rep[a], rep[c]]
                if d < nnd[a]:
                    nn[a], nnd[a] = c, d
        for c in range(n):
            if not active[c] or c == a:
                continue
            if nn[c] == a or nn[c] == b:
                nn[c], nnd[c] = -1, np.inf
                for e in range(n):
                    if active[e] and e != c:
                        d = D[rep[c], rep[e]]
                        if d < nnd[c]:
                            nn[c], nnd[c] = e, d
            else:
                d = D[rep[c], rep[a]]
                if d < nnd[c]:
                    nn[c], nnd[c] = a, d
    return merges, I


@numba.njit(cache=True)
def representatives(X, labels, k, starts, stops, w):
    """Eq. 3 for clusters given as labels 0..k-1: row index of each cluster's representative."""
    n, dim = X.shape
    sums = np.zeros((k, dim))
    size = np.zeros(k)
    head = -np.ones(k, np.int64)
    nxt = -np.ones(n, np.int64)
    for i in range(n - 1, -1, -1):
        c = labels[i]
        size[c] += 1
        for j in range(dim):
            sums[c, j] += X[i, j]
        nxt[i] = head[c]
        head[c] = i
    out = np.empty(k, np.int64)
    for c in range(k):
        out[c] = _rep_of(X, sums, size, head, nxt, c, starts, stops, w)
    return out


@dataclass
class Clustering:
    """Result for the N clustered rows: ``labels`` (N,) in 0..k-1, ``reps`` (k,) row index of each
    cluster's representative, ``sizes`` (k,), ``n_merges`` kept, the loss curve ``I`` (N,) and ``pre``
    (N-1,) (``pre[t-1]`` is merge t's), and ``leftovers``: how many singletons were filed afterwards."""

    labels: np.ndarray
    reps: np.ndarray
    sizes: np.ndarray
    n_merges: int
    I: np.ndarray
    pre: np.ndarray
    leftovers: int

    @property
    def k(self) -> int:
        return len(self.reps)


def pairwise(X: np.ndarray, blocks: Blocks) -> np.ndarray:
    """Eq. 2 distances between all rows of block-normalised ``X`` (diagonal 0)."""
    D = blocks.combined(blocks.distances(X, X))
    np.fill_diagonal(D, 0.0)
    return D


def pre_curve(I: np.ndarray) -> np.ndarray:
    """``PRE_t = (I_t - I_{t-1}) / I_{t-1}`` for t = 1..N-1."""
    return np.diff(I) / I[:-1]


def stop_point(pre: np.ndarray) -> int:
    """Number of merges to keep: the iteration just before the largest PRE (first on ties); all of them
    when no merge loses information (every PRE <= 0)."""
    if len(pre) == 0 or pre.max() <= 0:
        return len(pre)
    return int(np.argmax(pre))


def info_loss_clustering(X: np.ndarray, blocks: Blocks, D: np.ndarray | None = None) -> Clustering:
    """Cluster the rows of block-normalised ``X`` (module docstring). ``D``: their :func:`pairwise`
    distances, if already computed."""
    X = np.ascontiguousarray(X, np.float64)
    n = len(X)
    if n == 0:
        raise ValueError("nothing to cluster")
    D = pairwise(X, blocks) if D is None else D
    merges, I = agglomerate(X, D, blocks.starts, blocks.stops, blocks.weights)
    pre = pre_curve(I)
    keep = stop_point(pre)
    parent = np.arange(n)  # replay the kept merges: slot a absorbs slot b

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in merges[:keep]:
        parent[find(b)] = find(a)
    roots = np.array([find(i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    sizes = np.bincount(labels)
    leftovers = 0
    if sizes.max() >= 2 and sizes.min() == 1:
        big = np.flatnonzero(sizes >= 2)
        reps_big = representatives(X, labels, len(sizes), blocks.starts, blocks.stops, blocks.weights)[big]
        single = np.flatnonzero(sizes[labels] == 1)
        nearest = big[np.argmin(D[np.ix_(single, reps_big)], axis=1)]  # ties: lowest cluster
        labels = labels.copy()
        labels[single] = nearest
        leftovers = len(single)
        _, labels = np.unique(labels, return_inverse=True)
        sizes = np.bincount(labels)
    reps = representatives(X, labels, len(sizes), blocks.starts, blocks.stops, blocks.weights)
    return Clustering(labels.astype(np.int64), reps, sizes, keep, I, pre, leftovers)


def assign_nearest(X: np.ndarray, centres: np.ndarray, blocks: Blocks,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of ``centres`` (eq. 2) for every row of ``X``, and that distance; chunked so
    a node of 60k images needs no 60k x k x F array at once."""
    idx = np.empty(len(X), np.int64)
    dist = np.empty(len(X))
    for s in range(0, len(X), chunk):
        d = blocks.combined(blocks.distances(X[s:s + chunk], centres))
        idx[s:s + chunk] = np.argmin(d, axis=1)
        dist[s:s + chunk] = d[np.arange(len(d)), idx[s:s + chunk]]
    return idx, dist
