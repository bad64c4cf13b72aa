"""Per-feature ranks and their CombSUM fusion (Wu et al. 2006), as the paper uses them twice: to pick
branches and to order the surviving synsets into specific semantics.

A rank is a position in increasing distance, 1 = nearest, one list per feature. Ties in a feature's
distances share the better rank ("min" ranking: two synsets equally near both rank 1, the next ranks
3), so a tie never favours one synset by its storage order. CombSUM adds a synset's ranks over the
features; smaller is better. :func:`order` sorts by CombSUM, then by the eq. 2 weighted distance, then
by index, so the order is total and reproducible.
"""
from __future__ import annotations

import numpy as np


def ranks(D: np.ndarray) -> np.ndarray:
    """(n, F) distances -> (n, F) int ranks per feature (column), 1 = nearest, ties share the min rank."""
    D = np.asarray(D, np.float64)
    out = np.empty(D.shape, np.int64)
    for f in range(D.shape[1]):
        col = D[:, f]
        out[:, f] = 1 + (col[None, :] < col[:, None]).sum(axis=1)
    return out


def combsum(R: np.ndarray) -> np.ndarray:
    """CombSUM of rank lists: the sum of each row's ranks."""
    return np.asarray(R).sum(axis=1)


def order(D: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row indices best first: CombSUM of ranks, then weighted distance, then index."""
    D = np.asarray(D, np.float64)
    fused = combsum(ranks(D))
    return np.lexsort((np.arange(len(D)), D @ np.asarray(weights, np.float64), fused))
