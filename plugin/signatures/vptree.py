"""VP-trees over each synset's dominant-cluster signatures, one tree per feature, flattened into arrays
(paper §3.3, Figs. 4-5), and the small ``@numba.njit`` kernels that query them.

Hand-written because the packaged VP-tree libraries (``vptree``, ``vp-tree``) are unmaintained and
build pointer trees of Python objects; here every tree of every synset lives in six flat arrays, like
the router's :class:`~plugin.router.tree.FlatTree`, and a query walks them without the GIL's help.

**Build** (per synset, per feature): the vantage point of a (sub)set is the signature with the least DC
(eq. 5; the paper's root rule, applied again in every subtree; ties to the lowest index). The others
are split by their distance to it at the median ``M``: ``d <= M`` left, ``d > M`` right. Each VP node
stores ``M``, ``max_left`` (largest left distance) and ``min_right`` (smallest right distance; +inf when
the right side is empty).

**Traversal** (the paper's rule): with ``Sc`` the query's distance to the vantage point,
``Sc < max_left - M/2`` → left child only; ``Sc > min_right + M/2`` → right child only; else both.
Every vantage point met is *visited*; branch selection then scores only visited clusters. This is a
range search of radius ``M/2``: going left only skips right points ``x`` with ``d(x, v) >= min_right
>= max_left > Sc + M/2``, so ``d(q, x) > M/2`` by the triangle inequality (the chord distance is a
metric); tests/test_signatures_vptree.py checks that bound for every skipped cluster, and that forcing
both children visits everything, so the result equals a linear scan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from plugin.signatures.blocks import Blocks


@dataclass
class VPForest:
    """All VP nodes of all trees. ``sig[v]``: the signature (row of the engine's signature array) that
    VP node ``v`` holds; ``mu``, ``max_left``, ``min_right``; ``left``/``right`` child VP nodes (-1:
    none). ``roots[n, f]``: root VP node of synset ``n``'s tree for feature ``f`` (-1: no signatures)."""

    sig: np.ndarray
    mu: np.ndarray
    max_left: np.ndarray
    min_right: np.ndarray
    left: np.ndarray
    right: np.ndarray
    roots: np.ndarray

    def arrays(self) -> dict:
        return {f"vp_{k}": getattr(self, k) for k in ("sig", "mu", "max_left", "min_right", "left", "right", "roots")}

    @staticmethod
    def from_arrays(z) -> "VPForest":
        return VPForest(*(np.asarray(z[f"vp_{k}"]) for k in ("sig", "mu", "max_left", "min_right", "left", "right",
                                                                "roots")))


def build_forest(sigs: np.ndarray, offsets: np.ndarray, dc: np.ndarray, blocks: Blocks) -> VPForest:
    """One VP-tree per (synset, feature) over the synset's signatures ``sigs[offsets[n]:offsets[n+1]]``
    (block-normalised rows), vantage points chosen by least ``dc``."""
    n_nodes = len(offsets) - 1
    F = blocks.n
    cols = {k: [] for k in ("sig", "mu", "max_left", "min_right", "left", "right")}
    roots = -np.ones((n_nodes, F), np.int64)

    def build(items, D, local_dc):
        """items: local indices; returns the VP node id (or -1)."""
        if len(items) == 0:
            return -1
        order = np.lexsort((items, local_dc[items]))
        v = items[order[0]]
        rest = items[items != v]
        me = len(cols["sig"])
        for k in cols:
            cols[k].append(0)
        cols["sig"][me] = v  # local for now; shifted to global below
        if len(rest) == 0:
            cols["mu"][me], cols["max_left"][me], cols["min_right"][me] = 0.0, 0.0, np.inf
            cols["left"][me] = cols["right"][me] = -1
            return me
        d = D[v, rest]
        mu = float(np.median(d))
        lmask = d <= mu
        cols["mu"][me] = mu
        cols["max_left"][me] = float(d[lmask].max())
        cols["min_right"][me] = float(d[~lmask].min()) if (~lmask).any() else np.inf
        cols["left"][me] = build(rest[lmask], D, local_dc)
        cols["right"][me] = build(rest[~lmask], D, local_dc)
        return me

    for n in range(n_nodes):
        a, b = int(offsets[n]), int(offsets[n + 1])
        if b == a:
            continue
        S = sigs[a:b]
        per = blocks.distances(S, S)
        for f in range(F):
            first = len(cols["sig"])
            roots[n, f] = build(np.arange(b - a), per[f], np.asarray(dc[a:b], np.float64))
            for v in range(first, len(cols["sig"])):
                cols["sig"][v] += a
    return VPForest(np.asarray(cols["sig"], np.int64), np.asarray(cols["mu"], np.float64),
                    np.asarray(cols["max_left"], np.float64), np.asarray(cols["min_right"], np.float64),
                    np.asarray(cols["left"], np.int64), np.asarray(cols["right"], np.int64), roots)


@numba.njit(cache=True)
def block_distance(q, sigs, s, start, stop):
    acc = 0.0
    for j in range(start, stop):
        t = q[j] - sigs[s, j]
        acc += t * t
    return np.sqrt(acc)


@numba.njit(cache=True)
def visit(q, sigs, start, stop, vp_sig, vp_mu, vp_maxl, vp_minr, vp_left, vp_right, root, force_both, out):
    """Signatures whose VP nodes the paper's rule visits from ``root`` for block ``start:stop``; written
    to ``out``, returns how many. ``force_both``: always descend both sides (a linear scan)."""
    if root < 0:
        return 0
    stack = np.empty(vp_sig.shape[0] + 1, np.int64)
    stack[0] = root
    top = 1
    n = 0
    while top > 0:
        top -= 1
        v = stack[top]
        out[n] = vp_sig[v]
        n += 1
        sc = block_distance(q, sigs, vp_sig[v], start, stop)
        half = vp_mu[v] / 2.0
        go_left, go_right = True, True
        if not force_both:
            if sc < vp_maxl[v] - half:
                go_right = False
            elif sc > vp_minr[v] + half:
                go_left = False
        if go_right and vp_right[v] >= 0:
            stack[top] = vp_right[v]
            top += 1
        if go_left and vp_left[v] >= 0:
            stack[top] = vp_left[v]
            top += 1
    return n


@numba.njit(cache=True)
def node_distances(q, sigs, starts, stops, w, vp_sig, vp_mu, vp_maxl, vp_minr, vp_left, vp_right, roots, nodes,
                   force_both, out_d, out_sig, out_visited):
    """Branch selection's query-to-synset distances (paper §3.4, Fig. 6) for every synset in ``nodes``.

    The clusters visited in the synset's F VP-trees (their union) are scored per feature; the cluster
    with the least weighted sum (eq. 2) is the synset's best, and its per-feature distances are the
    query's distances to the synset: ``out_d[i, f]``. ``out_sig[i]``: that signature; ``out_visited[i]``:
    how many distinct signatures were scored. A synset without signatures gets +inf distances."""
    F = starts.shape[0]
    buf = np.empty(vp_sig.shape[0] + 1, np.int64)
    seen = np.zeros(sigs.shape[0], np.bool_)
    cand = np.empty(sigs.shape[0], np.int64)
    for i in range(nodes.shape[0]):
        nd = nodes[i]
        m = 0
        for f in range(F):
            cnt = visit(q, sigs, starts[f], stops[f], vp_sig, vp_mu, vp_maxl, vp_minr, vp_left, vp_right,
                        roots[nd, f], force_both, buf)
            for j in range(cnt):
                s = buf[j]
                if not seen[s]:
                    seen[s] = True
                    cand[m] = s
                    m += 1
        best, best_sum = -1, np.inf
        for j in range(m):
            s = cand[j]
            seen[s] = False
            tot = 0.0
            for f in range(F):
                tot += w[f] * block_distance(q, sigs, s, starts[f], stops[f])
            if tot < best_sum or (tot == best_sum and s < best):
                best, best_sum = s, tot
        out_sig[i] = best
        out_visited[i] = m
        for f in range(F):
            out_d[i, f] = np.inf if best < 0 else block_distance(q, sigs, best, starts[f], stops[f])
