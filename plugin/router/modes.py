"""Search modes are a registry: each is one function ``(ctx, queries (B, dim), **params) -> search plan``,
registered by name with the parameters it takes and their defaults. ``Router.search(vec, mode=name,
**params)`` looks it up and executes the plan; a new method is a new function (here, or in its own
package calling :func:`register_mode`), not a branch in router.py.

A :class:`Plan` is a list of store :class:`Probe` s (per query: which leaves, which payload filter, how
many hits) plus an optional per-query ``merge`` that turns the probes' hits into the answer (a
re-ranking, a fusion of sub-searches) and per-query ``info`` shown in ``stats`` (why these hits). The
tree modes return the short form, one leaf-id array per query (``None``: score everything), which
:func:`as_plan` turns into one probe per query. A mode reads the immutable
:class:`~plugin.router.tree.FlatTree` snapshot in ``ctx.flat``, never the live tree, so it needs no lock.

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
class ModeContext:
    """What a mode may read: the tree snapshot, the store, the router (meta, state dir), and for modes
    that reason about classes the queries' class probabilities (``probs`` (B, C), columns = ``classes``
    wnids), passed by the caller as ``router.search(..., probs=p, classes=wnids)``."""

    flat: object
    store: object
    router: object
    probs: np.ndarray | None = None
    classes: tuple | None = None
    #: route on this thread alone: the store scores the batch on the other cores too (read replicas,
    #: ``store.scores_on_replicas``), where a parallel kernel's threads would take one of them
    one_thread: bool = False


@dataclass
class Probe:
    """One store search: query row ``query``, restricted to ``leaves`` (None: all) and ``filter``."""

    query: int
    leaves: np.ndarray | None = None
    filter: object = None
    k: int | None = None  # None: the k the caller asked for
    operands: int | None = None  # points it scores, when the mode knows (a filter's size); for stats


@dataclass
class Plan:
    probes: list
    #: ``merge(query, [hits of each of its probes], k) -> hits``; None: the union of its probes' hits
    #: by score (one probe: its hits as they are)
    merge: Callable | None = None
    info: list | None = None  # per query: a dict merged into its stats


def as_plan(out, n_queries: int) -> Plan:
    """A mode's return value as a :class:`Plan` (tree modes return leaf-id arrays or None)."""
    if isinstance(out, Plan):
        return out
    if out is None:
        return Plan([Probe(b) for b in range(n_queries)])
    return Plan([Probe(b, leaves=np.asarray(r)) for b, r in enumerate(out)])


def leaf_routes(out, n_queries: int) -> tuple[list, list | None] | None:
    """A mode's return value as (one leaf-id array per query, per-query info or None) when leaf ids are all
    it asks to score: a tree mode's list, or a :class:`Plan` of one leaves-only probe per query, in query
    order, with no merge, filter, own ``k`` or operand hint (mode ``target``'s). None otherwise: the
    router takes its general path."""
    if isinstance(out, list):
        return out, None
    if isinstance(out, Plan) and out.merge is None and len(out.probes) == n_queries and all(
            p.query == b and p.leaves is not None and p.filter is None and p.k is None and p.operands is None
            for b, p in enumerate(out.probes)):
        return [p.leaves for p in out.probes], out.info
    return None


@dataclass(frozen=True)
class Mode:
    name: str
    fn: Callable
    defaults: dict = field(default_factory=dict)
    doc: str = ""
    #: routes each query from its own vector alone and reads neither ``ctx.probs`` nor other rows, so a
    #: batch may be routed in parts (:mod:`plugin.router.parts`), row for row the same answer; it reads
    #: ``ctx.flat`` and ``ctx.one_thread`` alone, so a read replica may route its parts
    rowwise: bool = False

    def resolve(self, params: dict) -> dict:
        """The full parameter set for a call (defaults filled in), or a :class:`RouterError`."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            takes = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "no parameters"
            raise RouterError(f"search mode '{self.name}' does not take {', '.join(unknown)}; it takes {takes}")
        return {**self.defaults, **params}


MODES: dict[str, Mode] = {}
#: Packages whose modes register themselves on import (loaded on first lookup, like the encoder registry).
EXTENSIONS = ("plugin.semantics.modes", "plugin.signatures.modes", "plugin.router.target")
#: Modules whose modes a read replica's process can import by name (a rowwise mode from one of them may be
#: routed in the replica, :mod:`plugin.router.parts`); a mode registered elsewhere is routed by its caller.
BUILTIN_MODULES = frozenset({__name__, *EXTENSIONS})
_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib

        for mod in EXTENSIONS:
            importlib.import_module(mod)


def available_modes() -> list[str]:
    _ensure_loaded()
    return sorted(MODES)

#: Relaxed-search default, chosen on Fashion-MNIST 60k / MobileNetV2 (docs/results/hkm-fashion-mnist.md,
#: rows ``relaxed s2=0.04``, trees built with max leaf 150 and refined leaves): on the 16x3, 8x4 and 32x3
#: trees it keeps >= 99.3% of exact Recall@1, with recall@10 0.926 (16x3) to 0.943 (32x3) on 1.4-1.9% of
#: the points. Higher recall costs more points: s2=0.06 gives recall@10 0.981-0.988 on 3.2-4.2%.
RELAXED_S2 = 0.04


def register_mode(name: str, *, rowwise: bool = False, **defaults):
    """Register ``fn(ctx, Q, **params)`` as search mode ``name`` taking exactly ``defaults``' keys.
    ``rowwise``: see :attr:`Mode.rowwise` (a mode cannot take a parameter of that name)."""

    def deco(fn):
        MODES[name] = Mode(name, fn, defaults, (fn.__doc__ or "").strip().split("\n")[0], rowwise)
        return fn

    return deco


def get_mode(name: str) -> Mode:
    _ensure_loaded()
    if name not in MODES:
        raise RouterError(f"unknown search mode '{name}'; known: {', '.join(sorted(MODES))}")
    return MODES[name]


def _tree_route(ctx, Q, mode, s1=-math.inf, s2=0.0):
    flat = ctx.flat
    out, counts = kernels.route_many(Q, flat.centroids, flat.child_offsets, flat.children, flat.leaf_of_node,
                                      flat.metric, mode, float(s1), float(s2), max(flat.n_leaves, 1),
                                      one_thread=ctx.one_thread)
    return [out[b, :counts[b]] for b in range(len(Q))]


@register_mode("exact")
def exact(ctx, Q):
    """No routing: score every point (the baseline)."""
    return None


@register_mode("intensive", rowwise=True)
def intensive(ctx, Q):
    """One path down the tree, one leaf (paper §3.2.1): the cheapest and least accurate."""
    return _tree_route(ctx, Q, kernels.INTENSIVE)


@register_mode("relaxed", rowwise=True, s1=None, s2=RELAXED_S2)
def relaxed(ctx, Q, s1=None, s2=RELAXED_S2):
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
    return _tree_route(ctx, Q, kernels.RELAXED, -math.inf if s1 is None else s1, s2)


@register_mode("auto", rowwise=True)
def auto(ctx, Q):
    """Per level, keep the nodes before the largest distance gap (eqs. 6-8): no parameter to tune."""
    return _tree_route(ctx, Q, kernels.AUTO)


#: Probe defaults: on the same three trees (docs/results/hkm-fashion-mnist.md, rows ``probe nprobe=32``,
#: s2 0.05) recall@10 0.954 (16x3), 0.967 (8x4), 0.978 (32x3) on 1.3-2.7% of the points.
PROBE_NPROBE, PROBE_S2 = 32, 0.05


@register_mode("probe", rowwise=True, nprobe=PROBE_NPROBE, s2=PROBE_S2)
def probe(ctx, Q, nprobe=PROBE_NPROBE, s2=PROBE_S2):
    """Descend like relaxed search on internal nodes (within ``s2`` of each level's best), then score the
    ``nprobe`` nearest leaves met on the way.

    Not in the hkm paper. A count of leaves (faiss' ``nprobe``) where relaxed keeps a distance band at
    the leaves as well: on 60k Fashion-MNIST over the same 16x3 leaves, nprobe=32 reaches recall@10
    0.954 on 1.29% of the points, where relaxed needs 1.76% (s2=0.045, 0.949), and it was the fastest
    router row at recall@10 >= 0.95 and >= 0.99 (docs/results/hkm-fashion-mnist.md). ``s2`` bounds
    the routing work: 0.05 for recall 0.95, 0.07 for 0.99.

    Distances are taken to the int8 codes of the centroids (``FlatTree.codes``): a routed query reads
    hundreds of centroid rows, and the codes are a quarter of their bytes. The leaves differ from the
    float kernel's only at the ``nprobe`` cut (a leaf within the codes' error of the last one); the
    probe kernel's time on both is in docs/results/anatomy-fashion-mnist.md.
    """
    if isinstance(nprobe, bool) or int(nprobe) != nprobe or nprobe < 1:
        raise RouterError(f"probe search: nprobe must be an integer >= 1, got {nprobe!r}")
    if s2 is None or not math.isfinite(s2) or s2 < 0:
        raise RouterError(f"probe search: s2 must be a finite number >= 0, got {s2}")
    flat = ctx.flat
    out, counts = kernels.probe_many(Q, *flat.rows(quantized=True), flat.child_offsets, flat.children,
                                      flat.leaf_of_node, flat.metric, int(nprobe), float(s2),
                                      one_thread=ctx.one_thread)
    return [out[b, :counts[b]] for b in range(len(Q))]


def route(flat, Q: np.ndarray, mode: str, params: dict) -> tuple[list | None, dict]:
    """Leaf ids per query (None: everything) of a tree mode over a snapshot, and the parameters used."""
    m = get_mode(mode)
    used = m.resolve(params)
    return m.fn(ModeContext(flat, None, None), Q, **used), used
