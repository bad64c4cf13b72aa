"""VP-trees: structure, the paper's traversal rule against a plain recursive version, the radius-M/2
guarantee for every skipped cluster, and equality with a linear scan when both children are forced."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.signatures.blocks import Blocks
from plugin.signatures.vptree import build_forest, node_distances, visit

BLOCKS = Blocks.of([("a", 0, 5), ("b", 5, 8)], 8)
SIZES = [0, 1, 2, 7, 60]


@pytest.fixture(scope="module")
def forest():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(6, 8)) * 3
    rows = [centres[rng.integers(6)] + rng.normal(size=8) * 0.4 for _ in range(sum(SIZES))]
    sigs = BLOCKS.normalise(np.array(rows))
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    dc = rng.random(len(sigs))
    return sigs, offsets, dc, build_forest(sigs, offsets, dc, BLOCKS)


def subtree(f, v):
    if v < 0:
        return []
    return [int(f.sig[v])] + subtree(f, f.left[v]) + subtree(f, f.right[v])


def test_structure_root_by_dc_and_median_split(forest):
    sigs, offsets, dc, f = forest
    assert (f.roots[0] == -1).all() and (f.roots[1] >= 0).all()
    for n in range(1, len(SIZES)):
        a, b = offsets[n], offsets[n + 1]
        for k in range(BLOCKS.n):
            r = f.roots[n, k]
            assert f.sig[r] == a + np.argmin(dc[a:b])  # root: least DC
            assert sorted(subtree(f, r)) == list(range(a, b))  # every signature exactly once
            for v in range(len(f.sig)):  # children split at the median distance to the vantage point
                if f.sig[v] in range(a, b) and v in _tree_nodes(f, r):
                    d = lambda s: BLOCKS.distances(sigs[[f.sig[v]]], sigs[[s]])[k, 0, 0]
                    L, R = subtree(f, f.left[v]), subtree(f, f.right[v])
                    assert all(d(s) <= f.mu[v] + 1e-9 for s in L) and all(d(s) > f.mu[v] - 1e-9 for s in R)
                    assert len(L) - len(R) in (0, 1)  # M is the median: halves (no ties in random data)
                    if L:
                        assert f.max_left[v] == pytest.approx(max(d(s) for s in L))
                    if R:
                        assert f.min_right[v] == pytest.approx(min(d(s) for s in R))


def _tree_nodes(f, v):
    if v < 0:
        return set()
    return {v} | _tree_nodes(f, f.left[v]) | _tree_nodes(f, f.right[v])


def reference_visit(q, sigs, k, f, v, cut):
    """The rule written plainly; ``cut`` collects (vantage node, skipped side's root)."""
    if v < 0:
        return []
    a, b = BLOCKS.starts[k], BLOCKS.stops[k]
    sc = np.linalg.norm(q[a:b] - sigs[f.sig[v], a:b])
    out = [int(f.sig[v])]
    if sc < f.max_left[v] - f.mu[v] / 2:
        cut.append((v, f.right[v]))
        return out + reference_visit(q, sigs, k, f, f.left[v], cut)
    if sc > f.min_right[v] + f.mu[v] / 2:
        cut.append((v, f.left[v]))
        return out + reference_visit(q, sigs, k, f, f.right[v], cut)
    return out + reference_visit(q, sigs, k, f, f.left[v], cut) + reference_visit(q, sigs, k, f, f.right[v], cut)


def _visit(q, sigs, f, root, k, force):
    out = np.empty(len(f.sig) + 1, np.int64)
    n = visit(q, sigs, BLOCKS.starts[k], BLOCKS.stops[k], f.sig, f.mu, f.max_left, f.min_right, f.left, f.right,
              root, force, out)
    return out[:n].tolist()


def test_traversal_rule_and_its_radius_guarantee(forest):
    sigs, offsets, dc, f = forest
    rng = np.random.default_rng(1)
    skipped_total = 0
    for q in BLOCKS.normalise(rng.normal(size=(30, 8))):
        for k in range(BLOCKS.n):
            root = f.roots[4, k]
            cut = []
            ref = reference_visit(q, sigs, k, f, root, cut)
            got = _visit(q, sigs, f, root, k, False)
            assert sorted(got) == sorted(ref)
            a, b = BLOCKS.starts[k], BLOCKS.stops[k]
            for v, side in cut:  # every skipped cluster is farther than M/2 from the query
                for s in subtree(f, side):
                    skipped_total += 1
                    assert np.linalg.norm(q[a:b] - sigs[s, a:b]) > f.mu[v] / 2
            assert sorted(_visit(q, sigs, f, root, k, True)) == list(range(offsets[4], offsets[5]))
    assert skipped_total > 0  # the rule does prune on this data, so the checks above are not vacuous


def _node_distances(q, sigs, f, nodes, force):
    d = np.empty((len(nodes), BLOCKS.n))
    best = np.empty(len(nodes), np.int64)
    visited = np.empty(len(nodes), np.int64)
    node_distances(q, sigs, BLOCKS.starts, BLOCKS.stops, BLOCKS.weights, f.sig, f.mu, f.max_left, f.min_right,
                   f.left, f.right, f.roots, np.asarray(nodes, np.int64), force, d, best, visited)
    return d, best, visited


def test_forced_both_equals_linear_search(forest):
    sigs, offsets, dc, f = forest
    rng = np.random.default_rng(2)
    nodes = list(range(len(SIZES)))
    pruned_visits = 0
    for q in BLOCKS.normalise(rng.normal(size=(25, 8))):
        d, best, visited = _node_distances(q, sigs, f, nodes, True)
        for n in nodes:
            a, b = offsets[n], offsets[n + 1]
            if a == b:
                assert best[n] == -1 and np.isinf(d[n]).all() and visited[n] == 0
                continue
            per = BLOCKS.distances(q[None], sigs[a:b])[:, 0, :]
            lin = a + int(np.argmin(BLOCKS.combined(per)))
            assert best[n] == lin and visited[n] == b - a
            np.testing.assert_allclose(d[n], per[:, lin - a])
        d2, best2, visited2 = _node_distances(q, sigs, f, nodes, False)
        assert (visited2 <= visited).all()
        pruned_visits += int((visited - visited2).sum())
        # the pruned search never reports a distance below the true best (it only scores real clusters)
        assert (BLOCKS.combined(d2.T) >= BLOCKS.combined(d.T) - 1e-12).all()
    assert pruned_visits > 0
