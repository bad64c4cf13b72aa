"""Test-time use of the hierarchy on a classifier's probabilities: the paper's hierarchical inference
(hierarchical-loss-inference-retrieval, eqs. 7-11) and CRM, the field's standard baseline.

**Hierarchical inference**: ``s = p + alpha * W p`` (eq. 8, ``s_i = p_i + alpha * sum_j w_ij p_j``),
normalised (eq. 9), repeated ``T`` times (eqs. 10-11). Where the paper is vague:

* It uses one symbol, alpha, for two things: the distance scale inside the weights (eq. 6) and the
  mixing weight of eq. 8. Here ``alpha`` is eq. 8's mixing weight; the weight matrix ``W`` comes in
  ready-made (``Taxonomy.weights(scale)``, eq. 6, the paper's scale 0.3).
* The sum in eq. 8 runs over all j, so it includes ``w_ii``: a class's own probability is boosted by
  ``alpha * w_ii`` too. We follow the paper (``include_self=True``); ``include_self=False`` zeroes the
  diagonal and renormalises the rows, so only *other* classes lend mass.
* ``T = 0`` returns ``p`` unchanged. Each step mixes in more of the neighbourhood: as T grows the
  refined probabilities tend to the stationary distribution of ``W`` regardless of the image, so
  small T (1-3) is the useful range (the evaluation sweeps it).

**CRM** (Karthik et al., ICLR 2021, "No cost likelihood manipulation at test time"): predict
``argmin_k sum_j p_j C[j, k]`` with ``C`` the LCA-height cost matrix, i.e. the class of least expected
hierarchical cost. Ranking classes by that expected cost gives CRM's top-5.
"""
from __future__ import annotations

import numpy as np

from plugin.errors import HSearchError


class ProbabilityError(HSearchError, ValueError):
    """Class probabilities or inference parameters that make no sense."""


def check_probabilities(probs, n_classes: int | None = None) -> np.ndarray:
    """(N, C) float64, finite, non-negative, rows summing to 1 (within 1e-3), or :class:`ProbabilityError`."""
    p = np.asarray(probs, np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2:
        raise ProbabilityError(f"probabilities must be (N, C), got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ProbabilityError(f"probabilities have {p.shape[1]} classes, the hierarchy has {n_classes}")
    if not np.isfinite(p).all():
        raise ProbabilityError("probabilities contain NaN or inf")
    if (p < 0).any():
        raise ProbabilityError("probabilities must be non-negative")
    sums = p.sum(1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        bad = np.flatnonzero(~np.isclose(sums, 1.0, atol=1e-3))[:3]
        raise ProbabilityError(f"probability rows must sum to 1: rows {bad.tolist()} sum to {sums[bad].round(4).tolist()}")
    return p


def _check_square(m, n: int, what: str) -> np.ndarray:
    m = np.asarray(m, np.float64)
    if m.shape != (n, n):
        raise ProbabilityError(f"{what} must be ({n}, {n}) for {n} classes, got {m.shape}")
    if not np.isfinite(m).all():
        raise ProbabilityError(f"{what} contains NaN or inf")
    return m


def hierarchical_inference(probs, weights, alpha: float = 0.3, T: int = 1, include_self: bool = True) -> np.ndarray:
    """Refined probabilities (N, C) after ``T`` steps of eqs. 8-9 over a whole batch at once."""
    p = check_probabilities(probs)
    W = _check_square(weights, p.shape[1], "the weight matrix")
    if not np.isfinite(alpha) or alpha < 0:
        raise ProbabilityError(f"alpha must be >= 0, got {alpha}")
    if int(T) != T or T < 0:
        raise ProbabilityError(f"T must be an integer >= 0, got {T}")
    if not include_self:
        W = W.copy()
        np.fill_diagonal(W, 0.0)
        W /= np.maximum(W.sum(1, keepdims=True), 1e-300)
    for _ in range(int(T)):
        s = p + alpha * (p @ W.T)  # s_i = p_i + alpha * sum_j w_ij p_j
        p = s / s.sum(1, keepdims=True)
    return p


def crm_scores(probs, cost) -> np.ndarray:
    """Negative expected cost (N, C): ``-sum_j p_j C[j, k]``; higher is better, so argmax / top-k apply."""
    p = check_probabilities(probs)
    C = _check_square(cost, p.shape[1], "the cost matrix")
    return -(p @ C)


def crm_predict(probs, cost) -> np.ndarray:
    """CRM's prediction: the class of least expected hierarchical cost (ties: lowest index)."""
    return np.argmax(crm_scores(probs, cost), axis=1)
