"""Spilling (plugin/router/spill.py): a build files every point under a second leaf too, a search with
``spill=True`` scores exactly the points whose ``leaf`` or ``spill`` is routed, new points get theirs,
and maintenance can leave a spill stale but never strands a point."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.errors import RouterError
from plugin.router import Router
from plugin.router.spill import leaf_centroids, second_leaves, spill_leaves
from plugin.store import Filter


@pytest.fixture
def filled(make_store, fmnist_small):
    vecs, wnids, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(len(vecs)), vecs, [{"wnid": w, "leaf": -1} for w in wnids])
    return s, vecs, np.asarray(wnids)


def _payloads(store):
    ids, _, pls = store.all_vectors(payload_fields=["leaf", "spill"])
    order = np.argsort(ids)
    leaf = np.asarray([pls[i]["leaf"] for i in order])
    spill = np.asarray([pls[i].get("spill", -2) for i in order])
    return ids[order], leaf, spill


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _brute(vecs, q, k, allowed):
    s = np.where(allowed, _unit(vecs) @ _unit(q), -np.inf)
    return set(np.argsort(-s)[:min(k, int(allowed.sum()))].tolist())


def test_a_spilled_build_files_every_point_under_its_soar_second_leaf(filled):
    s, vecs, _ = filled
    r = Router.build(s, k=3, l=3, spill=True)
    ids, leaf, spill = _payloads(s)
    live = set(r.tree.leaf_ids().tolist())
    assert r.meta["spill"] is True and set(spill.tolist()) <= live
    assert np.all(spill != leaf)
    np.testing.assert_array_equal(spill, spill_leaves(r.flat, _unit(vecs), leaf))
    # leaf counts are the primary leaves' alone
    np.testing.assert_array_equal(np.bincount(leaf, minlength=r.tree.next_leaf_id), r.leaf_counts)
    reopened = Router.open(s)
    assert reopened.meta["spill"] is True and reopened.describe()["spill"] is True
    assert len(reopened.search(vecs[0], k=3, mode="probe", nprobe=1, spill=True)) == 3
    if hasattr(s, "payload_indexes"):  # the embedded engine; qdrant-client's local mode keeps no indexes
        assert "spill" in s.payload_indexes()


@pytest.mark.parametrize("mode,params", [("probe", {"nprobe": 2, "s2": 0.05}), ("relaxed", {"s2": 0.02}),
                                         ("intensive", {})])
def test_spill_scores_exactly_the_routed_leaves_and_their_spilled_points(filled, mode, params):
    s, vecs, _ = filled
    r = Router.build(s, k=3, l=3, spill=True)
    _, leaf, spill = _payloads(s)
    gained = 0
    for qi in range(0, 300, 23):
        plain = r.search(vecs[qi], k=8, mode=mode, **params)
        spilled = r.search(vecs[qi], k=8, mode=mode, spill=True, **params)
        routed = spilled.stats["leaves"]
        assert routed == plain.stats["leaves"] and spilled.stats["spill"] and not plain.stats["spill"]
        assert spilled.stats["operands"] == plain.stats["operands"]  # the primary leaves' points
        on_leaf = np.isin(leaf, routed)
        either = on_leaf | np.isin(spill, routed)
        assert {h.id for h in plain} == _brute(vecs, vecs[qi], 8, on_leaf)
        assert {h.id for h in spilled} == _brute(vecs, vecs[qi], 8, either)
        gained += {h.id for h in spilled} != {h.id for h in plain}
    assert gained > 0  # the spill changed some answer


def test_spill_under_a_restriction_takes_the_general_path_with_the_same_rule(filled):
    s, vecs, wnids = filled
    r = Router.build(s, k=3, l=3, spill=True)
    _, leaf, spill = _payloads(s)
    wnid = wnids[0]
    for qi in (0, 40, 170):
        res = r.search(vecs[qi], k=5, mode="probe", nprobe=2, spill=True, filter=Filter.of(wnid=wnid))
        allowed = (np.isin(leaf, res.stats["leaves"]) | np.isin(spill, res.stats["leaves"])) & (wnids == wnid)
        if not res.stats["widened"]:
            assert {h.id for h in res} == _brute(vecs, vecs[qi], 5, allowed)
        assert all(h.payload["wnid"] == wnid for h in res)


def test_spill_needs_a_spilled_build(filled):
    s, vecs, _ = filled
    r = Router.build(s, k=3, l=3)
    with pytest.raises(RouterError, match="built with spill=True"):
        r.search(vecs[0], mode="probe", spill=True)
    assert r.meta["spill"] is False
    assert np.all(_payloads(s)[2] == -2)  # no spill payload written


def test_added_points_get_their_spill_and_splits_leave_stale_spills_that_strand_nothing(filled):
    """New points are filed under their SOAR second leaf as the tree stood; adds that split leaves retire
    ids some spills name, which no route holds: each point is still found through its leaf."""
    s, vecs, _ = filled
    base = np.arange(150)
    s.delete(np.arange(150, 300))
    r = Router.build(s, k=3, l=2, spill=True, max_leaf_size=60)
    before = r.flat
    new = np.arange(150, 160)
    assert r.add(new, vecs[new], [{"wnid": "n0", "leaf": -1}] * len(new))["splits"] == 0
    ids, leaf, spill = _payloads(s)
    at = {int(i): j for j, i in enumerate(ids)}
    got = spill[[at[i] for i in new]]
    want = spill_leaves(before, _unit(vecs[new]), leaf[[at[i] for i in new]])
    np.testing.assert_array_equal(got, want)
    r.add(np.arange(160, 300), vecs[160:300], [{"wnid": "n0", "leaf": -1}] * 140)  # grows leaves past 60
    assert r.describe()["leaves"] > before.n_leaves
    ids, leaf, spill = _payloads(s)
    live = set(r.tree.leaf_ids().tolist())
    assert set(leaf.tolist()) <= live
    assert not set(spill.tolist()) <= live  # some spills name retired leaves now
    for qi in (3, 151, 260):  # every leaf routed: the exact top-k, stale spills or not
        res = r.search(vecs[qi], k=10, mode="relaxed", s2=10.0, spill=True)
        assert [h.id for h in res] == [h.id for h in r.search(vecs[qi], k=10, mode="exact")]
    assert set(np.concatenate([base, np.arange(150, 300)]).tolist()) == set(ids.tolist())


def test_filter_both_keeps_spill_only_when_both_leaf_lists_ask_for_it():
    routed = Filter(leaf_in=(1, 2, 3), spill=True)
    assert Filter.both(routed, Filter.of(wnid="n1")).spill is True
    assert Filter.both(Filter.of(wnid="n1"), routed).leaf_in == (1, 2, 3)
    mixed = Filter.both(routed, Filter.of(leaf_in=[2, 3, 4]))
    assert mixed.leaf_in == (2, 3) and mixed.spill is False
    assert Filter.both(routed, Filter(leaf_in=(3, 9), spill=True)).spill is True


def test_second_leaves_under_l2_ranks_by_distance_not_inner_product():
    """Under l2 the nearest other leaf is the closest centroid, even where another has a larger dot."""
    C = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]], np.float32)
    live = np.ones(3, bool)
    X = np.array([[0.6, 0.0]], np.float32)
    l2, _ = second_leaves(X, C, live, np.array([1]), "nearest", metric="l2")
    dot, _ = second_leaves(X, C, live, np.array([1]), "nearest", metric="cosine")
    assert l2[0] == 0 and dot[0] == 2


def test_leaf_centroids_are_indexed_by_leaf_id(filled):
    s, vecs, _ = filled
    r = Router.build(s, k=3, l=2)
    C, live = leaf_centroids(r.flat)
    for lid in r.tree.leaf_ids():  # the routing centroid (unit under cosine) of the leaf's node
        np.testing.assert_allclose(C[lid], _unit(r.tree.leaf_centroids(np.array([lid]))[0]), atol=1e-6)
    assert live.sum() == r.tree.n_leaves


def test_a_batch_shared_with_a_replica_scores_the_spill_as_this_process_does(tmp_path, fmnist_small, monkeypatch):
    """The spill flag reaches the replica (its chunks routed there, and routed here): same answers."""
    from plugin.store import replicas as rep
    from plugin.store.edge import EdgeStore

    monkeypatch.setattr(rep, "MIN_BATCH", 8)
    vecs, wnids, _ = fmnist_small
    s = EdgeStore(tmp_path / "c", dim=vecs.shape[1])
    try:
        s.upsert(np.arange(len(vecs)), vecs, [{"label": w} for w in wnids])
        r = Router.build(s, k=4, l=2, save=False, spill=True)
        q = np.concatenate([vecs, vecs[:100]])

        def answers(res):
            return [[(h.id, round(h.score, 5)) for h in x] for x in res]

        plain = answers(r.search_batch(q, k=10, mode="probe", nprobe=2, with_payload=False))
        want = answers(r.search_batch(q, k=10, mode="probe", nprobe=2, with_payload=False, spill=True))
        assert want != plain
        s.set_read_replicas(1)
        got = r.search_batch(q, k=10, mode="probe", nprobe=2, with_payload=False, spill=True)
        assert s._replicas.stats["replica_routed"] >= 2 and s._replicas.stats["fallbacks"] == 0
        assert answers(got) == want and all(x.stats["spill"] for x in got)
    finally:
        s.close()
