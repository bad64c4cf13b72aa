"""Dominant clusters (paper eq. 5): the compact, well-populated clusters that become a synset's visual
signatures.

    DC_i = (max_{p,q in C_i} d(p, q) + 1/(|C_i| (|C_i| - 1)) sum_{p != q in C_i} d(p, q)) / |C_i|

Small is good: a tight spread (numerator) over many members (denominator). The paper keeps the
clusters whose DC "satisfies a threshold" without giving it; here a cluster is dominant when its DC
is at most the **mean DC** of the node's clusters (a few tiny outlier clusters raise the mean, so the
big compact ones pass; with clusters of equal quality every one passes). The cluster with the least DC
is always dominant. Choices for what eq. 5 leaves undefined:

* a singleton has no pair: its DC is +inf (never dominant) unless *every* cluster of the node is a
  singleton (a node of one image, or of images all far apart), then all are dominant;
* identical members give DC 0 (the best possible): a cluster of duplicates is as compact as it gets;
* ``max_dominant`` caps how many are kept (least DC first) so a node never carries hundreds of
  signatures; the cap is recorded in the engine's state.

DC is computed on the clustered sample (``plugin.signatures.signatures``): with a uniform sample every
cluster's size shrinks by the same factor, which scales every DC alike and leaves the ordering and the
mean-threshold decision unchanged.
"""
from __future__ import annotations

import numpy as np


def dc_measure(D: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k,) DC of each cluster from the pairwise distances ``D`` of the clustered rows."""
    out = np.empty(k)
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        m = len(idx)
        if m < 2:
            out[c] = np.inf
            continue
        sub = D[np.ix_(idx, idx)]
        off = ~np.eye(m, dtype=bool)
        out[c] = (sub[off].max() + sub[off].sum() / (m * (m - 1))) / m
    return out


def dominant(dc: np.ndarray, max_dominant: int | None = None) -> np.ndarray:
    """Indices of the dominant clusters, least DC first (ties by index)."""
    dc = np.asarray(dc, np.float64)
    order = np.lexsort((np.arange(len(dc)), dc))
    finite = np.isfinite(dc)
    if not finite.any():
        keep = order
    else:
        thr = dc[finite].mean()
        keep = order[dc[order] <= thr + 1e-12 * max(abs(thr), 1.0)]
    if max_dominant is not None:
        keep = keep[:max(int(max_dominant), 1)]
    return keep
