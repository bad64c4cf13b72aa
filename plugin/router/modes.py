"""Search modes are a registry: each is one function ``(flat, queries (B, dim), **params) -> list of leaf-id
arrays`` (or ``None`` for "score everything"), registered by name with the parameters it takes and
their defaults. ``Router.search(vec, mode=name, **params)`` looks it up; a new method is a new function
here, not a branch in router.py. A mode reads only the immutable :class:`~plugin.router.tree.FlatTree`
snapshot it is given, never the live router, so it needs no lock.

Parameters are checked before anything runs: an unknown name (``S2=``, or ``s2`` given to intensive)
is an error that names the mode's parameters, and ``stats`` echo the values actually used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from plugin.errors import RouterError
from plugin.router import kernels


@dataclass(frozen=True)
class Mode:
    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)
    doc: str = ""

    def resolve(self, params: dict) -> dict:
        """The full parameter set for a call (defaults filled in), or a :class:`RouterError`."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            takes = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "no parameters"
            raise RouterError(f"search mode '{self.name}' does not take {', '.join(unknown)}; it takes {takes}")
        return {**self.defaults, **params}


MODES: dict[str, Mode] = {}

#: Relaxed-search default, chosen on Fashion-MNIST 60k / MobileNetV2 (docs/results/hkm-fashion-mnist.md,
#: rows ``relaxed s2=0.04``): it keeps >= 99.7% of exact Recall@1 on every tree tried, with recall@10
#: between 0.941 (4x5 tree) and 0.973 (8x3) on 3.7-11.2% of the points. Higher recall costs more
#: points: s2=0.06 gives recall@10 0.981-0.993 on 6.8-16.6%.
RELAXED_S2 = 0.04


def register_mode(name: str, **defaults):
    """Register ``fn(flat, Q, **params)`` as search mode ``name`` taking exactly ``defaults``' keys."""

    def deco(fn):
        MODES[name] = Mode(name, fn, defaults, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise RouterError(f"unknown search mode '{name}'; known: {', '.join(sorted(MODES))}")
    return MODES[name]


def _tree_route(flat, Q, mode, s1=-math.inf, s2=0.0):
    out, counts = kernels.route_batch(Q, flat.centroids, flat.child_offsets, flat.children, flat.leaf_of_node,
                                      flat.metric, mode, float(s1), float(s2), max(flat.n_leaves, 1))
    return [out[b, :counts[b]] for b in range(len(Q))]


@register_mode("exact")
def exact(flat, Q):
    """No routing: score every point (the baseline)."""
    return None


@register_mode("intensive")
def intensive(flat, Q):
    """One path down the tree, one leaf (paper §3.2.1): the cheapest and least accurate."""
    return _tree_route(flat, Q, kernels.INTENSIVE)


@register_mode("relaxed", s1=None, s2=RELAXED_S2)
def relaxed(flat, Q, s1=None, s2=RELAXED_S2):
    """Keep every node within ``s2`` of the level's best (eq. 3), or within ``s1`` absolutely (eq. 2).

    ``s1=None`` (the default) switches eq. 2 off under every metric. The paper's absolute threshold
    depends on the distance scale: ``1 - cos`` lies in [0, 2], so ``s1=1`` keeps every node with a
    positive cosine (measured: all points scored); under ``dot`` the distance is ``-q.c``, so ``s1=0``
    keeps every node with a positive inner product (measured: 51% of points scored). Set ``s1`` only
    knowing the metric's scale; ``s2`` is relative and means the same under each.
    """
    if s2 is None or not math.isfinite(s2) or s2 < 0:
        raise RouterError(f"relaxed search: s2 must be a finite number >= 0, got {s2}")
    if s1 is not None and not math.isfinite(s1):
        raise RouterError(f"relaxed search: s1 must be a finite number or None (eq. 2 off), got {s1}")
    return _tree_route(flat, Q, kernels.RELAXED, -math.inf if s1 is None else s1, s2)


@register_mode("auto")
def auto(flat, Q):
    """Per level, keep the nodes before the largest distance gap (eqs. 6-8): no parameter to tune."""
    return _tree_route(flat, Q, kernels.AUTO)


def route(flat, Q: np.ndarray, mode: str, params: dict) -> tuple[list | None, dict]:
    """Leaf ids per query (None: everything) and the parameters used."""
    m = get_mode(mode)
    used = m.resolve(params)
    return m.fn(flat, Q, **used), used
