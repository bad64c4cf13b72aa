"""Information-loss clustering (eqs. 1-4), the PRE stop, leftovers, and dominant clusters (eq. 5),
on cases small enough to follow by hand (the expected numbers are worked out in the comments)."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.signatures.blocks import Blocks
from plugin.signatures.clustering import agglomerate, assign_nearest, info_loss_clustering, pairwise, stop_point
from plugin.signatures.dominant import dc_measure, dominant

LINE = Blocks.single(2)  # points on the x axis, raw (not normalised): d = |x_p - x_q|


def on_line(*xs):
    return np.array([[x, 0.0] for x in xs])


def test_two_pairs_hand_checked():
    # x = 0, 1, 10, 11. I_0 = 4 * (1/4) * 1 = 1.
    # merge 1: {0,1} (d 1): rep 0 (tie at 0.5 from the mean, first member), loss 1 + 1 = 2;
    #          I = 1 - 2/4 + (2/4) * 2 = 1.5, PRE 0.5
    # merge 2: {10,11}: the same, I = 2.0, PRE 1/3
    # merge 3: all, mean 5.5, rep x=1 (4.5 away, first of the ties in member order 0,1,10,11);
    #          loss 1 + 1 + 9 + 10 = 21, I = 2 - 2 + 1 * 21 = 21, PRE 19 / 2 = 9.5
    merges, I = agglomerate(on_line(0, 1, 10, 11), pairwise(on_line(0, 1, 10, 11), LINE), LINE.starts,
                            LINE.stops, LINE.weights)
    np.testing.assert_allclose(I, [1.0, 1.5, 2.0, 21.0])
    assert merges.tolist() == [[0, 1], [2, 3], [0, 2]]
    c = info_loss_clustering(on_line(0, 1, 10, 11), LINE)
    assert c.n_merges == 2 and c.labels.tolist() == [0, 0, 1, 1] and c.leftovers == 0
    np.testing.assert_allclose(c.pre, [0.5, 1 / 3, 9.5])
    assert c.reps.tolist() == [0, 2]


def test_stop_before_the_largest_pre_and_leftover_joins_the_nearest_representative():
    # x = 0, 1, 10, 11, 30. I: 1 -> 1.4 -> 1.8 -> 17.0 -> 41.0
    # merge 3 ({0,1} + {10,11}, rep x=1, loss 21): I = 1.8 - 0.8 - 0.8 + (4/5) * 21 = 17.0, PRE 8.44
    # merge 4 (+ {30}; mean 10.4, rep x=10, loss 1 + 10 + 9 + 1 + 20 = 41): I = 41, PRE 24 / 17 = 1.41
    # keep 2 merges: {0,1}, {10,11}, {30}; the singleton 30 is a leftover: representatives 0 (30 away)
    # and 10 (20 away) -> joins {10, 11}; that cluster's mean is 17, so its representative becomes x=11.
    X = on_line(0, 1, 10, 11, 30)
    c = info_loss_clustering(X, LINE)
    np.testing.assert_allclose(c.I, [1.0, 1.4, 1.8, 17.0, 41.0])
    np.testing.assert_allclose(c.pre, [0.4, 0.4 / 1.4, 15.2 / 1.8, 24 / 17])
    assert c.n_merges == 2 and c.leftovers == 1
    assert c.labels.tolist() == [0, 0, 1, 1, 1] and c.reps.tolist() == [0, 3] and c.sizes.tolist() == [2, 3]


def test_identical_images_lose_nothing_and_form_one_cluster():
    X = np.tile([[0.6, 0.8]], (5, 1))
    c = info_loss_clustering(X, LINE)
    np.testing.assert_allclose(c.I, 1.0)  # every loss is the diagonal's 1: nothing lost by merging
    assert c.k == 1 and c.sizes.tolist() == [5]
    assert dc_measure(pairwise(X, LINE), c.labels, 1).tolist() == [0.0]
    assert stop_point(np.zeros(4)) == 4 and stop_point(np.array([])) == 0


def test_one_and_two_images():
    c = info_loss_clustering(on_line(3), LINE)
    assert c.k == 1 and c.reps.tolist() == [0] and c.n_merges == 0
    c = info_loss_clustering(on_line(0, 5), LINE)  # PRE of the only merge is > 0: keep none, no pair to join
    assert c.k == 2 and c.leftovers == 0 and sorted(c.labels.tolist()) == [0, 1]
    with pytest.raises(ValueError):
        info_loss_clustering(np.zeros((0, 2)), LINE)


def reference(X, blocks):
    """The algorithm written plainly (lists of members, full rescans), to check the jitted kernel."""
    D = pairwise(X, blocks)

    def rep_of(members):
        mu = X[members].mean(axis=0)
        d = blocks.combined(blocks.distances(mu[None], X[members]))[0]
        return members[int(np.flatnonzero(d <= d.min() * (1 + 1e-11) + 1e-11)[0])]  # ties: earlier member

    clusters = {i: [i] for i in range(len(X))}
    reps = {i: i for i in range(len(X))}
    I = [1.0]
    merges = []
    n = len(X)
    while len(clusters) > 1:
        keys = sorted(clusters)
        pairs = [(D[reps[a], reps[b]], a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
        _, a, b = min(pairs)
        clusters[a] = clusters[a] + clusters.pop(b)
        reps.pop(b)
        reps[a] = rep_of(clusters[a])
        merges.append([a, b])
        loss = {c: 1.0 + sum(D[reps[c], m] for m in ms if m != reps[c]) for c, ms in clusters.items()}
        I.append(sum(len(ms) / n * loss[c] for c, ms in clusters.items()))
    return merges, np.array(I)


def test_kernel_matches_the_plain_algorithm_on_random_features():
    rng = np.random.default_rng(3)
    blocks = Blocks.of([("a", 0, 4), ("b", 4, 7)], 7)
    X = blocks.normalise(rng.normal(size=(40, 7))).astype(np.float64)
    merges, I = agglomerate(X, pairwise(X, blocks), blocks.starts, blocks.stops, blocks.weights)
    ref_merges, ref_I = reference(X, blocks)
    assert merges.tolist() == ref_merges
    np.testing.assert_allclose(I, ref_I, rtol=1e-9)
    c = info_loss_clustering(X, blocks)
    # invariants: a partition into clusters of >= 2 members (leftovers filed), each representative a member
    assert len(c.labels) == 40 and c.sizes.sum() == 40 and (c.sizes >= 2).all()
    assert all(c.labels[r] == k for k, r in enumerate(c.reps))
    assert c.n_merges == int(np.argmax(c.pre))


def test_dc_measure_and_the_dominant_threshold():
    # clusters {0, 1} and {10, 11, 30}: DC = (1 + 1) / 2 = 1 and (20 + (1 + 20 + 19) / 3) / 3 = 11.11
    X = on_line(0, 1, 10, 11, 30)
    dc = dc_measure(pairwise(X, LINE), np.array([0, 0, 1, 1, 1]), 2)
    np.testing.assert_allclose(dc, [1.0, (20 + 40 / 3) / 3])
    assert dominant(dc).tolist() == [0]  # mean DC 6.06: only the compact pair
    # a big loose cluster vs a small tight one: population matters (denominator)
    dc = dc_measure(pairwise(on_line(0, 2, 4, 6, 8, 10, 50, 50.5), LINE), np.array([0] * 6 + [1] * 2), 2)
    np.testing.assert_allclose(dc, [(10 + 70 / 15) / 6, (0.5 + 0.5) / 2])
    assert dominant(np.array([3.0, 1.0, np.inf, 1.5, 10.0])).tolist() == [1, 3, 0]  # mean of finite 3.875
    assert dominant(np.array([np.inf, np.inf])).tolist() == [0, 1]  # all singletons: all kept
    assert dominant(np.array([1.0, 1.0, 1.0]), max_dominant=2).tolist() == [0, 1]


def test_assign_nearest_in_chunks():
    rng = np.random.default_rng(0)
    blocks = Blocks.of([("a", 0, 3), ("b", 3, 5)], 5)
    X, C = blocks.normalise(rng.normal(size=(100, 5))), blocks.normalise(rng.normal(size=(7, 5)))
    idx, dist = assign_nearest(X, C, blocks, chunk=16)
    full = blocks.combined(blocks.distances(X, C))
    assert idx.tolist() == np.argmin(full, axis=1).tolist()
    np.testing.assert_allclose(dist, full.min(axis=1))
