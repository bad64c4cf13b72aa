"""The spilling measurement (plugin.bench.spill): SOAR's second leaf, the spilled leaf index, routed recall."""
import numpy as np
import pytest

from plugin.bench import spill


def _unit(a):
    a = np.asarray(a, np.float32)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_soar_prefers_the_leaf_whose_residual_is_orthogonal_to_the_first():
    # x sits between leaf 0 and leaf 1 (the nearest other leaf, residual nearly parallel to x - c0) and
    # leaf 2 (a little farther, residual orthogonal to it): nearest picks 1, SOAR picks 2
    c0, c1, c2 = _unit([1, 0.0, 0]), _unit([1, 0.5, 0]), _unit([1, 0.2, 0.3])
    x = _unit([1, 0.2, 0])
    assert x @ c0 > x @ c1 > x @ c2
    C = np.stack([c0, c1, c2])
    live = np.ones(3, bool)
    X, primary = x[None], np.array([0])
    near, gap = spill.second_leaves(X, C, live, primary, "nearest")
    soar, _ = spill.second_leaves(X, C, live, primary, "soar")
    assert near[0] == 1 and soar[0] == 2
    assert gap[0] == pytest.approx(float(x @ c0 - x @ c1), abs=1e-6)


def test_a_retired_leaf_is_never_a_second_leaf():
    C = np.stack([_unit([1, 0]), _unit([1, 0.1]), _unit([1, 0.5])])
    live = np.array([True, False, True])
    second, _ = spill.second_leaves(_unit([[1, 0.05]]), C, live, np.array([0]), "nearest")
    assert second[0] == 2
    with pytest.raises(ValueError, match="rule"):
        spill.second_leaves(_unit([[1, 0.05]]), C, live, np.array([0]), "farthest")


def test_leaf_members_files_spilled_rows_under_both_leaves_and_the_rest_once():
    primary = np.array([0, 0, 1, 2, 1])
    second = np.array([1, 2, 0, 0, 2])
    spilled = np.array([True, False, False, True, False])
    offsets, rows = spill.leaf_members(primary, 4, second, spilled)
    got = {lf: sorted(rows[offsets[lf]:offsets[lf + 1]].tolist()) for lf in range(4)}
    assert got == {0: [0, 1, 3], 1: [0, 2, 4], 2: [3], 3: []}
    offsets, rows = spill.leaf_members(primary, 4)
    assert sorted(rows[offsets[1]:offsets[2]].tolist()) == [2, 4]


def test_routed_recall_counts_each_point_once_and_misses_what_no_routed_leaf_holds():
    rng = np.random.default_rng(0)
    X = _unit(rng.normal(size=(40, 8)))
    Q = X[:2] + 0.01
    truth = np.argsort(-(Q @ X.T), axis=1)[:, :10]
    primary = np.arange(40) % 4
    # query 0 routed to every leaf: all found; query 1 routed to one leaf: only its own truth rows there
    members = spill.leaf_members(primary, 4, primary.copy(), np.ones(40, bool))  # spilled onto itself: dups
    out = spill.routed_recall([np.array([0, 1, 2, 3]), np.array([1, -1])], members, X, Q, truth)
    in_leaf1 = int(np.isin(truth[1], np.flatnonzero(primary == 1)).sum())
    assert out["recall_at_10"] == pytest.approx((10 + in_leaf1) / 20)
    assert out["points"] == pytest.approx((40 + 10) / 2)


def test_cheapest_picks_the_fewest_points_reaching_the_target():
    rows = [{"variant": "a", "recall_at_10": 0.96, "points": 500}, {"variant": "a", "recall_at_10": 0.99, "points": 900},
            {"variant": "a", "recall_at_10": 0.951, "points": 450}, {"variant": "b", "recall_at_10": 0.97, "points": 10}]
    assert spill.cheapest(rows, "a", 0.95)["points"] == 450
    assert spill.cheapest(rows, "a", 0.99)["points"] == 900
    assert spill.cheapest(rows, "a", 0.995) is None


def test_the_spilled_collection_answers_a_route_by_either_leaf(tmp_path):
    rng = np.random.default_rng(1)
    vecs = _unit(rng.normal(size=(6, 16)))
    primary = np.array([0, 0, 1, 1, 2, 2])
    second = np.array([1, 2, 0, 2, 0, 1])
    store = spill.spilled_store(tmp_path / "db", vecs, primary, second)
    try:
        assert store.routed_layout
        params = store._params(oversampling=2.0)
        for leaves, want in (([0], {0, 1, 2, 4}), ([2], {1, 3, 4, 5}), ([7], set())):
            hits = store._query(vecs[:1], 6, [spill.spill_filter(leaves)], params)[0]
            assert {h.id for h in hits} == want
    finally:
        store.close()


def test_engine_picks_time_each_target_s_cheapest_row_its_grid_neighbours_and_leaf_only_beside_none():
    grid = (8, 16, 24, 32)
    rec = {"none": (0.90, 0.951, 0.98, 0.991), "soar, all": (0.952, 0.99, 0.995, 0.996)}
    rows = [{"variant": v, "nprobe": n, "recall_at_10": r, "points": n * 10}
            for v, rs in rec.items() for n, r in zip(grid, rs)]
    picks = spill.engine_picks(rows, grid)
    assert [n for v, n in picks if v == "none"] == [8, 16, 24, 32]
    assert [n for v, n in picks if v == "soar, all"] == [8, 16, 24]
    assert [n for v, n in picks if v == "soar, leaf only"] == [16, 32]
