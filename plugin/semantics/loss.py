"""The hierarchical loss (hierarchical-loss-inference-retrieval, eqs. 2-6):
``L_H = CE + lambda * sum_ij w_ij L(c_i, c_j)``, where the pairwise term pulls the representations of
related classes together (``d``) and pushes unrelated ones at least ``m`` apart (``max(0, m - d)``).

Where the paper is vague, and what we chose:

* **f(c_i), "the learned feature representation of category c_i"**: the paper never says which. We use
  the class's *prototype*, the L2-normalised row of the classifier layer that scores it
  (:class:`~plugin.semantics.head.ClassifierHead`). That is the representation that decides which
  classes the model confuses: pulling related prototypes together makes the logits of related
  classes move together, so mistakes land on near classes, which is the effect the paper wants.
  Normalising keeps the term from being satisfied by shrinking all weights to zero, and puts ``d`` in
  [0, 2] so the paper's margin m = 0.2 has a fixed meaning.
* **"related"**: the paper gives no rule. Class j is related to i when ``w_ij`` is above the uniform
  weight ``1/N``, i.e. j is closer to i in WordNet than the average class (eq. 6 already ranks them).
  No extra threshold to tune; every class is related to itself.
* **Scale**: eq. 2 sums the pairwise term over all N rows; since each row of w sums to 1 we average it
  over rows (divide by N), so lambda means the same for 10 classes and for 1000. CE is the batch mean.
* ``d`` is Euclidean (eq. 5) with a tiny epsilon under the root, so its gradient exists at d = 0.
"""
from __future__ import annotations

import numpy as np

from plugin.errors import HSearchError

EPS = 1e-12


def related_mask(weights: np.ndarray) -> np.ndarray:
    """(N, N) bool: w_ij above the uniform weight 1/N (and the diagonal)."""
    w = np.asarray(weights, np.float64)
    n = w.shape[0]
    return (w > 1.0 / n) | np.eye(n, dtype=bool)


def pairwise_term(prototypes, weights, related, margin: float):
    """``sum_ij w_ij L(c_i, c_j) / N`` for (N, D) prototypes (a torch tensor; normalised here)."""
    import torch

    f = torch.nn.functional.normalize(prototypes, dim=1)
    diff = f[:, None, :] - f[None, :, :]
    d = torch.sqrt((diff * diff).sum(-1) + EPS)
    pair = torch.where(related, d, torch.clamp(margin - d, min=0.0))
    off = ~torch.eye(len(f), dtype=torch.bool, device=f.device)  # d(c_i, c_i) = 0 carries no signal
    return (weights * pair * off).sum() / len(f)


class HierarchicalLoss:
    """``loss(logits, targets, prototypes)``; ``lam=0`` is plain cross-entropy (the flat baseline in the
    same code path). Paper values: lam=0.5, margin=0.2, weights from ``Taxonomy.weights(0.3)``."""

    def __init__(self, weights, lam: float = 0.5, margin: float = 0.2):
        import torch

        w = np.asarray(weights, np.float64)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.isfinite(w).all():
            raise HSearchError(f"weights must be a finite square matrix, got shape {w.shape}")
        if lam < 0 or margin < 0:
            raise HSearchError(f"lambda and margin must be >= 0, got {lam}, {margin}")
        self.lam, self.margin = float(lam), float(margin)
        self.weights = torch.as_tensor(w, dtype=torch.float32)
        self.related = torch.as_tensor(related_mask(w))

    def to(self, device):
        self.weights, self.related = self.weights.to(device), self.related.to(device)
        return self

    def __call__(self, logits, targets, prototypes):
        import torch

        ce = torch.nn.functional.cross_entropy(logits, targets)
        if self.lam == 0:
            return ce, {"ce": float(ce.detach()), "pair": 0.0}
        pair = pairwise_term(prototypes, self.weights.to(prototypes.dtype), self.related, self.margin)
        return ce + self.lam * pair, {"ce": float(ce.detach()), "pair": float(pair.detach())}
