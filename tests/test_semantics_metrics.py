"""plugin.semantics.metrics: each metric against a hand-computed case, against scikit-learn where it has
the metric, against an independent loop where it does not, plus edge cases and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score, top_k_accuracy_score

from plugin.errors import HSearchError
from plugin.semantics.metrics import (
    MetricError, bootstrap_ci, hierarchical_distance_at_k, hierarchical_ndcg, hierarchical_precision_at_k,
    hierarchy_gain, mahp_at_k, mean_average_precision, mistake_severity, per_group_accuracy, top_k_accuracy,
    top_k_classes)

DOG, CAT, BIRD = "n02084071", "n02121808", "n01503061"

# A 3-class toy hierarchy shaped like dog / cat / bird: dog-cat meet 1 level up, bird 3 levels up.
H = np.array([[0, 1, 3],
              [1, 0, 3],
              [3, 3, 0]])
SCORES = np.array([[0.1, 0.5, 0.4],   # true 2: ranking 1, 2, 0
                   [0.3, 0.2, 0.5],   # true 0: ranking 2, 0, 1
                   [0.6, 0.3, 0.1],   # true 0: ranking 0, 1, 2
                   [0.2, 0.7, 0.1]])  # true 0: ranking 1, 0, 2
Y = np.array([2, 0, 0, 0])


# ---- classification ---------------------------------------------------------------------------------
def test_top_k_accuracy_hand_case():
    # top-1 = [1, 2, 0, 1] vs y [2, 0, 0, 0]: only sample 2 right -> 1/4
    assert top_k_accuracy(SCORES, Y, 1) == pytest.approx(0.25)
    # top-2 = {1,2} {2,0} {0,1} {1,0}: y in it for samples 0, 1, 2, 3 -> 4/4
    assert top_k_accuracy(SCORES, Y, 2) == pytest.approx(1.0)
    assert top_k_accuracy(SCORES, Y, 3) == 1.0


def test_top_k_accuracy_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    for c in (3, 7):
        s = rng.integers(0, 3, size=(200, c)).astype(float)  # many ties
        y = rng.integers(0, c, size=200)
        for k in range(1, c + 1):
            ref = top_k_accuracy_score(y, s, k=k, labels=np.arange(c)) if k < c else 1.0
            assert top_k_accuracy(s, y, k) == pytest.approx(ref)
            # top_k_classes (used by hd@k) picks the same k classes as scikit-learn, ties included
            assert (top_k_classes(s, k) == y[:, None]).any(1).mean() == pytest.approx(ref)


def test_top_k_accuracy_two_classes_uses_ranking_not_threshold():
    # scikit-learn would threshold a binary problem; we rank: argmax of [.2,.1] is 0, of [.3,.4] is 1
    s = np.array([[0.2, 0.1], [0.3, 0.4], [0.9, 0.8]])
    assert top_k_accuracy(s, [0, 1, 1], 1) == pytest.approx(2 / 3)
    assert top_k_accuracy(s, [0, 1, 1], 2) == 1.0


def test_mistake_severity_hand_case_and_no_mistakes():
    pred = SCORES.argmax(1)  # [1, 2, 0, 1]
    # mistakes: (y=2, p=1) -> H=3, (y=0, p=2) -> 3, (y=0, p=1) -> 1; mean = 7/3 over 3 mistakes
    sev = mistake_severity(pred, Y, H)
    assert sev.mean == pytest.approx(7 / 3) and sev.n_mistakes == 3
    # correct predictions are not averaged in as zeros (that would give 7/4)
    none = mistake_severity(Y, Y, H)
    assert math.isnan(none.mean) and none.n_mistakes == 0


def test_hierarchical_distance_at_k_hand_case():
    # k=1: H[y, top1] = H[2,1]=3, H[0,2]=3, H[0,0]=0, H[0,1]=1 -> mean 7/4
    assert hierarchical_distance_at_k(SCORES, Y, H, 1) == pytest.approx(7 / 4)
    # k=2: sample 0 top {1,2}: (3+0)/2=1.5; sample 1 {2,0}: (3+0)/2=1.5; sample 2 {0,1}: (0+1)/2=0.5;
    # sample 3 {1,0}: (1+0)/2=0.5 -> mean 4/4 = 1.0
    per = hierarchical_distance_at_k(SCORES, Y, H, 2, per_sample=True)
    np.testing.assert_allclose(per, [1.5, 1.5, 0.5, 0.5])
    assert hierarchical_distance_at_k(SCORES, Y, H, 2) == pytest.approx(1.0)
    # k=C: every class once -> row mean of H[y]: (3+3+0)/3=2 for y=2, (0+1+3)/3=4/3 for y=0
    assert hierarchical_distance_at_k(SCORES, Y, H, 3) == pytest.approx((2 + 3 * 4 / 3) / 4)


def test_hd_at_1_equals_severity_times_error_rate():
    rng = np.random.default_rng(1)
    h = rng.integers(1, 6, size=(6, 6))
    h = np.triu(h, 1) + np.triu(h, 1).T  # symmetric, 0 diagonal
    s = rng.random((300, 6))
    y = rng.integers(0, 6, 300)
    sev = mistake_severity(s.argmax(1), y, h)
    assert hierarchical_distance_at_k(s, y, h, 1) == pytest.approx(sev.mean * sev.n_mistakes / 300)


def test_real_taxonomy_dog_cat_bird():
    from plugin.taxonomy import Taxonomy

    tax = Taxonomy([DOG, CAT, BIRD], cache=False)
    lca = tax.lca_height
    # dog and domestic cat meet at "domestic animal" one step up; bird meets both at "animal", 3 up
    np.testing.assert_array_equal(lca, H)
    pred = np.array([1, 2, 0, 2])      # dog->cat (1), dog->bird (3), right, cat->bird (3)
    y = np.array([0, 0, 0, 1])
    sev = mistake_severity(pred, y, lca)
    assert sev == (pytest.approx(7 / 3), 3)
    g = hierarchy_gain(lca)  # 1 - h/3
    np.testing.assert_allclose(g, [[1, 2 / 3, 0], [2 / 3, 1, 0], [0, 0, 1]])
    # query dog; list cat, bird, dog -> gains 2/3, 0, 1; DCG = 2/3 + 0 + 1/2 = 7/6;
    # ideal within the list: 1, 2/3, 0 -> 1 + (2/3)/log2(3)
    nd = hierarchical_ndcg([0], [[1, 2, 0]], g)
    assert nd == pytest.approx((7 / 6) / (1 + (2 / 3) / math.log2(3)))


def test_per_group_accuracy_paper_edges_and_terciles():
    counts = np.array([999, 1000, 2000, 2001, 50])
    # paper's groups: low <1000 -> classes 0, 4; medium 1000..2000 -> 1, 2; high >2000 -> 3
    y = np.array([0, 0, 4, 1, 2, 2, 3, 3, 3])
    pred = np.array([0, 1, 4, 1, 2, 0, 3, 0, 0])
    out = per_group_accuracy(pred, y, counts, edges=(1000, 2000))
    # low: y in {0,4} -> samples 0,1,2: right, wrong, right -> 2/3; medium: samples 3,4,5 -> 2/3;
    # high: samples 6,7,8 -> 1/3
    assert out["low"] == {"accuracy": pytest.approx(2 / 3), "n_samples": 3, "n_classes": 2}
    assert out["medium"] == {"accuracy": pytest.approx(2 / 3), "n_samples": 3, "n_classes": 2}
    assert out["high"] == {"accuracy": pytest.approx(1 / 3), "n_samples": 3, "n_classes": 1}
    # terciles of 1..9: np.quantile -> 11/3 and 19/3: low {1,2,3}, medium {4,5,6}, high {7,8,9}
    counts9 = np.arange(1, 10)
    y9 = np.arange(9)
    pred9 = np.array([0, 1, 0, 3, 0, 0, 6, 7, 8])  # low 2/3, medium 1/3, high 3/3
    t = per_group_accuracy(pred9, y9, counts9)
    assert t["edges"] == pytest.approx([11 / 3, 19 / 3])
    assert [t[g]["accuracy"] for g in ("low", "medium", "high")] == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert [t[g]["n_classes"] for g in ("low", "medium", "high")] == [3, 3, 3]
    # a group with no test samples is nan, not 0
    assert math.isnan(per_group_accuracy([0], [0], [1, 5, 9], edges=(2, 6))["high"]["accuracy"])


# ---- retrieval: mAP ---------------------------------------------------------------------------------
def test_map_hand_case_both_normalisations():
    rel = np.array([[1, 0, 1, 0],
                    [0, 1, 0, 0]])
    # q0: P@1=1, P@3=2/3 -> within list (R=2): (1 + 2/3)/2 = 5/6; database R=3: (5/3)/3 = 5/9
    # q1: P@2=1/2 -> R=1: 1/2; database R=2: 1/4
    np.testing.assert_allclose(mean_average_precision(rel, per_query=True), [5 / 6, 1 / 2])
    np.testing.assert_allclose(mean_average_precision(rel, [3, 2], per_query=True), [5 / 9, 1 / 4])
    assert mean_average_precision(rel) == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_map_edge_cases():
    assert mean_average_precision([[1, 1, 0, 0]]) == 1.0                      # perfect
    assert mean_average_precision([[0, 0, 0, 1]]) == pytest.approx(1 / 4)     # reversed: P@4 = 1/4
    assert mean_average_precision([[0, 0, 1, 1]]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert mean_average_precision([[1, 1]], [4]) == pytest.approx(0.5)        # perfect but only 2 of 4 found
    assert mean_average_precision([[0, 0]]) == 0.0                            # nothing relevant: sklearn's 0
    assert mean_average_precision([[0, 0]], [0]) == 0.0


def test_map_matches_sklearn_average_precision():
    rng = np.random.default_rng(2)
    rel = (rng.random((50, 30)) < 0.3).astype(int)
    rel[0] = 0
    ours = mean_average_precision(rel, per_query=True)
    rank_score = -np.arange(30)  # strictly decreasing: the list order
    with np.errstate(all="ignore"), pytest.warns(UserWarning):  # sklearn warns on the all-zero row
        ref = [average_precision_score(r, rank_score) for r in rel]
    np.testing.assert_allclose(ours, ref)
    # with n_relevant = the relevant count of a list that *is* the whole database, same numbers
    np.testing.assert_allclose(mean_average_precision(rel, rel.sum(1), per_query=True), ref)


# ---- retrieval: nDCG --------------------------------------------------------------------------------
G = hierarchy_gain(H)  # [[1, 2/3, 0], [2/3, 1, 0], [0, 0, 1]]


def test_ndcg_hand_case_list_and_database_ideal():
    # query class 0, list [2, 1, 0] -> gains 0, 2/3, 1
    # DCG@3 = 0 + (2/3)/log2(3) + 1/2
    dcg = (2 / 3) / math.log2(3) + 0.5
    # ideal within the list: 1, 2/3, 0 -> 1 + (2/3)/log2(3)
    assert hierarchical_ndcg([0], [[2, 1, 0]], G) == pytest.approx(dcg / (1 + (2 / 3) / math.log2(3)))
    # database with 2 dogs, 1 cat, 5 birds: ideal top-3 = dog, dog, cat: 1 + 1/log2(3) + (2/3)/2
    idcg_db = 1 + 1 / math.log2(3) + (2 / 3) / 2
    assert hierarchical_ndcg([0], [[2, 1, 0]], G, db_class_counts=[2, 1, 5]) == pytest.approx(dcg / idcg_db)
    # k=2 against the list: DCG@2 = (2/3)/log2(3); ideal@2 from the whole list: 1 + (2/3)/log2(3)
    assert hierarchical_ndcg([0], [[2, 1, 0]], G, k=2) == pytest.approx(
        ((2 / 3) / math.log2(3)) / (1 + (2 / 3) / math.log2(3)))


def test_ndcg_perfect_reversed_and_missing_items():
    assert hierarchical_ndcg([0], [[0, 1, 2]], G) == pytest.approx(1.0)
    assert hierarchical_ndcg([0], [[0, 0, 1]], G, db_class_counts=[2, 1, 1]) == pytest.approx(1.0)
    # reversed binary case: gains 0, 0, 1 -> DCG = 1/log2(4) = 1/2, ideal 1 -> 0.5
    assert hierarchical_ndcg([2], [[0, 1, 2]], G) == pytest.approx(0.5)
    # -1 = nothing retrieved at that rank: gain 0; database ideal still counts the missed dog
    assert hierarchical_ndcg([0], [[0, -1]], G, db_class_counts=[2, 0, 0]) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # (-1 must not wrap around to the last class, bird, which a bird query would gain 1 from)
    assert hierarchical_ndcg([2], [[2, -1]], G, db_class_counts=[0, 0, 2]) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # per-query database counts (query removed from its own database): query 0 sees 1 dog, query 1 sees 2
    per = hierarchical_ndcg([0, 0], [[0, 1], [0, 1]], G, db_class_counts=[[1, 1, 0], [2, 1, 0]], per_query=True)
    np.testing.assert_allclose(per, [1.0, (1 + (2 / 3) / math.log2(3)) / (1 + 1 / math.log2(3))])


def test_ndcg_matches_sklearn():
    rng = np.random.default_rng(3)
    lca = rng.integers(1, 5, size=(8, 8))
    lca = np.triu(lca, 1) + np.triu(lca, 1).T
    g = hierarchy_gain(lca)
    q = rng.integers(0, 8, 40)
    r = rng.integers(0, 8, (40, 12))
    gains = g[q[:, None], r]
    for k in (1, 5, 12):
        ref = ndcg_score(gains, np.tile(-np.arange(12.0), (40, 1)), k=k)
        assert hierarchical_ndcg(q, r, g, k=k) == pytest.approx(ref)


# ---- retrieval: HP@k and mAHP@k -----------------------------------------------------------------------
def _ahp_loop(q, ret, sim, counts, k):
    """Barz & Denzler's AHP written out for one query the slow way: expand the database, sort it by
    similarity for the ideal, HP@i for i=1..k, trapezoid over [1, k] divided by k (their issue #4)."""
    db = sorted((sim[q, c] for c, n in enumerate(counts) for _ in range(n)), reverse=True)
    got = [sim[q, c] if c >= 0 else 0.0 for c in ret]
    hp = [sum(got[:i]) / sum(db[:i]) for i in range(1, k + 1)]
    return (sum(hp) - (hp[0] + hp[-1]) / 2) / k, hp


def test_hp_and_mahp_hand_case():
    counts = [2, 1, 5]  # 2 dogs, 1 cat, 5 birds; query dog; ideal sims 1, 1, 2/3, 0, ...
    ret = [[1, 0, 2]]   # cat, dog, bird -> sims 2/3, 1, 0
    # HP@1 = (2/3)/1, HP@2 = (5/3)/2 = 5/6, HP@3 = (5/3)/(8/3) = 5/8
    assert hierarchical_precision_at_k([0], ret, G, counts, 1) == pytest.approx(2 / 3)
    assert hierarchical_precision_at_k([0], ret, G, counts, 2) == pytest.approx(5 / 6)
    assert hierarchical_precision_at_k([0], ret, G, counts, 3) == pytest.approx(5 / 8)
    # trapezoid: (2/3 + 5/6 + 5/8 - (2/3 + 5/8)/2) / 3 ; mean: (2/3 + 5/6 + 5/8) / 3
    assert mahp_at_k([0], ret, G, counts, 3) == pytest.approx((2 / 3 + 5 / 6 + 5 / 8 - (2 / 3 + 5 / 8) / 2) / 3)
    assert mahp_at_k([0], ret, G, counts, 3, rule="mean") == pytest.approx((2 / 3 + 5 / 6 + 5 / 8) / 3)


def test_mahp_perfect_and_reversed():
    counts = [2, 1, 1]
    perfect = [[0, 0, 1, 2]]  # sims 1, 1, 2/3, 0
    assert hierarchical_precision_at_k([0], perfect, G, counts, 4) == pytest.approx(1.0)
    assert mahp_at_k([0], perfect, G, counts, 4, rule="mean") == pytest.approx(1.0)
    assert mahp_at_k([0], perfect, G, counts, 4) == pytest.approx(3 / 4)  # authors' normalisation: (k-1)/k
    # reversed: sims 0, 2/3, 1, 1 against ideal cumsums 1, 2, 8/3, 8/3 -> HP = 0, 1/3, 5/8, 1
    rev = [[2, 1, 0, 0]]
    assert mahp_at_k([0], rev, G, counts, 4, rule="mean") == pytest.approx((0 + 1 / 3 + 5 / 8 + 1) / 4)


def test_mahp_matches_independent_loop():
    rng = np.random.default_rng(4)
    lca = rng.integers(1, 5, size=(6, 6))
    lca = np.triu(lca, 1) + np.triu(lca, 1).T
    sim = hierarchy_gain(lca)
    counts = rng.integers(3, 8, 6)
    q = rng.integers(0, 6, 25)
    ret = np.stack([rng.permutation(np.repeat(np.arange(6), counts))[:10] for _ in q])
    q[0] = 5
    ret[0, 7:] = -1  # no items; query class 5 would gain 1 if -1 wrapped around to class 5
    per = mahp_at_k(q, ret, sim, counts, 10, per_query=True)
    hp5 = hierarchical_precision_at_k(q, ret, sim, counts, 5, per_query=True)
    for i in range(len(q)):
        ahp, hp = _ahp_loop(q[i], ret[i], sim, counts, 10)
        assert per[i] == pytest.approx(ahp)
        assert hp5[i] == pytest.approx(hp[4])


# ---- bootstrap --------------------------------------------------------------------------------------
def test_bootstrap_ci_seeded_and_calibrated():
    v = np.r_[np.ones(200), np.zeros(200)]
    a = bootstrap_ci(v, n_boot=2000, seed=0)
    assert a == bootstrap_ci(v, n_boot=2000, seed=0)            # seeded: identical
    assert a != bootstrap_ci(v, n_boot=2000, seed=1)            # and the seed matters
    # mean 0.5, standard error sqrt(.25/400) = .025 -> 95% percentile interval ~ 0.5 -/+ 1.96 * .025
    assert a.mean == 0.5
    assert a.lo == pytest.approx(0.451, abs=0.008) and a.hi == pytest.approx(0.549, abs=0.008)
    narrow = bootstrap_ci(v, n_boot=2000, alpha=0.5, seed=0)    # 50% interval ~ 0.5 -/+ 0.674 * .025
    assert narrow.lo == pytest.approx(0.483, abs=0.006) and narrow.hi == pytest.approx(0.517, abs=0.006)
    assert bootstrap_ci(np.full(30, 2.5)) == (2.5, 2.5, 2.5)


def test_bootstrap_ci_statistic_function():
    rng = np.random.default_rng(5)
    v = rng.random(300)
    # a function over indices draws the same resamples as the array form
    assert bootstrap_ci(lambda i: v[i].mean(), n=300, n_boot=500) == bootstrap_ci(v, n_boot=500)
    # a ratio statistic: mistake severity, undefined (nan) resamples are skipped
    pred = np.array([1, 2, 0, 0, 0, 0])
    y = np.zeros(6, int)
    ci = bootstrap_ci(lambda i: mistake_severity(pred[i], y[i], H).mean, n=6, n_boot=400)
    assert ci.mean == pytest.approx(2.0)      # mistakes at heights 1 and 3
    assert ci.lo == pytest.approx(1.0) and ci.hi == pytest.approx(3.0)


# ---- bad input --------------------------------------------------------------------------------------
BAD = [
    ("4 rows but y has 3", lambda: top_k_accuracy(SCORES, Y[:3], 1)),
    ("NaN", lambda: top_k_accuracy(np.where(SCORES > 0.6, np.nan, SCORES), Y, 1)),
    ("k must be", lambda: top_k_accuracy(SCORES, Y, 0)),
    ("k must be", lambda: top_k_accuracy(SCORES, Y, 4)),
    ("outside", lambda: top_k_accuracy(SCORES, [0, 1, 2, 3], 1)),
    ("outside", lambda: mistake_severity([0, -1], [0, 0], H)),
    ("integers", lambda: mistake_severity([0.5, 1], [0, 0], H)),
    ("rows", lambda: mistake_severity([0, 1, 2], [0, 1], H)),
    ("square", lambda: mistake_severity([0], [0], H[:2])),
    ("2x2 but the scores have 3", lambda: hierarchical_distance_at_k(SCORES, Y, H[:2, :2], 1)),
    ("NaN", lambda: hierarchical_distance_at_k(SCORES, Y, np.where(H == 3, np.nan, H), 1)),
    ("k must be", lambda: hierarchical_distance_at_k(SCORES, Y, H, 5)),
    ("binary", lambda: mean_average_precision([[1, 0.5]])),
    ("binary", lambda: mean_average_precision([[1, np.nan]])),
    ("n_relevant", lambda: mean_average_precision([[1, 1]], [1])),
    ("n_relevant", lambda: mean_average_precision([[1, 1]], [2, 2])),
    ("k must be", lambda: hierarchical_ndcg([0], [[0, 1]], G, k=3)),
    ("outside", lambda: hierarchical_ndcg([0], [[0, 3]], G)),
    ("outside", lambda: hierarchical_ndcg([0], [[0, -2]], G)),
    ("outside", lambda: hierarchical_ndcg([5], [[0, 1]], G)),
    ("non-negative", lambda: hierarchical_ndcg([0], [[0, 1]], -G)),
    ("database holds", lambda: hierarchical_ndcg([0], [[0, 0]], G, db_class_counts=[1, 1, 1])),
    ("db_class_counts", lambda: mahp_at_k([0], [[0, 1]], G, [1, 1], 2)),
    ("rule", lambda: mahp_at_k([0], [[0, 1]], G, [1, 1, 1], 2, rule="area")),
    ("k must be", lambda: hierarchical_precision_at_k([0], [[0, 1]], G, [1, 1, 1], 0)),
    ("edges", lambda: per_group_accuracy([0], [0], [1, 2], edges=(5, 1))),
    ("train_counts", lambda: per_group_accuracy([0], [0], [1, np.nan])),
    ("NaN", lambda: bootstrap_ci([1.0, np.nan])),
    ("needs n", lambda: bootstrap_ci(lambda i: 0.0)),
    ("alpha", lambda: bootstrap_ci([1.0, 2.0], alpha=1.5)),
]


@pytest.mark.parametrize("needle,call", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_is_a_clear_hsearch_error(needle, call):
    with pytest.raises(MetricError) as e:
        call()
    assert isinstance(e.value, HSearchError)
    assert needle in str(e.value)
