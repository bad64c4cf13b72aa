"""A test-time decision rule that splits the two jobs CRM does at once: the top-1 answer and the top-k list.

CRM (``inference.crm_scores``) ranks every class by its expected hierarchical cost
``E_p[C(y, k)] = sum_j p_j C[j, k]``. That ordering is what lowers hierarchical distance@k, but it
also replaces plausible alternatives (a class the classifier gives 10%) by near-certain-to-be-wrong
siblings of the favourite, which costs top-5 accuracy, and it changes the top-1 answer whenever the
expected cost favours a "central" class, which costs top-1 accuracy. :func:`hierarchical_decision`
keeps each part where it pays:

* **top-1**: the flat argmax when the classifier is sure (``max p >= gate``); otherwise the class of
  least expected cost under ``C ** gamma`` (``gamma > 1`` punishes far mistakes more than near ones, so
  an unsure classifier hedges towards a safe common-ancestor neighbourhood).
* **the rest of the list**: first every class the classifier itself finds plausible (``p >= keep``),
  most probable first (they carry the top-k accuracy), then the remaining classes in CRM order (least
  expected cost first, under ``C``), which fills the tail with semantic neighbours instead of the flat
  classifier's near-zero, semantically random tail.
* ``sharpen`` (a temperature < 1 on the probabilities, ``q ∝ p ** (1 / sharpen)``) for both expected
  costs: a 1000-way softmax spreads a little mass over hundreds of unrelated classes, which adds an
  almost constant, uninformative term to every expected cost; sharpening discounts it.

The family contains both baselines: ``gate=0, keep=0`` is the flat classifier (argmax, then by p) and
``gate > 1, keep > 1, gamma=1, sharpen=1`` is exactly CRM. Its hyperparameters are meant to be chosen
by cross-validation (``plugin.bench.hier``: top-1 rule by least mistake severity with top-1 within
0.5 point of flat, then ``keep`` by least hd@5 with top-5 within 1 point of flat, on the training folds).
"""
from __future__ import annotations

import numpy as np

from plugin.semantics.inference import ProbabilityError, check_probabilities


def sharpened(probs, sharpen: float = 1.0) -> np.ndarray:
    """``p ** (1 / sharpen)`` renormalised per row (``sharpen=1``: unchanged; zeros stay zero)."""
    p = check_probabilities(probs)
    if not np.isfinite(sharpen) or sharpen <= 0:
        raise ProbabilityError(f"sharpen must be > 0, got {sharpen}")
    if sharpen == 1.0:
        return p
    logp = np.log(np.maximum(p, 1e-300)) / sharpen
    logp[p <= 0] = -np.inf
    logp -= logp.max(axis=1, keepdims=True)
    q = np.exp(logp)
    return q / q.sum(axis=1, keepdims=True)


def expected_cost(probs, cost, sharpen: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    """(N, C) ``sum_j q_j C[j, k] ** gamma`` with ``q`` the sharpened probabilities (CRM's risk)."""
    q = sharpened(probs, sharpen)
    C = np.asarray(cost, np.float64)
    if C.shape != (q.shape[1], q.shape[1]) or not np.isfinite(C).all() or (C < 0).any():
        raise ProbabilityError(f"the cost matrix must be a finite non-negative ({q.shape[1]}, {q.shape[1]}) "
                               f"matrix, got shape {C.shape}")
    if not np.isfinite(gamma) or gamma <= 0:
        raise ProbabilityError(f"gamma must be > 0, got {gamma}")
    return q @ (C if gamma == 1.0 else C ** gamma)


def hierarchical_decision(probs, cost, gate: float = 0.5, gamma: float = 1.0, sharpen: float = 1.0,
                          keep: float = 0.05) -> np.ndarray:
    """Ranking scores (N, C): argmax is the top-1 answer, descending order the ranked list (see module doc).

    The scores encode a ranking only (tiers: top-1 answer 3; kept classes ``2 + p``; the rest
    ``1 + (1 - risk / (max risk + 1))``), so use them with argmax / top-k, not as probabilities.
    """
    p = check_probabilities(probs)
    for name, v in (("gate", gate), ("keep", keep)):
        if not np.isfinite(v) or v < 0:
            raise ProbabilityError(f"{name} must be >= 0, got {v}")
    risk = expected_cost(p, cost, sharpen, 1.0)
    risk_top1 = risk if gamma == 1.0 else expected_cost(p, cost, sharpen, gamma)
    return decide(p, risk, risk_top1, gate, keep)


def decide(p: np.ndarray, risk: np.ndarray, risk_top1: np.ndarray, gate: float, keep: float) -> np.ndarray:
    """:func:`hierarchical_decision` from precomputed expected costs (``risk`` for the list, ``risk_top1``
    under ``C ** gamma`` for the unsure top-1), for sweeps that reuse them; ``p`` already checked."""
    rows = np.arange(p.shape[0])
    sure = p.max(axis=1) >= gate
    top1 = np.where(sure, p.argmax(axis=1), risk_top1.argmin(axis=1))
    scale = risk.max(axis=1, keepdims=True) + 1.0
    scores = 1.0 + 0.999 * (1.0 - risk / scale)  # in (1, 2): least expected cost first
    kept = p >= keep
    scores[kept] = 2.0 + 0.999 * p[kept]  # in [2, 3): plausible classes, most probable first
    scores[rows, top1] = 3.0
    return scores
